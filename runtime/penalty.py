"""The l1/l2 weight penalty of a :class:`Sequential`: ``l1·Σ|W| + (l2/2)·Σ W²`` over the
penalized parameters (Dense and Conv2D weights, each shared weight once), its value,
gradient, Hessian-vector product and Hessian diagonal, each from the ``penalty`` spec's
kernels (bound once per process, the penalized indices once per built model)."""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def _kernels():
    from .kernels import SpecKernels, load
    return SpecKernels(load("activations"), "penalty")


class Penalty:
    """A model's penalty; reads ``model.l1``/``model.l2`` at each call (they may be changed)."""

    def __init__(self, model):
        self.model = model
        self._indices = None   # (param_slots result it was computed for, indices)

    def indices(self) -> list[int]:
        """Indices in ``parameters()`` of the penalized arrays, each once, in layer order."""
        slots = self.model.param_slots()
        if self._indices is not None and self._indices[0] is slots:
            return self._indices[1]
        params = slots[0]
        index = {id(p): i for i, p in enumerate(params)}
        seen, idx = set(), []
        for layer in self.model.layers:
            for p in layer.penalized():
                if id(p) not in seen and id(p) in index:
                    seen.add(id(p))
                    idx.append(index[id(p)])
        self._indices = (slots, idx)
        return idx

    @property
    def active(self) -> bool:
        return bool(self.model.l1 or self.model.l2)

    def _run(self, role: str, p: np.ndarray, **arrays):
        return _kernels().run(role, {"x": p, **arrays}, p.dtype, {"l1": self.model.l1, "l2": self.model.l2},
                              {"x": p.shape, "y": p.shape})

    def value(self) -> float:
        if not self.active:
            return 0.0
        params = self.model.parameters()
        return float(sum(self._run("forward", params[i]).sum(dtype=np.float64) for i in self.indices()))

    def add(self, out: list, role: str, v: list | None = None) -> list:
        """Add the penalty's gradient (``vjp:x``), HVP (``rvjp:x``, direction ``v``) or Hessian
        diagonal (``curv:x``) to ``out`` (aligned with parameters())."""
        if not self.active:
            return out
        params = self.model.parameters()
        for i in self.indices():
            p = params[i]
            one = np.ones_like(p)
            if role == "rvjp:x":
                r = self._run(role, p, g=one, Rx=v[i], Rg=np.zeros_like(p))
            else:
                r = self._run(role, p, g=one)
            if r is not None:
                out[i] = out[i] + r
        return out
