"""symprop — neural-network layers written in SymPy, derivatives derived, kernels generated.

Public API::

    from symprop import Sequential, layers as L, optimizers as O

The package root imports lazily (PEP 562), so ``symprop generate`` and ``symprop latex`` run
without compiled kernels: only touching ``Sequential``, ``layers`` or ``optimizers`` loads
the runtime.
"""
import importlib

__version__ = "0.1.0"

__all__ = ["Sequential", "layers", "optimizers", "pinn", "__version__"]

_LAZY = {"layers": "symprop.runtime.layers", "optimizers": "symprop.runtime.optimizers", "pinn": "symprop.pinn"}


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name == "Sequential":
        return importlib.import_module("symprop.runtime.model").Sequential
    raise AttributeError(f"module 'symprop' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
