"""Contraction kernel family: index expressions lowered to BLAS GEMM and simple loops.

Each term of a derived kernel ``out[idx] = Σ terms`` is recognized as one of
- ``gemm``: Σ_k c·A[·,k]·B[k,·] (any index order -> transpose flags), via cython_blas;
- ``loop``: a single array broadcast, copied or reduced into ``out`` (bias terms);
- ``product``: a product of several arrays, broadcast and possibly reduced into ``out``
  (``x[n,o]·s[o]``, its pullback ``Σ_n g[n,o]·x[n,o]``), one serial loop nest.
Anything else is refused with the term named, rather than lowered wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass

import dataclasses

import sympy as sp

from ..derive.indexed import ContractionKernel, DerivedContraction
from .config import DTYPES
from .fusion import fused_roles, kernel_name
from .manifest import canonical_arrays, contraction_role, indexed_binding, spec_entry
from .printer import print_expr
from .render import render


class LoweringError(ValueError):
    pass


@dataclass
class Term:
    coeff: sp.Expr
    factors: list          # list[sp.Indexed]
    sums: list             # summation index symbols


def terms_of(expr: sp.Expr) -> list[Term]:
    out = []
    for t in sp.Add.make_args(expr):
        sums = []
        if isinstance(t, sp.Sum):
            sums = [lim[0] for lim in t.limits]
            t = t.function
        factors = [f for f in sp.Mul.make_args(t) if isinstance(f, sp.Indexed)]
        coeff = sp.Mul(*[f for f in sp.Mul.make_args(t) if not isinstance(f, sp.Indexed)])
        if coeff.has(sp.Indexed) or coeff.free_symbols:
            raise LoweringError(f"term {t} has a non-constant coefficient {coeff}")
        out.append(Term(coeff, factors, sums))
    return out


def _gemm_op(k: ContractionKernel, t: Term) -> dict | None:
    if len(t.factors) != 2 or len(t.sums) != 1 or len(k.out_indices) != 2:
        return None
    (r, c), (s,) = k.out_indices, t.sums
    A, B = t.factors
    if r not in A.indices:
        A, B = B, A
    if r not in A.indices or c not in B.indices or len(A.indices) != 2 or len(B.indices) != 2:
        return None
    if set(A.indices) != {r, s} or set(B.indices) != {s, c}:
        return None
    ta = A.indices == (s, r)
    tb = B.indices == (c, s)
    return {"kind": "gemm", "A": str(A.base), "B": str(B.base), "ta": int(ta), "tb": int(tb),
            "M": str(r), "N": str(c), "K": str(s), "alpha": t.coeff,
            "lda": str(A.indices[1]), "ldb": str(B.indices[1]), "ldc": str(c),
            "arrays": [str(A.base), str(B.base)]}


def _loop_op(k: ContractionKernel, t: Term) -> dict | None:
    if len(t.factors) != 1:
        return None
    (A,) = t.factors
    idx = set(A.indices)
    if not (idx - set(t.sums)) <= set(k.out_indices):
        return None
    # traverse in the larger array's memory order so the innermost loop is contiguous
    big = A.indices if len(A.indices) >= len(k.out_indices) else k.out_indices
    order = list(big) + [i for i in list(k.out_indices) + list(A.indices) if i not in big]
    order = list(dict.fromkeys(order))
    # a reduction over A's trailing (contiguous) indices: summed by a helper with independent
    # partial sums, not one add chain through out[...] in memory
    out_idx = set(k.out_indices)
    tail = []
    for i in reversed(order):
        if i in out_idx or i not in idx:
            break
        tail.insert(0, i)
    if tail and list(A.indices[len(A.indices) - len(tail):]) != tail:
        tail = []
    return {"kind": "loop", "A": str(A.base), "a_idx": [str(i) for i in A.indices],
            "order": [str(i) for i in order], "alpha": t.coeff, "arrays": [str(A.base)],
            "outer": [str(i) for i in order[:len(order) - len(tail)]], "tail": [str(i) for i in tail],
            "a_base": [str(i) if i not in tail else "0" for i in A.indices]}


def _product_op(k: ContractionKernel, t: Term) -> dict | None:
    if len(t.factors) < 2:
        return None
    out_idx, sums = list(k.out_indices), set(t.sums)
    idx = [i for f in t.factors for i in f.indices]
    if any(not isinstance(i, sp.Symbol) for i in idx) or not set(idx) <= set(out_idx) | sums:
        return None
    # the largest array's memory order outermost-to-innermost, so the inner loop is contiguous
    big = max(t.factors, key=lambda f: len(f.indices)).indices
    big = big if len(big) >= len(out_idx) else tuple(out_idx)
    order = list(dict.fromkeys(list(big) + out_idx + [i for i in idx if i not in big]))
    return {"kind": "product", "order": [str(i) for i in order], "alpha": t.coeff,
            "factors": [(str(f.base), [str(i) for i in f.indices]) for f in t.factors],
            "arrays": list(dict.fromkeys(str(f.base) for f in t.factors))}


def _product_loops(ops: list[dict], shapes: dict, extents: list) -> list[str]:
    """Each product op's loops as ``(variable, extent name)``: an index that names no array
    dimension (a summation variable such as ``j`` in ``x[n, j]``, or a renamed ``o'``) runs
    over the extent of the dimension it indexes. Returns the extra loop variables to declare."""
    extra = []
    for op in (o for o in ops if o["kind"] == "product"):
        ident = {v: v if v.isidentifier() else "_" + v.replace("'", "_b") for v in op["order"]}
        loops = []
        for v in op["order"]:
            dim = v if v in extents else next(shapes[f][p] for f, fi in op["factors"] for p, w in enumerate(fi) if w == v)
            loops.append((ident[v], dim))
            if ident[v] not in extents and ident[v] not in extra:
                extra.append(ident[v])
        op["loops"] = loops
        op["factors"] = [(f, [ident[w] for w in fi]) for f, fi in op["factors"]]
    return extra


def _is_pointwise(op: dict, out_idx: list) -> bool:
    """An unguarded term that reads every array at output indices only (no sum): y = γ·x + β."""
    if op["guard"]:
        return False
    if op["kind"] == "product":
        return all(i in out_idx for _, fi in op["factors"] for i in fi)
    return op["kind"] == "loop" and not op["tail"] and set(op["a_idx"]) <= set(out_idx)


def _variants(loops: list, arrays: list) -> list[dict]:
    """A nest's loops and its arrays' ``(indices, dims)``, and, when its innermost extent may be
    1 at run time (LayerNorm's scale and shift sees (rows, channels, 1)), a copy without that
    loop first: there the next loop is the contiguous one, which the compiler vectorizes (the
    general nest runs a one-trip inner loop per element, ~10x slower)."""
    full = {"cond": None, "serial": None, "loops": loops, "arrays": arrays}
    if len(loops) < 2 or not all(i.isidentifier() for idx, _ in arrays for i in idx):
        return [full]
    var, dim = loops[-1]
    dropped = []
    for idx, dims in arrays:
        keep = [(i, d) for i, d in zip(idx, dims) if i != var]
        dropped.append(([i for i, _ in keep], [d for _, d in keep]) if keep else (["0"], ["_"]))
    return [{"cond": f"{dim}_ == 1", "serial": None, "loops": loops[:-1], "arrays": dropped}, full]


def _nest(out: str, loops: list, terms: list, assign: bool, guard: list) -> dict:
    """A loop nest op: ``out[…] (+)= Σ alpha · Π factors`` over ``loops``; ``terms``:
    ``(alpha_c, [(array, indices)])``; dims from the arrays' shapes."""
    return {"kind": "nest", "out": out, "assign": assign, "guard": guard, "terms": terms, "loops": loops}


def _nests(ops: list[dict], shapes: dict, out: str) -> list[dict]:
    """The non-GEMM ops as loop nests: the pointwise ones (no sum, unguarded) merged into one
    pass that writes the output (after the GEMMs, or first and assigning when no GEMM
    assigns: no memset), each other product or tail-less broadcast a nest of its own; a
    reduction over trailing indices stays a ``loop`` (summed by a helper), with a nest for
    the trailing extent 1 in front."""
    out_idx = shapes[out]

    def term(op):
        if op["kind"] == "product":
            return op["alpha_c"], op["factors"], op["loops"]
        return op["alpha_c"], [(op["A"], op["a_idx"])], [(v, v) for v in op["order"]]

    def finish(nest):
        arrays = [(out_idx, out_idx)] + [(fi, shapes[f]) for _, fs in nest["terms"] for f, fi in fs]
        nest["variants"] = []
        for v in _variants(nest["loops"], arrays):
            it = iter(v["arrays"][1:])
            v["lhs"] = v["arrays"][0]
            v["terms"] = [(a, [(f, *next(it)) for f, _ in fs]) for a, fs in nest["terms"]]
            nest["variants"].append(v)
        return nest

    pointwise = [op for op in ops if op["kind"] != "gemm" and _is_pointwise(op, out_idx)]
    rest = []
    for op in ops:
        if op in pointwise:
            continue
        if op["kind"] == "product" or (op["kind"] == "loop" and not op["tail"]):
            a, fs, loops = term(op)
            op = finish(_nest(out, loops, [(a, fs)], False, op["guard"]))
        elif op["kind"] == "loop":
            loops = [(v, v) for v in op["outer"]]
            nest = finish(_nest(out, loops, [(op["alpha_c"], [(op["A"], op["a_base"])])], False,
                                op["guard"]))
            if len(loops) >= 1 and all(i.isidentifier() for i in op["a_idx"]):
                one = " and ".join(f"{t}_ == 1" for t in op["tail"])
                nest["variants"] = [{**nest["variants"][-1], "cond": one}, {"cond": None, "serial": op}]
            else:
                nest["variants"] = [{"cond": None, "serial": op}]
            op = nest
        rest.append(op)
    if not pointwise:
        return rest
    loops = [(v, v) for v in out_idx]
    merged = finish(_nest(out, loops, [term(op)[:2] for op in pointwise], False, []))
    if any(op["assign"] for op in rest):
        at = max(i for i, op in enumerate(rest) if op["kind"] == "gemm") + 1
        return rest[:at] + [merged] + rest[at:]
    merged["assign"] = True
    return [merged] + rest


def lower(k: ContractionKernel) -> list[dict]:
    ops = []
    for t in terms_of(k.expr):
        op = _gemm_op(k, t) or _loop_op(k, t) or _product_op(k, t)
        if op is None:
            raise LoweringError(f"{k.name}: cannot lower term {t.coeff}*{t.factors} summed over {t.sums}")
        ops.append(op)
    ops.sort(key=lambda o: o["kind"] != "gemm")   # a GEMM first can assign (beta = 0)
    for i, op in enumerate(ops):
        op["assign"] = i == 0 and op["kind"] == "gemm"
    return ops


def name_squares(k: ContractionKernel):
    """``A[…]**2`` factors (squared Jacobian entries) read as arrays ``A_sq`` that the
    kernel's wrapper forms once: ``(kernel with A_sq reads, {"A_sq": "A"})``."""
    squares = {}

    def rep(e):
        nm = f"{e.base.base}_sq"
        squares[nm] = str(e.base.base)
        return sp.IndexedBase(nm)[e.base.indices]
    expr = k.expr.replace(lambda e: isinstance(e, sp.Pow) and e.exp == 2 and isinstance(e.base, sp.Indexed), rep)
    return dataclasses.replace(k, expr=expr), squares


def def_arrays(arrays: list, squares: dict) -> list:
    """The wrapper's arguments: squared arrays are passed as themselves."""
    return list(dict.fromkeys(squares.get(a, a) for a in arrays))


def argument_layout(spec, k: ContractionKernel, ops: list[dict]) -> tuple[list, list, dict]:
    """The arrays a kernel reads, in canonical order (spec arrays, then g and h; squared
    arrays; the optional direction arrays R· after, in the same order), which of them are
    optional, and every array's index names (the output's included)."""
    used = list(dict.fromkeys(a for op in ops for a in op["arrays"]))
    rank = {}
    for name, idx in list(spec.arrays.items()) + [("g", spec.out_indices), ("H", spec.out_indices)]:
        rank[name] = rank["R" + name] = rank[name + "_sq"] = idx
    optional = [a for a in used if a.startswith("R")]
    canon = canonical_order(spec)
    arrays = sorted((a for a in used if a not in optional), key=canon.index) + \
        sorted(optional, key=canon.index)
    shapes = {a: [str(i) for i in rank[a]] for a in arrays}
    shapes[k.out] = [str(i) for i in k.out_indices]
    return arrays, optional, shapes


def kernel_context(d: DerivedContraction, k: ContractionKernel) -> dict:
    k, squares = name_squares(k)
    ops = lower(k)
    used, optional, shapes = argument_layout(d.spec, k, ops)
    for op in ops:
        op["alpha_c"] = {ct: print_expr(op["alpha"], ct) for ct, _, _ in DTYPES}
        op["guard"] = [a for a in op["arrays"] if a in optional]
        op["assign"] = op["assign"] and not op["guard"]
    extents = list(dict.fromkeys(i for a in used + [k.out] for i in shapes[a]))
    for op in ops:
        op["out"] = k.out
    loopvars = _product_loops(ops, shapes, extents)
    ops = _nests(ops, shapes, k.out)
    any_assign = any(o["assign"] for o in ops)
    # an output every term of which is optional is written by the first term present (``lazy``:
    # codegen/templates/contraction.pyx.j2), not zeroed up front and accumulated into
    zero = [] if any_assign else [k.out]
    lazy = [o for o in zero if ops and all(op["guard"] for op in ops)]
    return {"name": k.name, "role": k.role, "arrays": used, "def_arrays": def_arrays(used, squares),
            "squares": sorted(squares.items()), "out": k.out, "outs": [k.out], "shapes": shapes, "ops": ops,
            "calls_blas": any(op["kind"] == "gemm" for op in ops), "zero": [o for o in zero if o not in lazy], "lazy": lazy,
            "optional": optional, "extents": extents, "loopvars": loopvars,
            "doc": f"{k.out}[{', '.join(map(str, k.out_indices))}] = {k.expr}"}


def canonical_order(spec) -> list[str]:
    """Argument order of every kernel: spec arrays, g, H, squared arrays, directions."""
    canon = list(spec.arrays) + ["g", "H"]
    return canon + [a + "_sq" for a in canon] + ["R" + a for a in canon]


def fused_parts(spec, ctxs: list[dict], name: str, role: str, parts: list[str]) -> dict:
    """The union of several lowered kernels of one spec (``codegen/fusion.py``): every array
    they read once (directions optional), every output, every op in part order, each op
    writing its own part's output. Shared by the contraction and window families."""
    by_role = {c["role"]: c for c in ctxs}
    ps = [by_role[r] for r in parts]
    if any(p["squares"] for p in ps):
        raise LoweringError(f"{name}: squared-array kernels are not fused")
    canon = canonical_order(spec)
    outs = [o for p in ps for o in p["outs"]]
    produced = set(outs) | {mk for p in ps for mk in p.get("masks_out", [])}
    used = list(dict.fromkeys(a for p in ps for a in p["arrays"]))
    optional = sorted({a for p in ps for a in p["optional"]}, key=canon.index)
    arrays = sorted((a for a in used if a not in optional and a not in produced), key=canon.index) + optional
    shapes = {}
    for p in ps:
        shapes.update(p["shapes"])
    extents = list(dict.fromkeys(i for p in ps for i in p["extents"]))
    ops = []
    for p in ps:
        for op in p["ops"]:
            ops.append({**op, "part": p["role"]})
    return {"name": name, "role": role, "parts": parts, "arrays": arrays, "def_arrays": list(arrays),
            "squares": [], "out": outs[0], "outs": outs, "shapes": shapes, "ops": ops,
            "calls_blas": any(p["calls_blas"] for p in ps), "optional": optional, "extents": extents,
            "loopvars": list(dict.fromkeys(v for p in ps for v in p.get("loopvars", []))),
            "zero": [o for p in ps for o in p["zero"]], "lazy": [o for p in ps for o in p.get("lazy", [])],
            "doc": f"fused {role}: " + "; ".join(p["doc"] for p in ps)}


def fused_contexts(d: DerivedContraction, ctxs: list[dict], fuse) -> list[dict]:
    """Every fused role the spec's kernels allow, built by ``fuse(spec, ctxs, name, role, parts)``."""
    s = d.spec
    by_role = {c["role"]: c for c in ctxs}
    return [fuse(s, ctxs, kernel_name(s.name, role), role, parts)
            for role, parts in fused_roles([c["role"] for c in ctxs], list(s.inputs), list(s.params)).items()
            if not any(by_role[r]["squares"] for r in parts if r in by_role)]   # run unfused instead


def sqvjp_contexts(d: DerivedContraction, ctxs: list[dict], scalars: list) -> list[dict]:
    """The ``sqvjp:<param>`` functions: factorized ones call the Becker–LeCun kernel at
    h = Σ_k w S²; per-sample ones call the parameter's pullback kernel sample by sample."""
    by_role = {c["role"]: c for c in ctxs}
    out = []
    for p, sq in d.sqvjps.items():
        if sq.mode == "factorized":
            base = by_role[f"bl:{p}"]
            arrays = [a for a in base["def_arrays"] if a != "H"]
        else:
            base = by_role[f"vjp:{p}"]
            arrays = [a for a in base["def_arrays"] if a != "g"]
        batch = str(d.spec.out_indices[0])
        batched = [a for a in arrays if base["shapes"].get(a, [None])[0] == batch]
        out.append({"name": f"{d.spec.name}_sqvjp_{p}", "role": f"sqvjp:{p}", "param": p, "mode": sq.mode,
                    "kernel": base["name"], "kernel_out": base["out"], "arrays": arrays, "batched": batched,
                    "out": "s" + p, "scalars": list(scalars) if base.get("scalars") else [],
                    "doc": f"s{p} = {sq.definition} (signs w[k,n] weight each term)"})
    return out


def sqvjp_role(f: dict, param: str) -> dict:
    return {"kernel": f["name"], "call": f["arrays"] + ["S", "w", f["out"]], "kwargs": list(f["scalars"]),
            "arrays": f["arrays"] + ["S", "w"], "optional": [],
            "outputs": [{"name": f["out"], "like": param, "dtype": "float"}]}


def indexed_manifest(family: str, derived: list[DerivedContraction], contexts: list[list[dict]],
                     role_fn, sqvjps: list[list[dict]], fused: list[list[dict]] = ()) -> dict:
    """Manifest entries of indexed specs: ``role_fn(ctx, canonical)`` -> one role entry, for
    single and fused kernels alike."""
    table = {}
    fused = list(fused) or [[] for _ in derived]
    for d, ctxs, sqs, fs in zip(derived, contexts, sqvjps, fused):
        s = d.spec
        canonical = canonical_arrays(s)
        roles = {ctx["role"]: role_fn(ctx, canonical) for ctx in ctxs}
        roles.update({f["role"]: sqvjp_role(f, f["param"]) for f in sqs})
        roles.update({f["role"]: role_fn(f, canonical) for f in fs})
        table[s.name] = spec_entry(family, s.name, s.hash, list(s.inputs), list(s.params), s.output,
                                   [str(x) for x in s.scalars], roles, canonical)
    return table


def _bound_role(ctx: dict, canonical: dict) -> dict:
    """A contraction kernel's manifest role, with what the dispatcher binds."""
    return {**contraction_role(ctx, canonical), "binding": indexed_binding(ctx)}


def render_contraction_module(module: str, derived: list[DerivedContraction]) -> str:
    contexts = [[kernel_context(d, k) for k in d.kernels] for d in derived]
    fused = [fused_contexts(d, ctxs, fused_parts) for d, ctxs in zip(derived, contexts)]
    kernels = [ctx for ctxs in contexts + fused for ctx in ctxs]
    sqs = [sqvjp_contexts(d, ctxs, []) for d, ctxs in zip(derived, contexts)]
    specs = [{"name": d.spec.name, "hash": d.spec.hash} for d in derived]
    return render("contraction.pyx.j2", module=module, specs=specs, kernels=kernels,
                  sqvjps=[f for fs in sqs for f in fs],
                  manifest=indexed_manifest("contraction", derived, contexts, _bound_role, sqs, fused),
                  dtypes=DTYPES, doc="Contraction kernels (GEMM-lowered): "
                  + ", ".join(s["name"] for s in specs) + ".")
