"""Taylor-mode kernel family: the roles of :mod:`derive.taylor` as blocked, typed loops.

A role has point arrays (one value per element) and per-direction arrays (d values per
element, direction-major: element e of direction k at ``k·stride + e``). Every kernel walks
its elements in blocks of ``_B`` and, per block, in contiguous loops the C compiler
vectorizes:

1. point loop: the role's CSE temporaries that need no direction sum, the point outputs that
   need none, and the per-element coefficients of every direction polynomial (buffered);
2. direction loop (k outer, elements inner): the sums ``dsum(·)`` accumulated from the
   buffered coefficients and the per-direction inputs;
3. point loop: what needs the sums (``L_y = f′·L + f″·Σ_k J_k²``);
4. direction loop: the per-direction outputs, polynomials in the per-direction inputs with
   buffered coefficients.

Per-direction expressions are split into monomials of the per-direction symbols with point
coefficients (every Taylor role is a polynomial in them), so f′, f″, … are evaluated once
per element, not once per direction.
"""
from __future__ import annotations

import sympy as sp

from ..derive.elementwise import Y
from ..derive.taylor import DerivedTaylor, TaylorRole, dsum
from .config import DTYPES
from .printer import print_expr
from .render import render

#: elements per block (buffers of _B values per coefficient live on the stack). Measured on the
#: Xeon family 6 model 207 (AVX-512, against the GEMMs of the same sweep): 64 ran the tanh
#: forward-Laplacian pair ~20 % faster than 128 and the order-4 pair as fast; 32 slowed the
#: order-4 pullback by a quarter, 512 more than doubled it (its buffers leave L1)
BLOCK = 64


def kernel_name(spec: str, role: str) -> str:
    return f"{spec}_" + role.replace("vjp:", "vjp_").replace("taylor:", "taylor").replace(":", "_").replace(",", "_")


def _split(expr: sp.Basic, gens: list[sp.Symbol]) -> list[tuple[sp.Basic, sp.Basic]]:
    """``[(monomial, coefficient)]`` of ``expr`` as a polynomial in ``gens`` (coefficients
    free of ``gens``), in a deterministic order."""
    expr = sp.sympify(expr)
    if expr == 0:
        return []
    terms: dict = {}
    for term in sp.Add.make_args(sp.expand(expr, deep=False, power_base=False, power_exp=False, log=False)):
        mono = sp.Mul(*[f for f in sp.Mul.make_args(term) if f.has(*gens)])
        coef = sp.Mul(*[f for f in sp.Mul.make_args(term) if not f.has(*gens)])
        if mono.has(*gens) and not sp.Poly(mono, *gens).is_monomial:
            # a factor mixes direction symbols with others (not a plain product): expand it
            return _split_poly(expr, gens)
        terms[mono] = terms.get(mono, sp.S.Zero) + coef
    out = [(m, sp.factor_terms(c)) for m, c in terms.items()]
    return sorted([(m, c) for m, c in out if c != 0], key=lambda mc: sp.default_sort_key(mc[0]))


def _split_poly(expr, gens):
    p = sp.Poly(expr, *gens)
    out = [(sp.Mul(*[g ** e for g, e in zip(gens, mon)]), c) for mon, c in p.terms()]
    return sorted([(m, sp.factor_terms(c)) for m, c in out if c != 0], key=lambda mc: sp.default_sort_key(mc[0]))


def kernel_context(spec_name: str, r: TaylorRole, forward: sp.Basic) -> dict:
    """The stages of one role's kernel, printed for float32 and float64."""
    forward_role = any(o == "y" for o, _ in r.point_outputs)
    pts = list(r.point_outputs)
    dirs = list(r.dir_outputs)
    if forward_role:   # other outputs read y: computed in the same loop, shared by the CSE
        pts = [(o, e if o == "y" else e.subs(Y, forward)) for o, e in pts]
        dirs = [(o, e.subs(Y, forward)) for o, e in dirs]
    exprs = [e for _, e in pts + dirs]
    used = set().union(*(e.free_symbols for e in exprs)) | set().union(*(
        s.args[0].free_symbols for e in exprs for s in e.atoms(dsum)))
    point_in = [a for a in dict.fromkeys(["x"] + ([] if forward_role else ["y"]) + r.point_inputs)
                if sp.Symbol(a) in used]
    dir_in = [a for a in r.dir_inputs if sp.Symbol(a) in used]
    gens = [sp.Symbol(a) for a in dir_in]

    # sums -> accumulators
    sums = sorted({s for e in exprs for s in e.atoms(dsum)}, key=sp.default_sort_key)
    acc = [sp.Symbol(f"_S{i}") for i in range(len(sums))]
    to_acc = dict(zip(sums, acc))
    pts = [(o, e.xreplace(to_acc)) for o, e in pts]
    dirs = [(o, e.xreplace(to_acc)) for o, e in dirs]
    sum_terms = [_split(s.args[0], gens) for s in sums]
    dir_terms = [_split(e, gens) for _, e in dirs]

    # every point quantity under one CSE: point outputs, coefficients of sums and outputs
    items = [("out", o, e) for o, e in pts]
    coef_sym = {}
    for kind, terms_list in (("sumc", sum_terms), ("dirc", dir_terms)):
        for i, terms in enumerate(terms_list):
            for j, (m, c) in enumerate(terms):
                if c.is_number:
                    continue
                name = f"_c{kind[0]}{i}_{j}"
                coef_sym[(kind, i, j)] = name
                items.append(("coef", name, c))
    repl, reduced = sp.cse([e for _, _, e in items], symbols=sp.numbered_symbols("_t"), optimizations="basic") \
        if items else ([], [])
    acc_set = set(acc)

    def needs_sums(e, late):
        return bool(e.free_symbols & (acc_set | late))

    late = set()
    for s, v in repl:
        if needs_sums(v, late):
            late.add(s)
    early_temps = [(s, v) for s, v in repl if s not in late]
    late_temps = [(s, v) for s, v in repl if s in late]
    early_res, late_res = [], []
    for (kind, name, _), e in zip(items, reduced):
        (late_res if needs_sums(e, late) else early_res).append((kind, name, e))
    # temps of stage 1 that stage 3 reads are buffered; point inputs are re-read
    late_reads = set().union(*(v.free_symbols for _, v in late_temps), *(e.free_symbols for _, _, e in late_res)) \
        if (late_temps or late_res) else set()
    carried = [str(s) for s, _ in early_temps if s in late_reads]
    late_inputs = [a for a in point_in if sp.Symbol(a) in late_reads]

    def coef(kind, i, j, c):
        return sp.Symbol(coef_sym[(kind, i, j)]) if (kind, i, j) in coef_sym else c

    bodies = []
    for ctype, sfx, _ in DTYPES:
        P = lambda e: print_expr(e, ctype)  # noqa: E731
        in_loop = {n: f"{n}_b[_i]" for n in coef_sym.values()}
        PB = lambda e: print_expr(e, ctype, in_loop)  # noqa: E731

        def poly(terms, kind, i):
            parts = [f"{PB(coef(kind, i, j, c))}*{P(m)}" if m != 1 else PB(coef(kind, i, j, c))
                     for j, (m, c) in enumerate(terms)]
            return " + ".join(f"({p})" for p in parts) if parts else P(sp.S.Zero)
        early = [(str(s), P(v)) for s, v in early_temps]
        early_out = [(k, n, P(e)) for k, n, e in early_res]
        late_t = [(str(s), P(v)) for s, v in late_temps]
        late_out = [(k, n, P(e)) for k, n, e in late_res]
        sum_lines = [(f"_S{i}", poly(t, "sumc", i)) for i, t in enumerate(sum_terms)]
        dir_lines = [(o, poly(t, "dirc", i)) for i, ((o, _), t) in enumerate(zip(dirs, dir_terms))]
        bodies.append({"ctype": ctype, "sfx": sfx, "early": early, "early_out": early_out,
                       "late": late_t, "late_out": late_out, "sums": sum_lines, "dir_outs": dir_lines,
                       "locals": sorted(set(point_in) | {str(s) for s, _ in repl} | set(dir_in)
                                        | {str(a) for a in acc})})
    buffers = sorted(set(coef_sym.values()) | {str(a) for a in acc} | set(carried))
    doc = "; ".join(f"{o} = {e}" for o, e in r.point_outputs + r.dir_outputs)
    return {"name": kernel_name(spec_name, r.role), "role": r.role, "point_in": point_in, "dir_in": dir_in,
            "point_out": [o for o, _ in pts], "dir_out": [o for o, _ in dirs], "scalars": list(r.scalars),
            "bodies": bodies, "buffers": buffers, "carried": carried, "late_inputs": late_inputs,
            "sum_names": [str(a) for a in acc], "has_late": bool(late_temps or late_res), "doc": doc}


def taylor_manifest(derived: list[DerivedTaylor], contexts: list[list[dict]]) -> dict:
    """Per spec: its hash, parameter defaults and, per role, the kernel and its arguments
    (point inputs, per-direction inputs, point outputs, per-direction outputs, scalars: the
    call order)."""
    table = {}
    for d, ctxs in zip(derived, contexts):
        roles = {}
        for c in ctxs:
            roles[c["role"]] = {"kernel": c["name"], "point_inputs": c["point_in"], "dir_inputs": c["dir_in"],
                                "point_outputs": c["point_out"], "dir_outputs": c["dir_out"],
                                "scalars": c["scalars"],
                                "call": c["point_in"] + c["dir_in"] + c["point_out"] + c["dir_out"] + c["scalars"],
                                "doc": c["doc"]}
        table[d.name] = {"family": "taylor", "hash": d.hash, "defaults": {p: float(v) for p, v in d.spec.params},
                         "derivatives": [str(c.chosen) for c in d.derivatives], "roles": roles}
    return table


def render_taylor_module(module: str, derived: list[DerivedTaylor]) -> str:
    contexts = [[kernel_context(d.name, r, d.base.forward.chosen) for r in d.roles] for d in derived]
    kernels = [c for cs in contexts for c in cs]
    specs = [{"name": d.name, "hash": d.hash} for d in derived]
    return render("taylor.pyx.j2", module=module, specs=specs, kernels=kernels, block=BLOCK,
                  manifest=taylor_manifest(derived, contexts),
                  doc="Taylor-mode kernels (derivatives with respect to the input): "
                      + ", ".join(d.name for d in derived) + ".")
