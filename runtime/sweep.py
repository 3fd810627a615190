"""The sweep engine: every pass over a model's layers, written once.

A pass is a walk over a *chain* (a list of layers) in one direction, calling one method of
the layer interface per layer (:class:`~symprop.runtime.layer_base.Layer`: ``forward``, ``vjp``,
``jvp``, ``rvjp``, ``forward_jvp``, ``vjp_rvjp``, ``factor_backprop``, ``bl``) and carrying
one value from layer to layer (the activation, the output gradient, a direction, the
factor groups of the Hessian, ...). Each pass below is a short description: the direction,
the layer method, which carry each layer keeps for a later pass (the backward pass keeps
every layer's output gradient for the R-op), which kept carries it reads, and how the carries
of parallel branches combine (a sum at a fan-out; the factor groups column by column).

:func:`walk` runs a pass over a chain (``Sequential``'s layers, a block's layers);
:func:`through_branches` runs it over a fan-out node (``Residual``: the block and the skip
branch from one input, their outputs summed), which is itself a layer of the outer chain.
The engine composes only: every product is a layer's kernel.

Recording: inside :func:`recording` every kernel a layer runs is logged with the position
of the layer in the model (``(k,)``, or ``(k, branch, j)`` inside a block), its spec, role,
kernel name and output shapes, and :func:`note` logs the loss kernels; :func:`record_schedule`
runs a model's public calls on a tiny batch to give the document its kernel schedule.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import arena


def add(a, b):
    """Sum of two carries where None is zero (a tuple carry is summed per component)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, tuple):
        return tuple(add(x, y) for x, y in zip(a, b))
    return a + b


def join_sum(carries: list, incoming):
    """The carries of parallel branches summed (the pushforward of a fan-in, the pullback of a
    fan-out)."""
    out = None
    for c in carries:
        out = add(out, c)
    return out


def join_factor_groups(carries: list, incoming: list) -> list:
    """The factor groups of parallel branches at their common input: the groups that came in
    (the first ``len(incoming)`` of every branch) are summed column by column; groups born
    inside a branch (an activation's curvature term f″·ḡ) pass on as they are."""
    from .layer_base import batch_columns
    n = len(incoming)
    acc = carries[0]
    for other in carries[1:]:
        joined = []
        for (Sa, wa), (Sb, wb) in zip(acc[:n], other[:n]):
            if wa.ndim != wb.ndim:   # a batch-coupled layer in one branch: both as whole-batch columns
                (Sa, wa), (Sb, wb) = batch_columns(Sa, wa), batch_columns(Sb, wb)
            joined.append((Sa + Sb, wa))
        acc = joined + acc[n:] + other[n:]
    return acc


@dataclass(frozen=True)
class Pass:
    """One pass: ``step(layer, record, carry, kept, directions, need_input, opts)`` returns
    ``(carry, result)``; ``result`` is the layer's record for a pass that ``makes_record``,
    otherwise a tuple of per-parameter-use lists (gradients, R-op gradients, diagonals)."""
    name: str
    reverse: bool                       # from the last layer to the first
    step: Callable
    makes_record: bool = False          # a forward pass: the result is the call's record
    keep: str | None = None             # keep the carry entering each layer under this name
    kept_part: Callable = None          # the part of the carry that is kept (None: all of it)
    reads: tuple = ()                   # names of kept carries (of earlier passes) the step reads
    join: Callable | None = join_sum    # branch carries -> one carry (None: no fan-out allowed)
    results: int = 0                    # per-use result lists per layer
    empty: object = None                # the carry past a first layer that needs no input result
    doc: str = field(default="", compare=False)


# ---------------------------------------------------------------- the passes
FORWARD = Pass(
    "forward", reverse=False, makes_record=True,
    step=lambda la, rec, x, kept, Rp, ni, o: la.forward(x, o["ctx"]),
    doc="outputs, and each layer's record")

FORWARD_JVP = Pass(
    "forward_jvp", reverse=False, makes_record=True, keep="Rx", kept_part=lambda c: c[1],
    step=lambda la, rec, c, kept, Rp, ni, o: _pair_and_record(la.forward_jvp(c[0], c[1], Rp, o["ctx"])),
    doc="outputs and their tangents together (fused kernels); keeps each layer's input tangent")

JVP = Pass(
    "jvp", reverse=False, keep="Rx",
    step=lambda la, rec, Rx, kept, Rp, ni, o: (la.jvp(rec, Rx, Rp), ()),
    doc="the tangent of the output (the R-op's forward half); keeps each layer's input tangent")

BACKWARD = Pass(
    "backward", reverse=True, keep="g", results=1,
    step=lambda la, rec, g, kept, Rp, ni, o: _one(la.vjp(rec, g, ni)),
    doc="gradients; keeps each layer's output gradient")

INPUT_VJP = Pass(
    "input_vjp", reverse=True,
    step=lambda la, rec, g, kept, Rp, ni, o: (la.input_vjp(rec, g), ()),
    doc="the input gradient alone")

RVJP = Pass(
    "rvjp", reverse=True, reads=("g", "Rx"), results=1,
    step=lambda la, rec, Rg, kept, Rp, ni, o: _one(la.rvjp(rec, kept["g"], Rg, kept["Rx"], Rp, ni)),
    doc="the R-op of every pullback (Hessian-vector products)")

VJP_RVJP = Pass(
    "vjp_rvjp", reverse=True, keep="g", kept_part=lambda c: c[0], reads=("Rx",), results=2, empty=(None, None),
    step=lambda la, rec, c, kept, Rp, ni, o: _vjp_rvjp(la.vjp_rvjp(rec, c[0], c[1], kept["Rx"], Rp, ni)),
    doc="pullbacks and their R-ops together (fused kernels)")

FACTOR = Pass(
    "factor_backprop", reverse=True, reads=("g",), results=1, join=join_factor_groups, empty=(),
    step=lambda la, rec, groups, kept, Rp, ni, o: _one(la.factor_backprop(rec, groups, kept["g"], o["exact"], ni)),
    doc="factor groups of the output Hessian; per-parameter Gauss-Newton (and exact) diagonals")

BECKER_LECUN = Pass(
    "becker_lecun", reverse=True, reads=("g",), results=1, join=None,
    step=lambda la, rec, h, kept, Rp, ni, o: _one(la.bl(rec, h, kept["g"])),
    doc="the output-Hessian diagonal, off-diagonal terms dropped (Becker & LeCun)")


def _one(res):
    carry, values = res
    return carry, (values,)


def _pair_and_record(res):
    y, Ry, rec = res
    return (y, Ry), rec


def _vjp_rvjp(res):
    gx, grads, Rgx, Rgrads = res
    return (gx, Rgx), (grads, Rgrads)


# ---------------------------------------------------------------- recording
_LOG: contextvars.ContextVar = contextvars.ContextVar("symprop_sweep_log", default=None)
_AT: contextvars.ContextVar = contextvars.ContextVar("symprop_sweep_position", default=())


@dataclass
class Call:
    """One logged kernel call: where (the layer's position; ``()`` for the loss), the spec,
    the role, the kernel and its output shapes."""
    position: tuple
    spec: str
    role: str
    kernel: str
    shapes: tuple = ()


def _observe(kernels, role: str, outputs: list) -> None:
    log = _LOG.get()
    if log is not None and _AT.get() != ():    # outside the layers (the loss's kernels): note()
        log.append(Call(_AT.get(), kernels.spec, role, kernels.entry["roles"][role]["kernel"],
                        tuple(o.shape for o in outputs)))


@contextlib.contextmanager
def recording():
    """Log every kernel call of the passes run inside (this thread or task only): yields the
    list of :class:`Call` s it fills."""
    from . import kernels
    log: list = []
    t1, t2 = _LOG.set(log), kernels.OBSERVER.set(_observe)
    try:
        yield log
    finally:
        kernels.OBSERVER.reset(t2)
        _LOG.reset(t1)


def note(kernel: str, role: str, shapes: tuple = ()) -> None:
    """Log a kernel the model calls outside the layers (the loss's), when recording."""
    log = _LOG.get()
    if log is not None:
        log.append(Call((), "loss", role, kernel, shapes))


# ---------------------------------------------------------------- walking
def walk(p: Pass, layers: list, records, carry, *, kept: dict | None = None, directions=None,
         need_input: bool = True, opts: dict | None = None, keep_if=None, release: bool = False,
         tidy=None, donate: bool = False):
    """Run pass ``p`` over a chain of layers from ``carry``.

    ``records``: the chain's records (None for a forward pass, which makes them); ``kept``: the
    kept carries ``p.reads`` names, per layer; ``directions``: per layer, the directions of its
    parameter uses; ``need_input``: whether the first layer's input-side result is wanted (a
    reverse pass); ``keep_if(layer)``: keep only where it holds; ``release``: drop each
    layer's record and kept carries once passed (memory); ``tidy(carry)``: applied after each
    layer; ``donate``: the carry a layer receives is not read again by the caller (and not
    kept), so a layer running one alias-safe elementwise kernel may write its outputs into it
    (``runtime/arena.py``). Returns ``(carry, per-layer results, kept carries of this pass or None)``.
    """
    n = len(layers)
    out = [None] * n
    keep = [None] * n if p.keep else None
    where = _AT.get() if _LOG.get() is not None else None
    step, reads, part = p.step, p.reads, p.kept_part
    for k in (range(n - 1, -1, -1) if p.reverse else range(n)):
        la = layers[k]
        if keep is not None and (keep_if is None or keep_if(la)):
            keep[k] = carry if part is None else part(carry)
        args = (la, None if records is None else records[k], carry,
                {r: kept[r][k] for r in reads} if reads else None,
                () if directions is None else directions[k], need_input or k > 0 or not p.reverse, opts)
        offer = (arena.donated(*(carry if isinstance(carry, tuple) else (carry,)))
                 if donate and (keep is None or keep[k] is None) and arena.may_donate(la)
                 else contextlib.nullcontext())
        token = _AT.set(where + (k,)) if where is not None else None   # recording: the layer's position
        try:
            with offer:
                carry, out[k] = step(*args)
        finally:
            if token is not None:
                _AT.reset(token)
        if release:
            records[k] = None
            for r in reads:
                kept[r][k] = None
        if tidy is not None and carry is not None:
            carry = tidy(carry)
    return carry, out, keep


def split_uses(layers: list, flat) -> list[list]:
    """Cut a list aligned with the layers' concatenated ``param_uses()`` into one list per layer
    (None: no directions)."""
    if flat is None:
        return None
    parts, i = [], 0
    for la in layers:
        n = len(la.param_uses())
        parts.append(list(flat[i:i + n]))
        i += n
    return parts


def through_branches(p: Pass, node, branches: list[list], record, carry, directions=None,
                     need_input: bool = True, opts: dict | None = None):
    """Run ``p`` through a fan-out node whose ``branches`` (chains; an empty chain is the
    identity) all read the node's input and whose output is their sum (one branch: a
    composition of its chain). Returns ``(carry,
    record)`` for a forward pass, else ``(carry, results)`` with the results as flat lists
    aligned with the node's parameter uses. The node's record holds each branch's records and
    the carries its branches kept (a later pass reads them)."""
    if p.join is None and len(branches) > 1 and any(branches):
        raise ValueError(f"{node.name}: the {p.name} pass is not defined through a fan-out")
    forward = p.makes_record
    rec = {"branches": [], "kept": {}} if forward else record
    parts = None if directions is None else split_uses([la for b in branches for la in b], directions)
    carries, results, kept_by_branch, i = [], [], [], 0
    where = _AT.get() if _LOG.get() is not None else None
    for b, chain in enumerate(branches):
        args = (p, chain, None if forward else rec["branches"][b], carry)
        kw = dict(kept={r: rec["kept"][r][b] for r in p.reads} if p.reads else None,
                  directions=None if parts is None else parts[i:i + len(chain)], need_input=need_input, opts=opts)
        if where is None:
            c, out, keep = walk(*args, **kw)
        else:   # recording: a branch layer's position is (node's, branch, its index)
            token = _AT.set(where + (b,))
            try:
                c, out, keep = walk(*args, **kw)
            finally:
                _AT.reset(token)
        i += len(chain)
        carries.append(c)
        kept_by_branch.append(keep)
        if forward:
            rec["branches"].append(out)
        else:
            results += out
    if p.keep:
        rec["kept"][p.keep] = kept_by_branch
    if p.reverse and not need_input:
        carry = p.empty
    else:   # one chain (a composition) needs no join
        carry = carries[0] if len(carries) == 1 else p.join(carries, carry)
    if forward:
        return carry, rec
    return carry, tuple([a for res in results for a in res[j]] for j in range(p.results))


# ---------------------------------------------------------------- the schedule of a model's calls
def record_schedule(model, batch: int = 2, seed: int = 0) -> dict:
    """``{call: [Call, ...]}``: the kernels each public call of ``model`` runs, in order, logged
    while running it on ``batch`` random samples (``loss_and_grad``, ``hvp``, and
    ``hessian_diagonal`` with each method, ``hutchinson`` with one probe); a method the model
    refuses (Becker–LeCun through a skip connection) is left out."""
    rng = np.random.default_rng(seed)
    if model.input_shape is None:
        raise ValueError("record_schedule: the model is not built yet (pass input_shape=)")
    X = rng.standard_normal((batch,) + model.input_shape).astype(model.dtype)
    out_shape = (batch,) + model.output_shape
    if model.loss.classification:
        y = rng.integers(0, out_shape[-1], batch)
    else:
        y = rng.random(out_shape).astype(model.dtype)
    v = [rng.standard_normal(p.shape).astype(p.dtype) for p in model.parameters()]
    calls = {"loss_and_grad": lambda: model.loss_and_grad(X, y), "hvp": lambda: model.hvp(X, y, v)}
    for method in ("exact", "gauss_newton", "becker_lecun"):
        calls[method] = lambda method=method: model.hessian_diagonal(X, y, method=method)
    calls["hutchinson"] = lambda: model.hessian_diagonal(X, y, method="hutchinson", samples=1, seed=seed)
    sched = {}
    for name, call in calls.items():
        with recording() as log:
            try:
                call()
            except ValueError:
                if name != "becker_lecun":
                    raise
                continue
        sched[name] = log
    return sched
