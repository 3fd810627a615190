"""Loss kernel family: row-wise softmax cross-entropy and pointwise (mean) losses."""
from __future__ import annotations

from ..derive.losses import (POINTWISE_LOSSES, PointwiseLossDerivation, SoftmaxCrossEntropyDerivation,
                             derive_softmax_cross_entropy, derive_user_loss, mse, sigmoid_cross_entropy)
from .config import DTYPES
from .manifest import spec_entry
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
            "grad_doc": str(d.grad_elem), "hess_doc": str(d.hess_elem), "scalars": list(d.scalars)}


def _role(kernel: str, arrays: list, outputs: list, like: str, scalars=()) -> dict:
    """A loss role: the kernel returns the loss (``value`` roles) or fills its outputs;
    ``scalars``: the loss's scalar arguments, passed by keyword."""
    role = {"kernel": kernel, "call": arrays + outputs, "kwargs": list(scalars), "arrays": arrays, "optional": [],
            "outputs": [{"name": o, "like": like, "dtype": "float"} for o in outputs]}
    if kernel.endswith("_hvp"):
        return role
    role["returns"] = "loss"
    return role


def loss_manifest(ce: SoftmaxCrossEntropyDerivation | None, pointwise: list) -> dict:
    """Every loss spec's roles: ``value`` (returns the mean loss), ``value+grad`` (also writes
    ∂L/∂z) and ``hvp`` (the loss Hessian w.r.t. z times v); the softmax cross-entropy has the
    ``:soft`` variants for probability targets, and its ``hvp`` reads the probabilities its
    ``value+grad`` wrote."""
    table = {}
    if ce is not None:
        n = ce.name
        table[n] = spec_entry("loss", n, ce.hash, ["z"], [], "loss", [], {
            "value": _role(n, ["z", "labels"], [], "z"),
            "value+grad": _role(n, ["z", "labels"], ["grad", "probs"], "z"),
            "value:soft": _role(f"{n}_soft", ["z", "t"], [], "z"),
            "value+grad:soft": _role(f"{n}_soft", ["z", "t"], ["grad", "probs"], "z"),
            "hvp": _role(f"{n}_hvp", ["probs", "v"], ["out"], "z")})
    for d in pointwise:
        sc = list(d.scalars)
        table[d.name] = spec_entry("loss", d.name, d.hash, ["z"], [], "loss", sc, {
            "value": _role(d.name, ["z", "t"], [], "z", sc),
            "value+grad": _role(d.name, ["z", "t"], ["grad"], "z", sc),
            "hvp": _role(f"{d.name}_hvp", ["z", "t", "v"], ["out"], "z", sc)})
    return table


def render_pointwise_losses_module(module: str, derivations: list[PointwiseLossDerivation]) -> str:
    """A module with only pointwise losses (a user's ``losses.from_sympy``), compiled on the fly."""
    specs = [{"name": d.name, "hash": d.hash} for d in derivations]
    return render("losses.pyx.j2", module=module, specs=specs, ce=None,
                  pointwise=[_pointwise_context(d) for d in derivations], manifest=loss_manifest(None, derivations),
                  doc="User loss kernels: value, gradient and Hessian-vector product.")


def render_losses_module(module: str = "losses") -> str:
    """The built-in losses: softmax cross-entropy, MSE, sigmoid cross-entropy and the losses
    written as user specs (``derive.losses.POINTWISE_LOSSES``: Huber, log-cosh)."""
    ce = derive_softmax_cross_entropy()
    pw = [mse(), sigmoid_cross_entropy(), *(derive_user_loss(s) for s in POINTWISE_LOSSES.values())]
    specs = [{"name": ce.name, "hash": ce.hash}] + [{"name": d.name, "hash": d.hash} for d in pw]
    return render("losses.pyx.j2", module=module, specs=specs, ce=_ce_context(ce),
                  pointwise=[_pointwise_context(d) for d in pw], manifest=loss_manifest(ce, pw),
                  doc="Loss kernels: value, gradient and Hessian-vector product per loss.")
