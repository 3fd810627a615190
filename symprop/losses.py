"""Losses: the built-ins by name, and :func:`from_sympy` for an elementwise loss written in SymPy.

The public home of :mod:`symprop.runtime.losses`."""
from .runtime.losses import (LOSSES, MSE, Huber, LogCosh, Loss, PointwiseLoss,  # noqa: F401
                             SigmoidCrossEntropy, SoftmaxCrossEntropy, SpecLoss, from_sympy, get_loss)

__all__ = ["Loss", "PointwiseLoss", "SoftmaxCrossEntropy", "MSE", "SigmoidCrossEntropy", "Huber", "LogCosh",
           "SpecLoss", "LOSSES", "from_sympy", "get_loss"]
