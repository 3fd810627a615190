"""Composite kernel family: fused group-reduction + elementwise kernels for composite specs.

Element arrays are flat views of an (A, C, B) array whose group index is the middle axis C
(BatchNorm2D: (N, C, H·W); BatchNorm1D: (N, C, 1); Softmax: (1, N, K)). Every kernel runs,
per group: its passes (each accumulates group sums in double over the A·B elements of the
group, then computes the group values that follow, in double too), its group outputs, then
one elementwise pass writing the element outputs. Groups are split across OpenMP threads.
"""
from __future__ import annotations

import sympy as sp

from ..derive.composite import TAYLOR_ORDER, M, DerivedComposite
from .config import DTYPES
from .manifest import spec_entry
from .printer import print_expr
from .render import render

LAYOUT = ["A", "C", "B"]


#: independent partial sums per group reduction (codegen/templates/composite.pyx.j2): eight
#: float32 elements fill an AVX2 load, which GCC then vectorizes into two registers of four
#: double sums (at four lanes it found no vector type for the float loads and stayed scalar)
SUM_LANES = 8


def _cse(exprs: list, prefix: str, exclude=()):
    repl, reduced = sp.cse(exprs, symbols=sp.numbered_symbols(prefix, exclude=set(exclude)), order="canonical")
    return repl, reduced


def _body(ct: str, elem_in, passes, group_out, elem_out) -> dict:
    """Printed statements for one C type. ``passes``: [(sums, after)] with sums
    [(name, kind, expr)] and after [(name, expr)]."""
    P = lambda e: print_expr(e, ct)  # noqa: E731
    # per-group values in double whatever the element type: a float32 group's variance may
    # exceed float32 (inputs of 1e20: 1e40) while its 1/sqrt stays representable
    G = lambda e: print_expr(e, "double")  # noqa: E731
    printed = []
    group_locals = []
    elem_locals = list(elem_in)
    for k, (sums, after) in enumerate(passes):
        repl, reduced = _cse([e for _, _, e in sums], f"_t{k}_")
        elem_locals += [str(s) for s, _ in repl]
        printed.append({"temps": [(str(s), P(v)) for s, v in repl],
                        "sums": [(str(n), kind, P(r)) for (n, kind, _), r in zip(sums, reduced)],
                        "after": [(str(n), G(e)) for n, e in after]})
        group_locals += [str(n) for n, _, _ in sums] + [str(n) for n, _ in after]
    hoisted, outs = hoist_group_parts([e for _, e in elem_out], set(map(str, elem_in)))
    # a group value may read earlier ones (a + b summed for a·y + b·y): written out in the
    # originals before the shared parts are found, so every temporary reads only what the
    # passes computed (a temporary of two values printed before them would read stale ones)
    env = {}
    for n, e in hoisted:
        env[n] = e.xreplace(env)
    taken = set().union(*[e.free_symbols for e in env.values()], *[sp.sympify(e).free_symbols for _, e in elem_out])
    hrepl, hreduced = _cse(list(env.values()), "_hc", exclude=taken)
    hoisted = [(str(s), G(v)) for s, v in hrepl] + [(str(n), G(e)) for n, e in zip(env, hreduced)]
    group_locals += [n for n, _ in hoisted]
    repl, reduced = _cse(outs, "_u")
    elem_locals += [str(s) for s, _ in repl]
    final = {"temps": [(str(s), P(v)) for s, v in repl],
             "results": [(n, P(r)) for (n, _), r in zip(elem_out, reduced)]}
    return {"passes": printed, "final": final, "group_out": [(n, G(e)) for n, e in group_out],
            "hoisted": hoisted,
            "group_locals": list(dict.fromkeys(group_locals)), "elem_locals": list(dict.fromkeys(elem_locals))}


def hoist_group_parts(exprs: list, elem_names: set) -> tuple[list, list]:
    """The elementwise outputs with every part that does not depend on an element input
    taken out as a per-group value: ``(group values [(symbol, expr)], rewritten outputs)``.
    In each sum or product the terms or factors free of element inputs are combined into
    one group value (a normalisation's order-2 Taylor pullback: ~150 operations per element
    became ~20, the rest once per group); nothing is expanded or reordered beyond that, so a
    constant group still normalises to exactly 0."""
    defs: dict = {}
    exprs = [sp.sympify(e) for e in exprs]
    names = sp.numbered_symbols("_h", exclude=set().union(*[e.free_symbols for e in exprs]))

    def elem(e) -> bool:
        return any(s.name in elem_names for s in e.free_symbols)

    def name(e):
        if not isinstance(e, sp.Expr) or e.is_Atom or \
                (e.is_Mul and len(e.args) == 2 and e.args[0] == -1 and e.args[1].is_Atom):
            return e        # conditions stay where they are; atoms and negated atoms are free
        if e not in defs:
            defs[e] = next(names)
        return defs[e]

    def walk(e):
        if not elem(e):
            return name(e)
        if e.is_Add or e.is_Mul:
            parts = [walk(a) for a in e.args if elem(a)]
            if e.is_Add:
                parts = collect(parts)
            rest = [a for a in e.args if not elem(a)]
            if rest:
                parts.insert(0, name(e.func(*rest)))
            return e.func(*parts, evaluate=False)
        if e.is_Atom or not e.args:
            return e
        return e.func(*[walk(a) if elem(a) else name(a) for a in e.args])

    def collect(terms):
        """Terms with the same element part summed into one: a·y + b·y → (a + b)·y."""
        by = {}
        for t in terms:
            g = [a for a in sp.Mul.make_args(t) if not elem(a)]
            by.setdefault(sp.Mul(*[a for a in sp.Mul.make_args(t) if elem(a)]), []).append((t, g))
        out = []
        for e, ts in by.items():
            if len(ts) == 1:
                out.append(ts[0][0])
            else:
                out.append(sp.Mul(name(sp.Add(*[sp.Mul(*g) for _, g in ts])), e, evaluate=False))
        return out

    outs = [walk(e) for e in exprs]
    return [(s, e) for e, s in defs.items()], outs


def _kernel(name: str, role: str, elem_in, group_in, scalars, passes, group_out, elem_out, doc) -> dict:
    bodies = [(ct, sfx, _body(ct, elem_in, passes, group_out, elem_out)) for ct, sfx, _ in DTYPES]
    return {"name": name, "role": role, "elem_in": list(elem_in), "group_in": list(group_in),
            "elem_out": [n for n, _ in elem_out], "group_out": [n for n, _ in group_out],
            "scalars": list(scalars), "bodies": bodies, "doc": doc}


def composite_kernels(d: DerivedComposite, taylor_order: int = TAYLOR_ORDER) -> list[dict]:
    spec = d.spec
    scalars = [s.name for s in d.scalars]
    f = d.forward
    passes = []
    if f.before:
        passes.append(([], f.before))
    stages = list(f.passes)
    for k, (sym, kind, expr, after) in enumerate(stages):
        sums = [(sym, "max" if kind == "max" else "sum", expr)]
        fix = []
        prev = stages[k - 1] if k else None
        if prev is not None and prev[1] == "mean" and kind in ("sum", "mean"):
            # the previous mean, corrected in this pass (no extra pass over the data): m += Σ(e − m)/M
            # makes a constant group's mean exact, so its centred values are exactly 0
            corr = sp.Symbol(f"_corr_{prev[0]}")
            sums.append((corr, "sum", prev[2] - prev[0]))
            fix = [(prev[0], prev[0] + corr / M)]
        passes.append((sums, fix + ([(sym, sym / M)] if kind == "mean" else []) + after))
    kernels = [_kernel(f"{spec.name}_forward", "forward", f.elem_in, f.group_in, scalars, passes,
                       f.group_out, f.elem_out, f"{spec.doc}: forward (stages in order)")]
    roles = dict(d.role_kernels)
    if d.taylor_able:   # input derivatives (runtime/taylor.py): the Taylor roles and their pullbacks
        roles.update(d.taylor_kernels(taylor_order))
    for role, rk in roles.items():
        rpasses = [([(s, "sum", e) for s, e in rk.sums], [])] if rk.sums else []
        kernels.append(_kernel(f"{spec.name}_{role.replace(':', '_')}", role, rk.elem_in, rk.group_in, scalars, rpasses,
                               rk.group_out, rk.elem_out,
                               f"{spec.doc}: {role} ({', '.join(n for n, _ in rk.elem_out + rk.group_out)})"))
    return kernels


def composite_role(d: DerivedComposite, k: dict) -> dict:
    arrays = k["elem_in"] + k["group_in"]
    outs = k["elem_out"] + k["group_out"]
    return {"kernel": k["name"], "call": arrays + outs, "kwargs": k["scalars"] + LAYOUT,
            "arrays": arrays, "optional": [],
            "outputs": [{"name": o, "like": d.x.name, "dtype": "float"} for o in k["elem_out"]]
            + [{"name": o, "like": o.split("_", 1)[1] if o.startswith(("grad_", "Rgrad_")) else "group",
                "dtype": "float"} for o in k["group_out"]],
            "doc": k["doc"],
            "binding": {"family": "composite", "elem": k["elem_in"] + k["elem_out"],
                        "group": k["group_in"] + k["group_out"], "scalars": k["scalars"]}}


def render_composite_module(module: str, derived: list[DerivedComposite], doc: str = "",
                            taylor_order: int = TAYLOR_ORDER) -> str:
    kernels, table = [], {}
    for d in derived:
        ks = composite_kernels(d, taylor_order)
        kernels += ks
        spec = d.spec
        table[spec.name] = spec_entry(
            "composite", spec.name, spec.hash, [d.x.name], [p.name for p in spec.params],
            spec.output.name, [s.name for s in d.scalars], {k["role"]: composite_role(d, k) for k in ks})
        table[spec.name]["defaults"] = {s: float(v) for s, v in spec.scalars}
        table[spec.name]["constants"] = [c.name for c in spec.constants]
        table[spec.name]["saved"] = [s.name for s in spec.saved]
        table[spec.name]["stats"] = [s.name for s in spec.stats]
    specs = [{"name": d.spec.name, "hash": d.spec.hash} for d in derived]
    return render("composite.pyx.j2", module=module, specs=specs, kernels=kernels, manifest=table, lanes=SUM_LANES,
                  doc=doc or f"Composite kernels (group reductions + elementwise stages): "
                             f"{', '.join(s['name'] for s in specs)}.")
