"""Elementwise kernel family: CSE'd scalar bodies in a typed loop, float32 and float64."""
from __future__ import annotations

import sympy as sp

from ..derive.elementwise import Y, DerivedElementwise, Kernel
from .config import DTYPES
from .fusion import fused_roles, kernel_name
from .manifest import elementwise_role, spec_entry
from .printer import print_expr
from .render import render


def kernel_context(k: Kernel, doc: str = "") -> dict:
    """Everything the template needs to lay out one kernel."""
    written = [a for a in k.inputs if a in k.inplace.values()]
    outs = [o for o, _ in k.outputs if o not in k.inplace]
    _, repl, reduced = k.cse      # the same CSE whose op count derive records
    bodies = []
    for ctype, sfx, _ in DTYPES:
        temps = [(str(s), print_expr(v, ctype)) for s, v in repl]
        results = [(k.inplace.get(o, o), print_expr(r, ctype)) for (o, _), r in zip(k.outputs, reduced)]
        bodies.append((ctype, sfx, {"locals": list(k.inputs) + [t for t, _ in temps],
                                    "temps": temps, "results": results}))
    return {"name": k.name, "role": k.role, "arrays": list(k.inputs), "outs": outs, "written": written,
            "scalars": list(k.scalars), "bodies": bodies,
            "doc": doc or "; ".join(f"{o} = {e}" for o, e in k.outputs)}


def fused_kernels(d: DerivedElementwise) -> list[Kernel]:
    """The spec's fused roles (``codegen/fusion.py``) as single-loop kernels: the union of the
    parts' outputs under one CSE. A part that reads the saved output y next to the forward
    part reads the forward expression instead (y is computed in the same loop, and the CSE
    evaluates it once)."""
    by_role = {k.role: k for k in d.kernels}
    out = []
    for role, parts in fused_roles(list(by_role), ["x"], []).items():
        ks = [by_role[r] for r in parts]
        fwd = dict(by_role["forward"].outputs)["y"] if "forward" in parts else None
        outputs = []
        for k in ks:
            outputs += [(o, e if fwd is None or k.role == "forward" else e.subs(Y, fwd)) for o, e in k.outputs]
        used = set().union(*(e.free_symbols for _, e in outputs))
        inputs = [a for a in dict.fromkeys(a for k in ks for a in k.inputs) if sp.Symbol(a) in used]
        scalars = list(dict.fromkeys(s for k in ks for s in k.scalars))
        out.append(Kernel(name=kernel_name(d.spec.name, role), inputs=inputs, scalars=scalars,
                          outputs=outputs, role=role))
    return out


def elementwise_manifest(derived: list[DerivedElementwise], extra: list[tuple[Kernel, dict]] = (),
                         contexts: list[list[dict]] | None = None, kinds: dict | None = None) -> dict:
    """Manifest entries: one per spec (its kernels by role, fused roles included), one per
    extra kernel (``update``). ``contexts``: each spec's kernel contexts, when already made.
    ``kinds``: what a spec is for, by name, when not an activation (``mask``, ``penalty``):
    the activation registry lists only activations."""
    table = {}
    kinds = kinds or {}
    if contexts is None:
        contexts = [[kernel_context(k) for k in d.kernels + fused_kernels(d)] for d in derived]
    for d, ctxs in zip(derived, contexts):
        roles = {ctx["role"]: elementwise_role(ctx) for ctx in ctxs}
        table[d.spec.name] = spec_entry("elementwise", d.spec.name, d.spec.hash, ["x"], [], "y",
                                        [p for p, _ in d.spec.params], roles)
        table[d.spec.name]["defaults"] = {p: float(v) for p, v in d.spec.params}
        if d.spec.name in kinds:
            table[d.spec.name]["kind"] = kinds[d.spec.name]
    for k, ctx in extra:
        table[k.name] = spec_entry("elementwise", k.name, _kernel_hash(k), [], [], "", list(k.scalars),
                                   {"update": elementwise_role(ctx)})
    return table


def render_elementwise_module(module: str, derived: list[DerivedElementwise],
                              extra_kernels: list[Kernel] = (), doc: str = "", kinds: dict | None = None) -> str:
    contexts = [[kernel_context(k) for k in d.kernels + fused_kernels(d)] for d in derived]
    kernels = [ctx for ctxs in contexts for ctx in ctxs]
    extra = [(k, kernel_context(k)) for k in extra_kernels]
    kernels += [ctx for _, ctx in extra]
    specs = [{"name": d.spec.name, "hash": d.spec.hash} for d in derived] + \
            [{"name": k.name, "hash": _kernel_hash(k)} for k in extra_kernels]
    return render("elementwise.pyx.j2", module=module, specs=specs, kernels=kernels,
                  manifest=elementwise_manifest(derived, extra, contexts, kinds),
                  doc=doc or f"Elementwise kernels: {', '.join(s['name'] for s in specs)}.")


def _kernel_hash(k: Kernel) -> str:
    import hashlib
    text = k.name + "|" + "|".join(f"{o}={sp.srepr(e)}" for o, e in k.outputs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
