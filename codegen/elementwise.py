"""Elementwise kernel family: CSE'd scalar bodies in a typed loop, float32 and float64."""
from __future__ import annotations

import sympy as sp

from ..derive.elementwise import DerivedElementwise, Kernel
from .config import DTYPES
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


def elementwise_manifest(derived: list[DerivedElementwise], extra: list[tuple[Kernel, dict]] = ()) -> dict:
    """Manifest entries: one per spec (its kernels by role), one per extra kernel (``update``)."""
    table = {}
    for d in derived:
        roles = {k.role: elementwise_role(kernel_context(k)) for k in d.kernels}
        table[d.spec.name] = spec_entry("elementwise", d.spec.name, d.spec.hash, ["x"], [], "y",
                                        [p for p, _ in d.spec.params], roles)
        table[d.spec.name]["defaults"] = {p: float(v) for p, v in d.spec.params}
    for k, ctx in extra:
        table[k.name] = spec_entry("elementwise", k.name, _kernel_hash(k), [], [], "", list(k.scalars),
                                   {"update": elementwise_role(ctx)})
    return table


def render_elementwise_module(module: str, derived: list[DerivedElementwise],
                              extra_kernels: list[Kernel] = (), doc: str = "") -> str:
    kernels = []
    for d in derived:
        for k in d.kernels:
            kernels.append(kernel_context(k))
    extra = [(k, kernel_context(k)) for k in extra_kernels]
    kernels += [ctx for _, ctx in extra]
    specs = [{"name": d.spec.name, "hash": d.spec.hash} for d in derived] + \
            [{"name": k.name, "hash": _kernel_hash(k)} for k in extra_kernels]
    return render("elementwise.pyx.j2", module=module, specs=specs, kernels=kernels,
                  manifest=elementwise_manifest(derived, extra),
                  doc=doc or f"Elementwise kernels: {', '.join(s['name'] for s in specs)}.")


def _kernel_hash(k: Kernel) -> str:
    import hashlib
    text = k.name + "|" + "|".join(f"{o}={sp.srepr(e)}" for o, e in k.outputs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
