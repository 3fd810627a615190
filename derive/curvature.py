"""Curvature rules derived from a layer's own pullbacks (SymPy only).

- Becker–LeCun (``bl:<array>``): the pullback with ḡ replaced by the diagonal ``h`` of the
  Hessian w.r.t. the output and every other factor squared — the squared Jacobian entries.
  Valid termwise when each Jacobian entry is a single term, i.e. every summation variable of
  a term is fixed by the output position ḡ is read at (checked). One-hot masks (``selects``)
  are 0/1, so ``M² = M``.
- Per-sample squared parameter pullbacks (``sqvjp:<param>``), for the Gauss–Newton and exact
  diagonals: ``Σ_k Σ_n w[k,n]·(Σ_… S[k,n,…]·A)²`` for factor columns S with signs w. When the
  per-sample pullback is a single product (dense: ``S[k,n,o]·x[n,i]``) the square factors:
  ``Σ_n (Σ_k w S²)[n,o]·x[n,i]²`` — the Becker–LeCun rule at ``h = Σ_k w S²``
  (``mode = "factorized"``); otherwise (conv: a weight is shared over positions) the
  per-sample pullback is formed sample by sample and squared (``mode = "per_sample"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

g_base, h_base, S_base = sp.IndexedBase("g"), sp.IndexedBase("H"), sp.IndexedBase("S")


class CurvatureError(ValueError):
    """A pullback whose Jacobian entries are not single terms (squaring termwise is wrong)."""


def squared_jacobian(expr, masks=()):
    """A pullback ``Σ c·A·ḡ[…]`` turned into Becker–LeCun's diagonal rule ``Σ (c·A)²·h[…]``:
    the incoming gradient replaced by the output-Hessian diagonal H, every other factor
    squared; 0/1 masks stay unsquared."""
    if isinstance(expr, sp.Add):
        # terms reading ḡ at the same position are one Jacobian entry: (c₁ + c₂)², not c₁² + c₂²
        by_read, rest = {}, []
        for term in expr.args:
            reads = [f for f in sp.Mul.make_args(term) if isinstance(f, sp.Indexed) and f.base == g_base]
            if len(reads) == 1 and not isinstance(term, sp.Sum):
                by_read.setdefault(reads[0], []).append(term / reads[0])
            else:
                rest.append(term)
        out = [squared_jacobian(term, masks) for term in rest]
        for read, coeffs in by_read.items():
            if len(coeffs) == 1:
                out.append(squared_jacobian(coeffs[0] * read, masks))
            elif any(str(a.base) in masks for c in coeffs for a in c.atoms(sp.Indexed)):
                raise CurvatureError(f"a Jacobian entry {sp.Add(*coeffs)} mixes a 0/1 mask with other terms")
            else:
                out.append(sp.expand(sp.Add(*coeffs) ** 2 * h_base[read.indices]))
        return sp.Add(*out)
    if isinstance(expr, sp.Sum):
        return sp.Sum(squared_jacobian(expr.function, masks), *expr.limits)
    if isinstance(expr, sp.Piecewise):
        return sp.Piecewise(*[(squared_jacobian(e, masks), c) for e, c in expr.args])
    if isinstance(expr, sp.Indexed) and expr.base == g_base:
        return h_base[expr.indices]
    if isinstance(expr, sp.Mul):
        reads = [a for a in expr.args if isinstance(a, sp.Indexed) and a.base == g_base]
        if len(reads) == 1:
            rest = [a for a in expr.args if a is not reads[0]]
            sq = sp.Mul(*[a if isinstance(a, sp.Indexed) and str(a.base) in masks else a ** 2 for a in rest])
            return sq * h_base[reads[0].indices]
        return sp.Mul(*[squared_jacobian(a, masks) for a in expr.args])
    return expr


def check_single_terms(expr, name: str):
    """Every summation variable of every term appears in the indices ḡ is read at, and a sum
    does not sit beside other terms (they could read ḡ at a position the sum covers, and the
    Jacobian entry would be their sum: squaring termwise would drop the cross terms)."""
    terms = sp.Add.make_args(sp.expand(expr))
    if len(terms) > 1 and any(isinstance(t, sp.Sum) for t in terms):
        raise CurvatureError(f"{name}: a sum beside other terms in {expr}: a Jacobian entry may be several "
                             f"terms, so squaring termwise would be wrong")
    reads = {a for t in terms for a in sp.Mul.make_args(t) if isinstance(a, sp.Indexed) and a.base == g_base}
    if len(reads) > 1:   # g[n,o,p] and g[n,p,o] coincide on the diagonal: one entry, two terms
        raise CurvatureError(f"{name}: terms read ḡ at {sorted(map(str, reads))}, positions that may coincide: "
                             f"a Jacobian entry may be several terms, so squaring termwise would be wrong")
    for t in terms:
        sums = [lim[0] for lim in t.limits] if isinstance(t, sp.Sum) else []
        body = t.function if isinstance(t, sp.Sum) else t
        reads = [a for a in body.atoms(sp.Indexed) if a.base == g_base]
        if len(reads) != 1:
            raise CurvatureError(f"{name}: term {t} reads ḡ {len(reads)} times; a pullback is linear in ḡ")
        fixed = set().union(*(i.free_symbols for i in reads[0].indices))
        free = [s for s in sums if s not in fixed]
        if free:
            raise CurvatureError(f"{name}: summation variables {free} of {t} are not fixed by the output "
                                 f"position: a Jacobian entry is a sum, so squaring termwise would be wrong")


def per_sample_squared(expr, batch, columns):
    """A parameter pullback ``Σ_{n,…} ḡ[n,…]·A`` as ``Σ_k Σ_n (Σ_… S[k,n,…]·A)²`` (signs w
    omitted): the sample index taken out of the sum, ḡ replaced by factor column k."""
    k, K = columns
    inner, limit_n = [], None
    for t in sp.Add.make_args(expr):
        if isinstance(t, sp.Sum):
            keep = [lim for lim in t.limits if lim[0] != batch]
            limit_n = next((lim for lim in t.limits if lim[0] == batch), limit_n)
            f = t.function.replace(lambda e: isinstance(e, sp.Indexed) and e.base == g_base,
                                   lambda e: S_base[(k,) + tuple(e.indices)])
            inner.append(sp.Sum(f, *keep) if keep else f)
        else:
            inner.append(t)
    if limit_n is None:
        return None
    return sp.Sum(sp.Add(*inner) ** 2, (k, 0, K - 1), limit_n)


@dataclass
class SquaredPullback:
    """How the ``sqvjp:<param>`` kernel computes Σ_k Σ_n w·(per-sample pullback)²."""
    param: str
    mode: str            # "factorized" | "per_sample"
    definition: sp.Expr  # Σ_k Σ_n (…)², for the reader


def squared_pullback_mode(vjp_expr, batch) -> str:
    """``factorized`` when, with the sample fixed, the pullback is one product (no sum left)."""
    for t in sp.Add.make_args(vjp_expr):
        if isinstance(t, sp.Sum) and any(lim[0] != batch for lim in t.limits):
            return "per_sample"
    return "factorized"
