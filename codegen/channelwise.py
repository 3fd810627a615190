"""Channelwise kernel family: elementwise specs with learnable parameters per channel.

Data arrays are viewed as (N, C, S) (channel axis 1, S the rest); a learnable parameter
and its direction are per channel, shape (C,) or (1,) when shared. Pointwise outputs are
written per element; a parameter's pullback is summed over the axes the parameter is
broadcast along (``reduce="sum"``, accumulated in double), and its Gauss–Newton role sums
``w[k,n]·(Σ S[k]·∂f/∂p)²`` over factor columns and samples (``reduce="sqsum"``).

With one learnable parameter every channel array of a call has the same length (the sizes
``Cp``). With several (``counts`` in the binding), each may be shared or per channel on its
own: the sizes carry every channel array's length after N, C, S, Cp, K, and ``Cp`` is the
length of a reduced output (its parameter's).
"""
from __future__ import annotations

from ..derive.elementwise import DerivedElementwise
from .elementwise import kernel_context
from .manifest import spec_entry
from .render import render


def channel_context(d: DerivedElementwise, k) -> dict:
    ctx = kernel_context(k)
    names = {s for a in d.spec.learnable for s in (a, "R" + a)}
    channel = [a for a in k.inputs if a in names]
    ctx.update({"data": [a for a in k.inputs if a not in channel], "channel": channel, "reduce": k.reduce,
                "counts": len(d.spec.learnable) > 1})
    return ctx


def channel_role(ctx: dict) -> dict:
    sq = ["S", "w"] if ctx["reduce"] == "sqsum" else []
    like = ctx["role"].split(":", 1)[1] if ctx["reduce"] else "x"   # a pullback is shaped like its parameter
    return {"kernel": ctx["name"], "call": ctx["data"] + ctx["channel"] + ctx["outs"] + sq + list(ctx["scalars"]),
            "kwargs": [], "arrays": ctx["data"] + ctx["channel"] + sq, "optional": [],
            "outputs": [{"name": o, "like": like, "dtype": "float"} for o in ctx["outs"]],
            "scalars": list(ctx["scalars"]), "doc": ctx["doc"],
            "binding": {"family": "channelwise", "data": ctx["data"], "channel": ctx["channel"],
                        "reduce": ctx["reduce"] or None, **({"counts": True} if ctx["counts"] else {})}}


def render_channelwise_module(module: str, derived: list[DerivedElementwise], doc: str = "") -> str:
    kernels, table = [], {}
    for d in derived:
        learn = list(d.spec.learnable)
        ctxs = [channel_context(d, k) for k in d.kernels]
        kernels += ctxs
        fixed = [q for q, _ in d.spec.params if q not in learn]
        table[d.spec.name] = spec_entry("channelwise", d.spec.name, d.spec.hash, ["x"], learn, "y", fixed,
                                        {c["role"]: channel_role(c) for c in ctxs})
        table[d.spec.name]["defaults"] = {q: float(v) for q, v in d.spec.params}
    specs = [{"name": d.spec.name, "hash": d.spec.hash} for d in derived]
    return render("channelwise.pyx.j2", module=module, specs=specs, kernels=kernels, manifest=table,
                  doc=doc or f"Channelwise kernels (learnable per-channel parameters): "
                             f"{', '.join(s['name'] for s in specs)}.")
