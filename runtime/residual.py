"""``Residual``: a skip connection ``y = block(x) + P(x)``.

``P`` is the identity when the block keeps the shape, otherwise a learned projection
(a strided 1×1 Conv2D for images, a Dense layer for vectors). The pullback of the fan-out
``x -> (block(x), P(x))`` is the sum of the two branch gradients; the pushforward of the
fan-in is the sum of the branch directions. Composition only: every product is a sub-layer's,
and every pass is the sweep engine's (:class:`~symprop.runtime.branched.BranchedLayer`).
"""
from __future__ import annotations

import threading

from .conv import Conv2D, out_size
from .dense import Dense
from .branched import BranchedLayer
from .layer_base import Layer


class Residual(BranchedLayer):
    def __init__(self, layers: list, projection: bool | None = None):
        if not layers or not all(isinstance(la, Layer) for la in layers):
            raise TypeError("Residual: needs a non-empty list of symprop layers")
        self.block = list(layers)
        self.projection_wanted = projection   # None: only when shapes differ
        self.projection = None
        self._lock = threading.Lock()

    @property
    def name(self):
        return f"Residual({', '.join(la.name for la in self.block)})"

    def config(self):
        return {"type": "Residual", "layers": [la.config() for la in self.block],
                "projection": self.projection_wanted}

    def _parts(self):
        return self.block + ([self.projection] if self.projection else [])

    def init_parameters(self, dtype, rng):
        for la in self.block:
            la.init_parameters(dtype, rng)

    def parameters_known(self):
        return all(la.parameters_known() for la in self.block) and \
            (self.projection is not None or self.projection_wanted is False)

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for la in self.block:
            shape = la.output_shape(shape)
        return shape

    def build(self, input_shape, dtype, rng):
        in_shape = tuple(input_shape)
        shape = in_shape
        for la in self.block:
            shape = la.build(shape, dtype, rng)
        out_shape = tuple(shape)
        need = in_shape != out_shape if self.projection_wanted is None else bool(self.projection_wanted)
        with self._lock:
            if need and self.projection is None:
                self.projection = self._make_projection(in_shape, out_shape)
            if self.projection is not None:
                self.projection.init_parameters(dtype, rng)
                got = self.projection.output_shape(in_shape)
                if tuple(got) != out_shape:
                    raise ValueError(f"{self.name}: projection gives {got}, the block {out_shape}")
            elif in_shape != out_shape:
                raise ValueError(f"{self.name}: the block maps {in_shape} to {out_shape}; "
                                 f"an identity skip needs equal shapes (use projection=True)")
        return out_shape

    def _make_projection(self, in_shape, out_shape):
        if len(in_shape) == 1 and len(out_shape) == 1:
            return Dense(in_shape[0], out_shape[0])
        if len(in_shape) == 3 and len(out_shape) == 3:
            strides = []
            for a, b in zip(in_shape[1:], out_shape[1:]):
                s = next((s for s in range(1, a + 1) if out_size(a, 1, s, 0) == b), None)
                if s is None:
                    raise ValueError(f"{self.name}: no strided 1x1 projection maps spatial size "
                                     f"{in_shape[1:]} to {out_shape[1:]}")
                strides.append(s)
            return Conv2D(in_shape[0], out_shape[0], 1, stride=tuple(strides))
        raise ValueError(f"{self.name}: cannot project input {in_shape} onto output {out_shape}")

    def penalized(self):
        return [p for la in self._parts() for p in la.penalized()]

    def param_uses(self):
        return [p for la in self._parts() for p in la.param_uses()]

    def buffers(self):
        seen, out = set(), []
        for b in (b for la in self._parts() for b in la.buffers()):
            if id(b) not in seen:
                seen.add(id(b))
                out.append(b)
        return out

    def parameters(self):
        seen, out = set(), []
        for p in self.param_uses():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    # ------------------------------------------------------------ passes (runtime/branched.py)
    def branches(self) -> list[list]:
        """The fan-out: the block, and the skip branch (the projection, or the identity: an
        empty chain). The passes run both from the block's input and sum at the fan-in."""
        return [self.block, [self.projection] if self.projection else []]

    def bl(self, rec, h, g):
        raise ValueError(f"{self.name}: the Becker-LeCun diagonal is not defined through a skip connection "
                         f"(the fan-out's cross terms are what it drops); use method='exact', "
                         f"'gauss_newton' or 'hutchinson'")
