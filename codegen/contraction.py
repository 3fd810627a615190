"""Contraction kernel family: index expressions lowered to BLAS GEMM and simple loops.

Each term of a derived kernel ``out[idx] = Σ terms`` is recognized as one of
- ``gemm``: Σ_k c·A[·,k]·B[k,·] (any index order -> transpose flags), via cython_blas;
- ``loop``: a single array broadcast, copied or reduced into ``out`` (bias terms).
Anything else is refused with the term named, rather than lowered wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass

import dataclasses

import sympy as sp

from ..derive.indexed import ContractionKernel, DerivedContraction
from .config import DTYPES
from .manifest import canonical_arrays, contraction_role, spec_entry
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
    return {"kind": "loop", "A": str(A.base), "a_idx": [str(i) for i in A.indices],
            "order": [str(i) for i in order], "alpha": t.coeff, "arrays": [str(A.base)]}


def lower(k: ContractionKernel) -> list[dict]:
    ops = []
    for t in terms_of(k.expr):
        op = _gemm_op(k, t) or _loop_op(k, t)
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
    canon = list(spec.arrays) + ["g", "H"]
    canon = canon + [a + "_sq" for a in canon] + ["R" + a for a in canon]
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
    return {"name": k.name, "role": k.role, "arrays": used, "def_arrays": def_arrays(used, squares),
            "squares": sorted(squares.items()), "out": k.out, "shapes": shapes, "ops": ops,
            "calls_blas": any(op["kind"] == "gemm" for op in ops),
            "optional": optional, "extents": extents, "any_assign": any(o["assign"] for o in ops),
            "doc": f"{k.out}[{', '.join(map(str, k.out_indices))}] = {k.expr}"}


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
                     role_fn, sqvjps: list[list[dict]]) -> dict:
    """Manifest entries of indexed specs: ``role_fn(ctx, canonical)`` -> one role entry."""
    table = {}
    for d, ctxs, sqs in zip(derived, contexts, sqvjps):
        s = d.spec
        canonical = canonical_arrays(s)
        roles = {ctx["role"]: role_fn(ctx, canonical) for ctx in ctxs}
        roles.update({f["role"]: sqvjp_role(f, f["param"]) for f in sqs})
        table[s.name] = spec_entry(family, s.name, s.hash, list(s.inputs), list(s.params), s.output,
                                   [str(x) for x in s.scalars], roles, canonical)
    return table


def render_contraction_module(module: str, derived: list[DerivedContraction]) -> str:
    contexts = [[kernel_context(d, k) for k in d.kernels] for d in derived]
    kernels = [ctx for ctxs in contexts for ctx in ctxs]
    sqs = [sqvjp_contexts(d, ctxs, []) for d, ctxs in zip(derived, contexts)]
    specs = [{"name": d.spec.name, "hash": d.spec.hash} for d in derived]
    return render("contraction.pyx.j2", module=module, specs=specs, kernels=kernels,
                  sqvjps=[f for fs in sqs for f in fs],
                  manifest=indexed_manifest("contraction", derived, contexts, contraction_role, sqs),
                  dtypes=DTYPES, doc="Contraction kernels (GEMM-lowered): "
                  + ", ".join(s["name"] for s in specs) + ".")
