"""Dropout and the weight mask of DropConnect: the ``dropout`` mask spec (y = m·x) with a
Bernoulli mask drawn from the model's generator once per forward call.

The mask lives in the call's record, so that call's backward, R-op and curvature passes all
see the same mask; evaluation mode is the identity (inverted dropout: the kept entries are
scaled by 1/(1−p) in training).
"""
from __future__ import annotations

import numpy as np

from .kernels import SpecKernels
from .layer_base import EVAL, Layer


def check_rate(layer: str, p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0 <= p < 1:
        raise ValueError(f"{layer}: the drop probability must be a number in [0, 1), got {p!r}")
    return float(p)


def mask_kernels() -> SpecKernels:
    return SpecKernels("activations", "dropout")   # a spec of kind "mask" there (bound at first use)


def draw_mask(rng: np.random.Generator, shape: tuple, p: float, dtype) -> np.ndarray:
    """Inverted-dropout mask: 0 with probability p, 1/(1−p) otherwise."""
    keep = rng.random(shape, dtype=np.float64) >= p
    return np.where(keep, 1.0 / (1.0 - p), 0.0).astype(dtype)


class MaskOps:
    """The mask spec's roles on one mask (the elementwise map y = m·x)."""

    def __init__(self, m: np.ndarray):
        self.K, self.m = mask_kernels(), m
        self.shapes = {"x": m.shape, "y": m.shape}

    def _run(self, role, **arrays):
        return self.K.run(role, {"m": self.m, **arrays}, self.m.dtype, {}, self.shapes)

    def forward(self, x):
        return self._run("forward", x=np.ascontiguousarray(x))

    def vjp(self, g):
        return self._run("vjp:x", g=np.ascontiguousarray(g))

    def jvp(self, Rx):
        return None if Rx is None else self._run("jvp", Rx=np.ascontiguousarray(Rx))

    def rvjp(self, g, Rg, Rx=None):
        if Rg is None and Rx is None:
            return None
        return self._run("rvjp:x", g=np.ascontiguousarray(g), Rg=Rg, Rx=Rx)

    def bl(self, h, g=None):
        return self._run("bl:x", H=np.ascontiguousarray(h), g=g)


class Dropout(Layer):
    """``L.Dropout(p)``: zero each element with probability p in training, scale the rest by
    1/(1−p) (PyTorch's inverted dropout); the identity in evaluation mode."""

    def __init__(self, p: float = 0.5):
        self.p = check_rate("Dropout", p)

    @property
    def name(self):
        return f"Dropout({self.p:g})"

    def config(self):
        return {"type": "Dropout", "p": self.p}

    def forward(self, x, ctx=EVAL):
        if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{self.name}: expected a float32/float64 array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if not ctx.training or self.p == 0:
            return x, {"ops": None}
        ops = MaskOps(draw_mask(ctx.rng, x.shape, self.p, x.dtype))
        return ops.forward(x), {"ops": ops}

    def vjp(self, rec, g, need_input=True):
        if not need_input:
            return None, []
        return (g if rec["ops"] is None else rec["ops"].vjp(g)), []

    def input_vjp(self, rec, g):
        return g if rec["ops"] is None else rec["ops"].vjp(g)

    def jvp(self, rec, Rx, Rparams):
        return Rx if rec["ops"] is None else rec["ops"].jvp(Rx)

    def rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        if not need_input:
            return None, []
        if rec["ops"] is None or Rg is None:
            return (Rg if rec["ops"] is None else None), []
        return rec["ops"].rvjp(g, Rg), []

    def bl(self, rec, h, g):
        return (h if rec["ops"] is None else rec["ops"].bl(h, g)), []
