"""Loss kernel family: row-wise softmax cross-entropy and pointwise (mean) losses."""
from __future__ import annotations

from ..derive.losses import (PointwiseLossDerivation, SoftmaxCrossEntropyDerivation,
                             derive_softmax_cross_entropy, mse, sigmoid_cross_entropy)
from .config import DTYPES
from .printer import print_expr
from .render import render


def _ce_context(d: SoftmaxCrossEntropyDerivation) -> dict:
    bodies = []
    for ct, sfx, _ in DTYPES:
        bodies.append((ct, sfx, {k: print_expr(getattr(d, k), ct)
                                 for k in ("row_loss", "exp_term", "grad_elem", "hvp_elem")}))
    return {"name": d.name, "bodies": bodies, "row_loss_doc": str(d.row_loss),
            "grad_doc": str(d.grad), "hvp_doc": str(d.hvp)}


def _pointwise_context(d: PointwiseLossDerivation) -> dict:
    bodies = []
    for ct, sfx, _ in DTYPES:
        bodies.append((ct, sfx, {"elem": print_expr(d.elem, ct), "grad": print_expr(d.grad_elem, ct),
                                 "hess": print_expr(d.hess_elem, ct)}))
    return {"name": d.name, "bodies": bodies, "elem_doc": str(d.elem),
            "grad_doc": str(d.grad_elem), "hess_doc": str(d.hess_elem)}


def render_pointwise_losses_module(module: str, derivations: list[PointwiseLossDerivation]) -> str:
    """A module with only pointwise losses (a user's ``losses.from_sympy``), compiled on the fly."""
    specs = [{"name": d.name, "hash": d.hash} for d in derivations]
    return render("losses.pyx.j2", module=module, specs=specs, ce=None,
                  pointwise=[_pointwise_context(d) for d in derivations],
                  doc="User loss kernels: value, gradient and Hessian-vector product.")


def render_losses_module(module: str = "losses") -> str:
    ce = derive_softmax_cross_entropy()
    pw = [mse(), sigmoid_cross_entropy()]
    specs = [{"name": ce.name, "hash": ce.hash}] + [{"name": d.name, "hash": d.hash} for d in pw]
    return render("losses.pyx.j2", module=module, specs=specs, ce=_ce_context(ce),
                  pointwise=[_pointwise_context(d) for d in pw],
                  doc="Loss kernels: value, gradient and Hessian-vector product per loss.")
