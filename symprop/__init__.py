"""symprop — neural-network layers written in SymPy, derivatives derived, kernels generated.

Public API::

    from symprop import Sequential, layers as L, optimizers as O
"""
__version__ = "0.1.0"

from .runtime import layers, optimizers  # noqa: E402
from .runtime.model import Sequential  # noqa: E402

__all__ = ["Sequential", "layers", "optimizers", "__version__"]
