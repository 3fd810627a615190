"""``Residual``: a skip connection ``y = block(x) + P(x)``.

``P`` is the identity when the block keeps the shape, otherwise a learned projection
(a strided 1×1 Conv2D for images, a Dense layer for vectors). The pullback of the fan-out
``x -> (block(x), P(x))`` is the sum of the two branch gradients; the pushforward of the
fan-in is the sum of the branch directions. Composition only: every product is a sub-layer's.
"""
from __future__ import annotations

import threading

from .conv import Conv2D, out_size
from .dense import Dense
from .layer import EVAL, Layer, batch_columns


def _add(a, b):
    """Sum of two arrays where ``None`` is zero."""
    return b if a is None else a if b is None else a + b


def split_uses(layers, flat: list) -> list[list]:
    """Cut a list aligned with the layers' concatenated ``param_uses()`` into one list per layer."""
    parts, i = [], 0
    for la in layers:
        n = len(la.param_uses())
        parts.append(flat[i:i + n])
        i += n
    return parts


class Residual(Layer):
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

    # ------------------------------------------------------------ passes
    def forward(self, x, ctx=EVAL):
        recs, out = [], x
        for la in self.block:
            out, r = la.forward(out, ctx)
            recs.append(r)
        if self.projection:
            skip, prec = self.projection.forward(x, ctx)
        else:
            skip, prec = x, None
        return out + skip, {"block": recs, "proj": prec, "gs": None, "Rxs": None}

    def vjp(self, rec, g, need_input=True):
        grads = []
        gb = g
        gs = [None] * len(self.block)   # each block layer's output gradient, for the R-op
        for k in range(len(self.block) - 1, -1, -1):
            gs[k] = gb
            gb, pg = self.block[k].vjp(rec["block"][k], gb, need_input=True)
            grads[:0] = pg
        rec["gs"] = gs
        if self.projection:
            gsk, pg = self.projection.vjp(rec["proj"], g, need_input=need_input)
            grads += pg
        else:
            gsk = g
        return (gb + gsk if need_input else None), grads

    def input_vjp(self, rec, g):
        gb = g
        for k in range(len(self.block) - 1, -1, -1):
            gb = self.block[k].input_vjp(rec["block"][k], gb)
        return gb + (self.projection.input_vjp(rec["proj"], g) if self.projection else g)

    def jvp(self, rec, Rx, Rparams):
        parts = split_uses(self._parts(), Rparams)
        Rxs = []   # each block layer's input direction, for the R-op pullback
        Rb = Rx
        for la, r, Rp in zip(self.block, rec["block"], parts):
            Rxs.append(Rb)
            Rb = la.jvp(r, Rb, Rp)
        rec["Rxs"] = Rxs
        Rs = self.projection.jvp(rec["proj"], Rx, parts[-1]) if self.projection else Rx
        return _add(Rb, Rs)

    def rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        parts = split_uses(self._parts(), Rparams)
        Rgrads = []
        Rgb = Rg
        for k in range(len(self.block) - 1, -1, -1):
            Rgb, Rp = self.block[k].rvjp(rec["block"][k], rec["gs"][k], Rgb, rec["Rxs"][k], parts[k],
                                         need_input=True)
            Rgrads[:0] = Rp
        if self.projection:
            Rgs, Rp = self.projection.rvjp(rec["proj"], g, Rg, Rx, parts[-1], need_input=need_input)
            Rgrads += Rp
        else:
            Rgs = Rg
        return (_add(Rgb, Rgs) if need_input else None), Rgrads

    def factor_backprop(self, rec, groups, g, exact, need_input=True):
        cur, diag = groups, []
        for k in range(len(self.block) - 1, -1, -1):
            cur, d = self.block[k].factor_backprop(rec["block"][k], cur, rec["gs"][k], exact, need_input=True)
            diag[:0] = d
        if self.projection:   # a linear map: no residual term of its own
            skip, d = self.projection.factor_backprop(rec["proj"], groups, g, exact=False, need_input=need_input)
            diag += d
        else:
            skip = groups
        if not need_input:
            return [], diag
        # the fan-out's pullback adds the skip branch to the block branch, column by column;
        # groups born inside the block (its residual terms) only come through the block
        n = len(groups)
        out = []
        for (Sb, w), (Ss, ws) in zip(cur[:n], skip):
            if w.ndim != ws.ndim:   # a batch-coupled layer in one branch: both as whole-batch columns
                (Sb, w), (Ss, ws) = batch_columns(Sb, w), batch_columns(Ss, ws)
            out.append((Sb + Ss, w))
        return out + cur[n:], diag

    def bl(self, rec, h, g):
        raise ValueError(f"{self.name}: the Becker-LeCun diagonal is not defined through a skip connection "
                         f"(the fan-out's cross terms are what it drops); use method='exact', "
                         f"'gauss_newton' or 'hutchinson'")
