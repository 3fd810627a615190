"""Callbacks for ``fit(callbacks=[...])``: Keras-named hooks around epochs and batches.

The public home of :mod:`symprop.runtime.callbacks`."""
from .runtime.callbacks import *  # noqa: F401,F403
from .runtime.callbacks import __all__  # noqa: F401
