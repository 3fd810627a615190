"""Evaluation metrics for ``evaluate(metrics=)`` and ``fit(metrics=)``, equal to scikit-learn's.

The public home of :mod:`symprop.runtime.metrics`."""
from .runtime.metrics import *  # noqa: F401,F403
from .runtime.metrics import __all__  # noqa: F401
