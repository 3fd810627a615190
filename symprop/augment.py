"""Random image transforms for ``fit(augment=...)``, drawn from the model's seeded generator.

The public home of :mod:`symprop.runtime.augment`."""
from .runtime.augment import *  # noqa: F401,F403
from .runtime.augment import __all__  # noqa: F401
