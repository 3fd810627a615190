"""``Dense``: the fully connected layer ``y = x Wᵀ + b`` of the ``dense`` spec."""
from __future__ import annotations

import numpy as np

from .defined import DefinedLayer, defined
from .dropout import MaskOps, draw_mask
from .layer_base import EVAL, Layer


@defined("Dense")
class Dense(DefinedLayer):
    """Fully connected layer ``y = x Wᵀ + b`` (PyTorch layout: W is (out, in)); with
    ``dropconnect`` the weight is masked per training call. Everything but DropConnect comes
    from its definition (``derive/builtins.py``)."""

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
