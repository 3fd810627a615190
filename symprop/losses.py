"""Losses: the built-ins by name, and :func:`from_sympy` for an elementwise loss written in SymPy.

The public home of :mod:`symprop.runtime.losses`."""
from .runtime.losses import (LOSSES, MSE, Loss, PointwiseLoss, SigmoidCrossEntropy,  # noqa: F401
                             SoftmaxCrossEntropy, from_sympy, get_loss)

__all__ = ["Loss", "PointwiseLoss", "SoftmaxCrossEntropy", "MSE", "SigmoidCrossEntropy", "LOSSES",
           "from_sympy", "get_loss"]
