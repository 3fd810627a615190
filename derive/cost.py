"""Operation counts with a simple cost model (what a kernel pays per element).

``sympy.count_ops`` counts a division like an addition and ``exp`` like a multiply;
kernels care about the difference, so simplification decisions use these weights.
"""
from __future__ import annotations

import sympy as sp

#: cost of one call, in "flops": transcendental calls dominate elementwise kernels
FUNCTION_COST = {"exp": 10, "log": 10, "tanh": 12, "erf": 12, "erfc": 12, "log1p": 10,
                 "expm1": 10, "sqrt": 4, "sin": 10, "cos": 10, "atan": 12,
                 "Abs": 1, "Max": 1, "Min": 1, "sign": 1, "finite_or": 2}
DIVISION_COST = 4
DEFAULT_FUNCTION_COST = 12


def op_cost(expr: sp.Basic) -> int:
    """Weighted operation count of ``expr`` as a straight-line kernel would evaluate it."""
    if expr.is_Atom or isinstance(expr, sp.Indexed):
        return 0
    if isinstance(expr, sp.Add):
        return len(expr.args) - 1 + sum(op_cost(a) for a in expr.args)
    if isinstance(expr, sp.Mul):
        num, den = expr.as_numer_denom()
        if den != 1:
            return op_cost(num) + op_cost(den) + DIVISION_COST
        args = [a for a in expr.args if a not in (sp.S.NegativeOne,)]
        neg = 1 if len(args) != len(expr.args) else 0
        return neg + max(len(args) - 1, 0) + sum(op_cost(a) for a in args)
    if isinstance(expr, sp.Pow):
        base, e = expr.args
        c = op_cost(base)
        if e.is_Integer:
            k = abs(int(e))
            c += max(k - 1, 0)
            return c + (DIVISION_COST if e < 0 else 0)
        if e == sp.Rational(1, 2):
            return c + FUNCTION_COST["sqrt"]
        if e == -sp.Rational(1, 2):
            return c + FUNCTION_COST["sqrt"] + DIVISION_COST
        return c + op_cost(e) + 2 * DEFAULT_FUNCTION_COST  # pow() = exp(e*log(b))
    if isinstance(expr, sp.Piecewise):
        return sum(op_cost(v) + op_cost(c) + 1 for v, c in expr.args)
    if isinstance(expr, (sp.core.relational.Relational, sp.logic.boolalg.BooleanFunction)):
        return 1 + sum(op_cost(a) for a in expr.args)
    if isinstance(expr, (sp.Max, sp.Min)):
        return len(expr.args) - 1 + sum(op_cost(a) for a in expr.args)
    if isinstance(expr, sp.Function):
        name = type(expr).__name__
        return FUNCTION_COST.get(name, DEFAULT_FUNCTION_COST) + sum(op_cost(a) for a in expr.args)
    return sum(op_cost(a) for a in expr.args)


def cse_cost(exprs: list[sp.Basic]) -> tuple[int, list, list]:
    """Cost after common-subexpression elimination; returns (cost, replacements, reduced)."""
    repl, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("_t"), optimizations="basic")
    return (sum(op_cost(v) for _, v in repl) + sum(op_cost(r) for r in reduced), repl, reduced)


def summed_work(expr: sp.Basic) -> sp.Expr:
    """Multiply-adds per output element of an index expression, as a polynomial in the
    extents: a sum contributes the product of its ranges times its summand's work, a term
    (product of array reads) counts 1. Used to report what collapsing Kronecker deltas saves."""
    if isinstance(expr, sp.Add):
        return sp.Add(*[summed_work(t) for t in expr.args])
    if isinstance(expr, sp.Sum):
        ext = sp.Mul(*[u - lo + 1 for _, lo, u in expr.limits])
        return sp.expand(ext * summed_work(expr.function))
    if isinstance(expr, sp.Piecewise):
        return summed_work(expr.args[0].expr)
    if isinstance(expr, sp.Mul):
        inner = [a for a in expr.args if isinstance(a, (sp.Sum, sp.Add, sp.Piecewise))]
        return sp.Mul(*[summed_work(a) for a in inner]) if inner else sp.S.One
    return sp.S.One
