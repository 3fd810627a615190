"""A layer made of sub-layer chains: every pass runs through the sweep engine.

``branches()`` are chains of sub-layers that all read the layer's input; the output is their
sum (one chain: a composition, LayerNorm's normalisation then its scale and shift; two:
``Residual``'s block and skip). Composition only: each product is a sub-layer's kernel, each
pass is :func:`symprop.runtime.sweep.through_branches`.
"""
from __future__ import annotations

from . import sweep
from .layer_base import EVAL, Layer


class BranchedLayer(Layer):
    """The passes of a layer whose work is its sub-layers' (:meth:`branches`)."""

    def branches(self) -> list[list]:
        raise NotImplementedError

    def _through(self, p, rec, carry, Rparams=None, need_input=True, **opts):
        return sweep.through_branches(p, self, self.branches(), rec, carry, Rparams, need_input, opts)

    def forward(self, x, ctx=EVAL):
        return self._through(sweep.FORWARD, None, x, ctx=ctx)

    def forward_jvp(self, x, Rx, Rparams, ctx=EVAL):
        (y, Ry), rec = self._through(sweep.FORWARD_JVP, None, (x, Rx), Rparams, ctx=ctx)
        return y, Ry, rec

    def vjp(self, rec, g, need_input=True):
        gx, (grads,) = self._through(sweep.BACKWARD, rec, g, None, need_input)
        return gx, grads

    def input_vjp(self, rec, g):
        return self._through(sweep.INPUT_VJP, rec, g)[0]

    def jvp(self, rec, Rx, Rparams):
        # the sub-layers' own tangents are kept in the record; the first ones' input tangent is Rx
        return self._through(sweep.JVP, rec, Rx, Rparams)[0]

    def rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        # g and Rx are the sub-layers' own, kept in the record by the backward and jvp passes
        Rgx, (Rgrads,) = self._through(sweep.RVJP, rec, Rg, Rparams, need_input)
        return Rgx, Rgrads

    def vjp_rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        (gx, Rgx), (grads, Rgrads) = self._through(sweep.VJP_RVJP, rec, (g, Rg), Rparams, need_input)
        return gx, grads, Rgx, Rgrads

    def factor_backprop(self, rec, groups, g, exact, need_input=True):
        groups, (diag,) = self._through(sweep.FACTOR, rec, groups, None, need_input, exact=exact)
        return groups, diag

    def bl(self, rec, h, g):
        h, (diag,) = self._through(sweep.BECKER_LECUN, rec, h, None)
        return h, diag
