"""Display-only simplification: small expressions rewritten to read better (fewest minus
signs, then narrowest), always checked equal to what the kernels compute and never fed back
to them."""
from __future__ import annotations

import sympy as sp
from sympy.core.mul import _keep_coeff

from .layout import tex_width
from .printer import tex


def _into_sums(e):
    """Factors independent of a sum's indices moved inside it (a canonical form for comparing)."""
    def push(m):
        sums = [f for f in m.args if isinstance(f, sp.Sum)]
        if len(sums) != 1:
            return m
        rest = sp.Mul(*[f for f in m.args if f is not sums[0]])
        return sp.Sum(sp.expand(rest * sums[0].function), *sums[0].limits)
    e = e.replace(lambda x: isinstance(x, sp.Mul) and any(isinstance(f, sp.Sum) for f in x.args), push)
    return e.replace(lambda x: isinstance(x, sp.Sum), lambda x: sp.Sum(sp.expand(x.function), *x.limits))


def _same(a, b) -> bool:
    try:
        return a == b or sp.expand(a - b) == 0 or sp.expand(_into_sums(a) - _into_sums(b)) == 0
    except Exception:  # noqa: BLE001
        return False


def _variants(e) -> list:
    """Equal forms of a product: pairs of sum factors multiplied out, a sign moved into a
    sum factor (−c·(y − 1) → c·(1 − y)), factors independent of a sum's index pulled out."""
    out = [e]
    if isinstance(e, sp.Mul):
        coeff, facs = e.as_coeff_mul()
        facs = list(facs)
        adds = [i for i, f in enumerate(facs) if isinstance(f, sp.Add)]
        for a in range(len(adds)):
            for b in range(a + 1, len(adds)):
                i, j = adds[a], adds[b]
                rest = [f for k, f in enumerate(facs) if k not in (i, j)]
                prod = sp.expand(facs[i] * facs[j])
                if len(sp.Add.make_args(prod)) <= 2:          # (y − 1)(y + 1) → y² − 1 only
                    out.append(_keep_coeff(coeff, sp.Mul(*rest, prod)))
        for cand in list(out):
            c2, f2 = cand.as_coeff_mul()
            f2 = list(f2)
            for i, f in enumerate(f2):
                if isinstance(f, sp.Add):
                    out.append(_keep_coeff(-c2, sp.Mul(*f2[:i], -f, *f2[i + 1:])))
    if isinstance(e, sp.Sum) and isinstance(e.function, sp.Mul):
        bound = {lim[0] for lim in e.limits}
        free = [f for f in e.function.args if not (f.free_symbols & bound)]
        if free:
            inner = sp.Mul(*[f for f in e.function.args if f.free_symbols & bound])
            out.insert(0, sp.Mul(*free) * sp.Sum(inner, *e.limits))
    return out


def _score(e) -> tuple:
    t = tex(e)
    return (t.count("-"), tex_width(t))


def display_form(expr):
    """A form of ``expr`` that reads better (fewest minus signs, then narrowest): sign moves,
    factors multiplied out or pulled out of sums, applied per term. Display only: the result is
    checked equal to ``expr`` and the kernels never see it."""
    if not isinstance(expr, sp.Expr) or expr.is_Atom:
        return expr
    if isinstance(expr, sp.Add):
        new = sp.Add(*[display_form(t) for t in expr.args])
        cands = [new if _same(new, expr) else expr]
        whole = _try_factor(expr)           # a common factor pulled out: 2a − 2t → 2(a − t)
        if whole is not None and not isinstance(whole, sp.Add):
            cands += [c for c in _variants(whole) if _same(c, expr)]
        return min(cands, key=lambda c: (*_score(c), len(sp.Add.make_args(c))))   # ties: the product
    cands = []
    for base in [expr] + [c for c in (_try_factor(expr),) if c is not None]:
        cands += _variants(base)
    good = [c for c in cands if _same(c, expr)]
    return min(good, key=_score)


def _try_factor(e):
    if e.has(sp.Sum, sp.Piecewise, sp.Indexed) or sp.count_ops(e) > 30:
        return None
    try:
        return sp.factor(e)
    except Exception:  # noqa: BLE001
        return None
