"""``Dense``: the fully connected layer ``y = x Wᵀ + b`` of the ``dense`` spec."""
from __future__ import annotations

import numpy as np

from .dropout import MaskOps, check_rate, draw_mask
from .kernels import load
from .layer import EVAL, Layer, SpecLayer, check_positive_int


class Dense(SpecLayer):
    """Fully connected layer ``y = x Wᵀ + b`` (PyTorch layout: W is (out, in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dropconnect: float = 0.0):
        self.in_features = check_positive_int("Dense", "in_features", in_features)
        self.out_features = check_positive_int("Dense", "out_features", out_features)
        self.bias = bool(bias)
        self.dropconnect = check_rate("Dense: dropconnect", dropconnect)
        self.W = self.b = None
        self._bind(load("dense"), "dense")

    @property
    def name(self):
        return f"Dense({self.in_features} -> {self.out_features})"

    def config(self):
        cfg = {"type": "Dense", "in_features": self.in_features, "out_features": self.out_features,
               "bias": self.bias}
        if self.dropconnect:
            cfg["dropconnect"] = self.dropconnect
        return cfg

    def init_parameters(self, dtype, rng):
        dtype = np.dtype(dtype)
        if self.W is not None:
            if self.W.dtype != dtype:
                raise TypeError(f"{self.name}: already initialised as {self.W.dtype}, cannot join a {dtype} model")
            return
        bound = 1.0 / np.sqrt(self.in_features)   # PyTorch's nn.Linear default init
        self.W = rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(dtype)
        self.b = (rng.uniform(-bound, bound, (self.out_features,)) if self.bias
                  else np.zeros(self.out_features)).astype(dtype)   # bias=False: a constant zero

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self.name}: expects per-sample inputs of shape ({self.in_features},), "
                             f"got {tuple(input_shape)}")
        return (self.out_features,)

    def spec_arrays(self):
        return {"W": self.W, "b": self.b}

    def penalized(self):
        return [self.W]

    def trainable(self):
        return ("W", "b") if self.bias else ("W",)

    def check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.name}: input must be a numpy array, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_features}), got {x.shape}")
        if x.dtype != self.W.dtype:
            raise TypeError(f"{self.name}: input dtype {x.dtype} does not match the layer's {self.W.dtype}")
        return np.ascontiguousarray(x)

    # ------------------------------------------------------------ DropConnect (training only)
    # The weight goes through the mask spec first, W' = M ⊙ W (M drawn per call, inverted
    # scaling); the dense roles run on W'; pullbacks to W go back through the mask's roles.
    def forward(self, x, ctx=EVAL):
        if not (ctx.training and self.dropconnect):
            return super().forward(x, ctx)
        ops = MaskOps(draw_mask(ctx.rng, self.W.shape, self.dropconnect, self.W.dtype))
        y, rec = super().forward(x, ctx, arrays={"W": ops.forward(self.W)})
        rec["mask"] = ops
        return y, rec

    def forward_jvp(self, x, Rx, Rparams, ctx=EVAL):
        if ctx.training and self.dropconnect:   # the masked weight: forward, then jvp (both masked)
            return Layer.forward_jvp(self, x, Rx, Rparams, ctx)
        return super().forward_jvp(x, Rx, Rparams, ctx)

    def vjp_rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        if "mask" in rec:
            return Layer.vjp_rvjp(self, rec, g, Rg, Rx, Rparams, need_input)
        return super().vjp_rvjp(rec, g, Rg, Rx, Rparams, need_input)

    def vjp(self, rec, g, need_input=True):
        gx, grads = super().vjp(rec, g, need_input)
        if "mask" in rec:
            grads[0] = rec["mask"].vjp(grads[0])
        return gx, grads

    def jvp(self, rec, Rx, Rparams):
        if "mask" in rec and Rparams:
            Rparams = [rec["mask"].jvp(Rparams[0])] + list(Rparams[1:])
        return super().jvp(rec, Rx, Rparams)

    def rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        if "mask" not in rec:
            return super().rvjp(rec, g, Rg, Rx, Rparams, need_input)
        ops = rec["mask"]
        RWm = ops.jvp(Rparams[0]) if Rparams else None
        Rgx, Rgrads = super().rvjp(rec, g, Rg, Rx, [RWm] + list(Rparams[1:]), need_input)
        Rgrads[0] = ops.rvjp(np.zeros_like(Rgrads[0]), Rgrads[0])
        return Rgx, Rgrads

    def sq_param_grads(self, rec, S, w):
        out = super().sq_param_grads(rec, S, w)
        if "mask" in rec:
            out[0] = rec["mask"].bl(out[0])   # diag w.r.t. W = m² ⊙ diag w.r.t. W'
        return out

    def bl(self, rec, h, g):
        hx, hp = super().bl(rec, h, g)
        if "mask" in rec:
            hp[0] = rec["mask"].bl(hp[0])
        return hx, hp
