"""The runtime class of a built-in layer, read from its definition (``derive/builtins.py``).

:class:`DefinedLayer` takes everything that is not a kernel from the layer's
:class:`~symprop.derive.layerdef.LayerDef` — constructor arguments and their checks, parameter
shapes and initialisation, the shape rule, the checkpoint config, the name — and runs every
pass as a role of the spec (:class:`~symprop.runtime.layer_base.SpecLayer`). Kernels bind at first
use, so building and describing a model needs no compiled kernels. A built-in layer with no
hand-written class (a definition alone) gets one made here: :func:`layer_class`.
"""
from __future__ import annotations

import numpy as np

from .layer_base import SpecLayer, check_float_input

_CLASSES: dict = {}


def definitions() -> dict:
    """Every built-in layer's definition by class name (the registry)."""
    from ..derive.builtins import LAYERS
    return LAYERS


def defined(name: str):
    """Class decorator: the runtime class of the built-in layer ``name`` (its definition is
    attached as ``cls.definition``; :func:`layer_class` returns it)."""
    def attach(cls):
        cls.definition = definitions()[name]
        _CLASSES[name] = cls
        return cls
    return attach


def layer_class(name: str) -> type:
    """The runtime class of the built-in layer ``name``: its hand-written class when it has
    one (extra behaviour: DropConnect, running statistics, a reshape), else a
    :class:`DefinedLayer` made from the definition."""
    cls = _CLASSES.get(name)
    if cls is None:
        d = definitions()[name]
        cls = type(name, (DefinedLayer,), {"definition": d, "__doc__": d.doc or f"The built-in layer {name}.",
                                           "__module__": "symprop.runtime.layers", "__qualname__": name})
        _CLASSES[name] = cls
    return cls


def initial_array(how: str, shape: tuple, fan_in: int, dtype, rng) -> np.ndarray:
    """A parameter's first value by its definition's ``init``."""
    if how == "uniform":   # PyTorch's default for Linear and Conv2d
        bound = 1.0 / np.sqrt(max(fan_in, 1))
        return rng.uniform(-bound, bound, shape).astype(dtype)
    if how in ("ones", "zeros"):
        return (np.ones if how == "ones" else np.zeros)(shape, dtype)
    raise ValueError(f"unknown init {how!r} (uniform, ones or zeros)")


class DefinedMixin:
    """What a built-in layer reads from its definition (shared by spec-run and composite layers)."""

    definition = None   # the LayerDef (class attribute)

    def _define(self, *args, **kwargs):
        d = self.definition
        self.args = d.bind(*args, **kwargs)
        arrays = [p.name for p in (*d.params, *d.buffers)]
        clash = sorted(set(arrays) & set(self.args))
        if clash:
            raise TypeError(f"{d.name}: parameters and arguments share the names {clash}")
        for k, v in self.args.items():
            setattr(self, k, v)
        for a in arrays:
            setattr(self, a, None)
        self._trained = d.trained(self.args)
        self._shape_cache = {}

    @property
    def name(self):
        return self.definition.layer_name(self.args)

    def config(self):
        return self.definition.config(self.args)

    def trainable(self):
        return self._trained

    def spec_arrays(self):
        return {p.name: getattr(self, p.name) for p in (*self.definition.params, *self.definition.buffers)}

    def parameters(self):
        return [getattr(self, p) for p in self._trained]

    def buffers(self):
        return [getattr(self, p.name) for p in self.definition.buffers]

    def penalized(self):
        return [getattr(self, p.name) for p in self.definition.params if p.penalized and p.name in self._trained]

    def init_parameters(self, dtype, rng):
        d = self.definition
        dtype = np.dtype(dtype)
        arrays = (*d.params, *d.buffers)
        if not arrays:
            return
        first = getattr(self, arrays[0].name)
        if first is not None:
            if first.dtype != dtype:
                raise TypeError(f"{self.name}: already initialised as {first.dtype}, cannot join a {dtype} model")
            return
        fan = d.fan_in(self.args) if any(p.init == "uniform" for p in arrays) else 1
        for p in arrays:
            shape = d.param_shape(p, self.args)
            how = p.init if d.active(p, self.args) else "zeros"   # off: a constant zero
            setattr(self, p.name, initial_array(how, shape, fan, dtype, rng))

    def output_shape(self, input_shape):
        key = tuple(input_shape)
        out = self._shape_cache.get(key)
        if out is None:
            out = self._shape_cache[key] = self.definition.out_shape(self.args, key)
        return out

    def refuse_curvature(self, method: str, why: str = ""):
        if method not in self.definition.curvature:
            raise ValueError(f"{self.name}: method={method!r} is not available for this layer{why}; use one of "
                             f"{', '.join(repr(m) for m in self.definition.curvature if m != method)}")


class DefinedLayer(DefinedMixin, SpecLayer):
    """A built-in layer whose every pass is a role of its spec, everything else from its
    definition. ``L.<Name>(*args, **kwargs)`` takes the definition's arguments."""

    def __init__(self, *args, **kwargs):
        self._define(*args, **kwargs)
        d = self.definition
        self._scalars = d.kernel_scalars(self.args)
        self._bind(d.module, d.spec.name)

    def scalars(self):
        return self._scalars

    def check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.name}: input must be a numpy array, got {type(x).__name__}")
        if x.ndim < 1:
            raise ValueError(f"{self.name}: expected a batch (N, ...), got a scalar")
        try:
            self.output_shape(x.shape[1:])
        except ValueError as exc:
            raise ValueError(f"{exc} (a batch of shape {x.shape})") from None
        return check_float_input(self, x)

    def bl(self, rec, h, g):
        self.refuse_curvature("becker_lecun")
        return super().bl(rec, h, g)
