"""Fused roles: several derived roles of one spec computed in one sweep.

Forward-over-reverse second order (an HVP with its gradient, AdaHessian's step) runs every
layer's forward and JVP on the same input, then its pullbacks and their R-ops on the same
upstream gradient. Run separately they re-read (and, for convolutions, re-im2col) the same
arrays several times and pay the Python call overhead per role. A fused role computes the
union of its parts' outputs in one kernel:

==================  ======================================  ==========================
role                parts                                   outputs
==================  ======================================  ==========================
``forward+jvp``     ``forward``, ``jvp``                    y (masks), Ry
``vjp+rvjp``        every ``vjp:<a>``, every ``rvjp:<a>``   gx, gθ…, Rgx, Rgθ…
``vjp+rvjp:params`` the parameters' ``vjp``/``rvjp`` only   gθ…, Rgθ… (first layer)
==================  ======================================  ==========================

Nothing is derived here: the parts are the derived kernels themselves; each family's codegen
merges their lowered bodies (elementwise: one loop with a joint CSE, the saved output y
substituted by its forward expression; window: one sample loop with one im2col per distinct
source array; contraction: one call running every part's GEMMs). The executor
(``runtime/kernels.py``) uses a fused role when the manifest has it and the separate roles
otherwise.
"""
from __future__ import annotations

FORWARD_JVP = "forward+jvp"
VJP_RVJP = "vjp+rvjp"
VJP_RVJP_PARAMS = "vjp+rvjp:params"


def fused_roles(roles: list[str], inputs: list[str], params: list[str]) -> dict[str, list[str]]:
    """Fused role name -> the roles it fuses (in order), for the roles a spec has. A fusion
    is offered only when every part exists (a spec with no R-op has none)."""
    have = set(roles)
    out = {}
    if {"forward", "jvp"} <= have:
        out[FORWARD_JVP] = ["forward", "jvp"]
    arrays = list(inputs) + list(params)
    back = [f"vjp:{a}" for a in arrays] + [f"rvjp:{a}" for a in arrays]
    if arrays and set(back) <= have:
        out[VJP_RVJP] = back
        if params and inputs:
            out[VJP_RVJP_PARAMS] = [f"vjp:{p}" for p in params] + [f"rvjp:{p}" for p in params]
    return out


def kernel_name(spec: str, fused: str) -> str:
    """``conv2d`` + ``vjp+rvjp:params`` -> ``conv2d_vjp_rvjp_params``."""
    return f"{spec}_" + fused.replace("+", "_").replace(":", "_")
