"""A :class:`Sequential`'s passes on a per-call :class:`Tape`: the forward trace, the backward
pass, the R-op (Hessian-vector products) and the fused forward-over-reverse sweep.

Each is the sweep engine (:mod:`symprop.runtime.sweep`) run over the model's layers, plus what
only the model knows: the loss at the end of the forward sweep, the parameter slots (a shared
parameter's per-use results summed) and the penalty's kernels.
"""
from __future__ import annotations

import numpy as np

from . import sweep


class Tape:
    """What one forward pass of a :class:`Sequential` saved, per call: each layer use's record,
    the network output, the loss and its context (e.g. softmax probabilities) and, after
    :meth:`Sequential.backward` with ``keep_output_grads``, each layer's output gradient.
    Nothing per-call lives on layers or the model, so models and layers are reentrant."""

    __slots__ = ("records", "out", "y", "loss", "loss_ctx", "grad_out", "gs")

    def __init__(self, records, out, y, loss, loss_ctx, grad_out):
        self.records, self.out, self.y = records, out, y
        self.loss, self.loss_ctx, self.grad_out = loss, loss_ctx, grad_out
        self.gs = None


#: backward roles (what vjp_rvjp may run) as the manifest names them
_BACKWARD_ROLES = ("vjp", "rvjp", "vjp+rvjp")


def backward_reads_input_tangent(layer) -> bool:
    """Whether ``layer``'s pullback or R-op may read the tangent of its input (``Rx``): True
    unless it is an activation or pooling layer whose generated backward roles (fused or
    separate) take no ``R<input>`` argument per the manifest (their R-op is linear in ``Rg``
    and the saved record), so the forward sweep need not keep that tangent alive."""
    from .activation import Activation
    from .conv import AvgPool2D, MaxPool2D
    K = getattr(layer, "kernels", None)
    if not isinstance(layer, (Activation, MaxPool2D, AvgPool2D)) or not hasattr(K, "roles"):
        return True
    name = "R" + K.input
    return any(name in role.arrays for r, role in K.roles.items() if r.split(":")[0] in _BACKWARD_ROLES)


def _never(layer) -> bool:
    return False


def sum_into_slots(n: int, slots: list, per_layer: list, which: int = 0, zeros_like=None) -> list:
    """Result ``which`` of every layer, summed into ``n`` parameter slots (a shared parameter's
    uses add up); a slot nothing reached is None, or zeros shaped like ``zeros_like[i]``."""
    acc = [None] * n
    for s, res in zip(slots, per_layer):
        for i, a in zip(s, res[which]):
            if a is not None:
                acc[i] = a if acc[i] is None else acc[i] + a
    if zeros_like is not None:
        acc = [np.zeros_like(p) if a is None else a for p, a in zip(zeros_like, acc)]
    return acc


def _loss_value_and_grad(model, out, y):
    sweep.note(model.loss.name, "value_and_grad", (out.shape,))
    return model.loss.value_and_grad(out, y)


def _loss_hvp(model, ctx, out, y, Rx):
    sweep.note(model.loss.name + "_hvp", "hvp", (out.shape,))
    return model.loss.hvp(ctx, out, y, Rx if Rx is not None else np.zeros_like(out))


def forward(model, X, ctx):
    """``(outputs, records)`` of one forward sweep."""
    out, recs, _ = sweep.walk(sweep.FORWARD, model.layers, None, X, opts={"ctx": ctx})
    return out, recs


def trace(model, X, y, ctx) -> Tape:
    out, recs = forward(model, X, ctx)
    loss, g, lctx = _loss_value_and_grad(model, out, y)
    return Tape(recs, out, y, float(loss) + model.penalty.value(), lctx, g)


def backward(model, tape: Tape, keep_output_grads: bool) -> list:
    params, slots = model.param_slots()
    _, per_layer, gs = sweep.walk(sweep.BACKWARD, model.layers, tape.records, tape.grad_out, need_input=False)
    if keep_output_grads:
        tape.gs = gs
    return model.penalty.add(sum_into_slots(len(params), slots, per_layer), "vjp:x")


def directions(model, v: list) -> list:
    """``v`` (aligned with parameters()) as each layer's per-use directions."""
    return [[v[i] for i in s] for s in model.param_slots()[1]]


def rop(model, tape: Tape, v: list) -> list:
    params, slots = model.param_slots()
    parts = directions(model, v)
    Rx, _, Rxs = sweep.walk(sweep.JVP, model.layers, tape.records, None, directions=parts)
    Rg = _loss_hvp(model, tape.loss_ctx, tape.out, tape.y, Rx)
    _, per_layer, _ = sweep.walk(sweep.RVJP, model.layers, tape.records, Rg, kept={"g": tape.gs, "Rx": Rxs},
                                 directions=parts, need_input=False)
    return model.penalty.add(sum_into_slots(len(params), slots, per_layer, zeros_like=params), "rvjp:x", v=v)


def forward_over_reverse(model, X, y, v, ctx, keep_tape: bool):
    params, slots = model.param_slots()
    parts = directions(model, v)
    keep_if = None if keep_tape else backward_reads_input_tangent
    (out, Rx), recs, Rxs = sweep.walk(sweep.FORWARD_JVP, model.layers, None, (X, None), directions=parts,
                                      opts={"ctx": ctx}, keep_if=keep_if)
    loss, g, lctx = _loss_value_and_grad(model, out, y)
    tape = Tape(recs, out, y, float(loss) + model.penalty.value(), lctx, g)
    Rg = _loss_hvp(model, lctx, out, y, Rx)
    if not keep_tape:   # the backward sweep drops each layer's record and tangent once past it
        tape.records = tape.out = tape.loss_ctx = tape.grad_out = None
        out = Rx = None
    _, per_layer, gs = sweep.walk(sweep.VJP_RVJP, model.layers, recs, (g, Rg), kept={"Rx": Rxs},
                                  directions=parts, need_input=False, release=not keep_tape,
                                  keep_if=None if keep_tape else _never, donate=not keep_tape)
    tape.gs = gs if keep_tape else None
    grads = sum_into_slots(len(params), slots, per_layer, 0)
    Hv = sum_into_slots(len(params), slots, per_layer, 1, zeros_like=params)
    return tape, model.penalty.add(grads, "vjp:x"), model.penalty.add(Hv, "rvjp:x", v=v)
