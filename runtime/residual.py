"""``Residual``: a skip connection ``y = block(x) + P(x)``.

``P`` is the identity when the block keeps the shape, otherwise a learned projection
(a strided 1×1 Conv2D for images, a Dense layer for vectors). The pullback of the fan-out
``x -> (block(x), P(x))`` is the sum of the two branch gradients.
"""
from __future__ import annotations

import numpy as np

from .layers import Dense, Layer, split_by_layer


class Residual(Layer):
    def __init__(self, layers: list, projection: bool | None = None):
        if not layers or not all(isinstance(la, Layer) for la in layers):
            raise TypeError("Residual: needs a non-empty list of symprop layers")
        self.block = list(layers)
        self.projection_wanted = projection   # None: only when shapes differ
        self.projection = None

    @property
    def name(self):
        return f"Residual({', '.join(la.name for la in self.block)})"

    def config(self):
        return {"type": "Residual", "layers": [la.config() for la in self.block],
                "projection": self.projection_wanted}

    def build(self, input_shape, dtype, rng):
        from .conv import Conv2D, out_size
        self.dtype = np.dtype(dtype)
        shape = tuple(input_shape)
        for la in self.block:
            shape = la.build(shape, dtype, rng)
        self.in_shape, self.out_shape = tuple(input_shape), tuple(shape)
        need = self.in_shape != self.out_shape if self.projection_wanted is None else bool(self.projection_wanted)
        if need:
            if len(self.in_shape) == 1 and len(self.out_shape) == 1:
                self.projection = Dense(self.in_shape[0], self.out_shape[0])
            elif len(self.in_shape) == 3 and len(self.out_shape) == 3:
                strides = []
                for a, b in zip(self.in_shape[1:], self.out_shape[1:]):
                    s = next((s for s in range(1, a + 1) if out_size(a, 1, s, 0) == b), None)
                    if s is None:
                        raise ValueError(f"{self.name}: no strided 1x1 projection maps spatial size "
                                         f"{self.in_shape[1:]} to {self.out_shape[1:]}")
                    strides.append(s)
                self.projection = Conv2D(self.in_shape[0], self.out_shape[0], 1, stride=tuple(strides))
            else:
                raise ValueError(f"{self.name}: cannot project input {self.in_shape} onto output {self.out_shape}")
            got = self.projection.build(self.in_shape, dtype, rng)
            if tuple(got) != self.out_shape:
                raise ValueError(f"{self.name}: projection gives {got}, the block {self.out_shape}")
        return self.out_shape

    def parameters(self):
        ps = [p for la in self.block for p in la.parameters()]
        return ps + (self.projection.parameters() if self.projection else [])

    def forward(self, x):
        out = x
        for la in self.block:
            out = la.forward(out)
        skip = self.projection.forward(x) if self.projection else x
        return out + skip

    def backward(self, g, need_input_grad=True):
        grads = []
        gb = g
        self._gs = [None] * len(self.block)   # each block layer's output gradient, for rvjp
        for k in range(len(self.block) - 1, -1, -1):
            self._gs[k] = gb
            gb, pg = self.block[k].backward(gb, need_input_grad=True)
            grads[:0] = pg
        if self.projection:
            gs, pg = self.projection.backward(g, need_input_grad=need_input_grad)
            grads += pg
        else:
            gs = g
        return (gb + gs if need_input_grad else None), grads

    def _split(self, Rparams):
        return split_by_layer(self.block + ([self.projection] if self.projection else []), Rparams)

    def jvp(self, Rx, Rparams):
        parts = self._split(Rparams)
        self._Rxs = []   # each block layer's input direction, for rvjp
        Rb = Rx
        for la, Rp in zip(self.block, parts):
            self._Rxs.append(Rb)
            Rb = la.jvp(Rb, Rp)
        Rs = self.projection.jvp(Rx, parts[-1]) if self.projection else Rx
        return _add(Rb, Rs)

    def rvjp(self, g, Rg, Rx, Rparams, need_input_grad=True):
        parts = self._split(Rparams)
        Rgrads = []
        Rgb = Rg
        for k in range(len(self.block) - 1, -1, -1):
            Rgb, Rp = self.block[k].rvjp(self._gs[k], Rgb, self._Rxs[k], parts[k], need_input_grad=True)
            Rgrads[:0] = Rp
        if self.projection:
            Rgs, Rp = self.projection.rvjp(g, Rg, Rx, parts[-1], need_input_grad=need_input_grad)
            Rgrads += Rp
        else:
            Rgs = Rg
        return (_add(Rgb, Rgs) if need_input_grad else None), Rgrads

    def factor_backprop(self, groups, g, exact, need_input=True):
        cur, diag = groups, []
        for k in range(len(self.block) - 1, -1, -1):
            cur, d = self.block[k].factor_backprop(cur, self._gs[k], exact, need_input=True)
            diag[:0] = d
        if self.projection:   # a linear map: no residual term of its own
            skip, d = self.projection.factor_backprop(groups, g, exact=False, need_input=need_input)
            diag += d
        else:
            skip = groups
        if not need_input:
            return [], diag
        # the fan-out's pullback adds the skip branch to the block branch, column by column;
        # groups born inside the block (its residual terms) only come through the block
        n = len(groups)
        return [(Sb + Ss, w) for (Sb, w), (Ss, _) in zip(cur[:n], skip)] + cur[n:], diag


def _add(a, b):
    """Sum of two directions where ``None`` is zero (the fan-out's pullback/pushforward)."""
    return b if a is None else a if b is None else a + b
