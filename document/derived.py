"""Which specs the document covers, and their derivations (each built-in derived once per
process): the same :mod:`symprop.derive` calls ``codegen`` prints kernels from."""
from __future__ import annotations

import functools

from ..derive import builtins
from ..derive.composite import CompositeSpec, derive_composite
from ..derive.elementwise import ElementwiseSpec, derive_elementwise
from ..derive.indexed import derive_contraction


def _elementwise_builtins() -> dict:
    return {**builtins.ACTIVATIONS, **builtins.LEARNABLE, **builtins.MASKS, **builtins.PENALTIES}


def _builtin_specs() -> dict:
    """Every built-in spec by name, in document order."""
    return {**_elementwise_builtins(), **builtins.CONTRACTIONS, **builtins.WINDOWS, **builtins.COMPOSITES}


@functools.lru_cache(maxsize=None)
def _derived_builtin(name: str):
    return _derive_new(_builtin_specs()[name])


def _derive_new(spec):
    if isinstance(spec, ElementwiseSpec):
        return derive_elementwise(spec)
    if isinstance(spec, CompositeSpec):
        return derive_composite(spec)
    return derive_contraction(spec)


def _derive(spec):
    """The derivation of ``spec`` (built-ins derived once per process)."""
    if _builtin_specs().get(spec.name) is spec:
        return _derived_builtin(spec.name)
    return _derive_new(spec)


def builtin_layer_names() -> list[str]:
    """Every built-in spec that has a section, in document order."""
    return (list(_elementwise_builtins()) + list(builtins.CONTRACTIONS) + list(builtins.WINDOWS)
            + list(builtins.COMPOSITES))
