"""A SymPy ``CodePrinter`` that prints scalar expressions as typed Cython.

One printer per C type: for ``float`` it calls the ``f``-suffixed libm functions
(``tanhf``, ``expf``, …, which libmvec vectorizes) and casts literals, so float32
kernels never promote to double.
"""
from __future__ import annotations

import sympy as sp
from sympy.printing.c import C99CodePrinter

MATH = {"exp", "log", "tanh", "erf", "erfc", "log1p", "expm1", "sqrt", "sin", "cos",
        "atan", "cosh", "sinh", "fabs", "fmax", "fmin", "pow"}


class CythonPrinter(C99CodePrinter):
    """Print SymPy scalars as Cython expressions over C type ``ctype``."""

    def __init__(self, ctype: str = "double", names: dict | None = None):
        super().__init__({"strict": False})
        self.ctype = ctype
        self.sfx = "f" if ctype == "float" else ""
        self.names = names or {}

    def _fn(self, name: str) -> str:
        return name + self.sfx

    def _lit(self, value: str) -> str:
        return f"(<{self.ctype}>{value})"

    def _print_Symbol(self, expr):
        return self.names.get(expr.name, expr.name)

    def _print_Integer(self, expr):
        return self._lit(f"{int(expr)}.0")

    def _print_Float(self, expr):
        return self._lit(repr(float(expr)))

    def _print_Rational(self, expr):
        return self._lit(repr(float(expr)))

    def _print_NumberSymbol(self, expr):
        return self._lit(repr(float(expr)))

    _print_Pi = _print_Exp1 = _print_NumberSymbol

    def _print_Pow(self, expr):
        base, e = expr.args
        b = self.parenthesize(base, 100)
        if e.is_Integer and 1 <= abs(int(e)) <= 4:
            prod = "*".join([b] * abs(int(e)))
            return f"({prod})" if e > 0 else f"({self._lit('1.0')}/({prod}))"
        if e == sp.Rational(1, 2):
            return f"{self._fn('sqrt')}({self._print(base)})"
        if e == -sp.Rational(1, 2):
            return f"({self._lit('1.0')}/{self._fn('sqrt')}({self._print(base)}))"
        return f"{self._fn('pow')}({self._print(base)}, {self._print(e)})"

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name in MATH:
            return f"{self._fn(name)}({', '.join(self._print(a) for a in expr.args)})"
        raise NotImplementedError(f"no Cython kernel function for {name}() in {expr}")

    def _print_math_func(self, expr, nest=False, known=None):
        name = type(expr).__name__
        if name not in MATH:
            raise NotImplementedError(f"no Cython kernel function for {name}() in {expr}")
        return f"{self._fn(name)}({', '.join(self._print(a) for a in expr.args)})"

    def _print_exp(self, expr):
        return f"{self._fn('exp')}({self._print(expr.args[0])})"

    def _print_log(self, expr):
        return f"{self._fn('log')}({self._print(expr.args[0])})"

    def _print_Abs(self, expr):
        return f"{self._fn('fabs')}({self._print(expr.args[0])})"

    def _print_Max(self, expr):
        args = [self._print(a) for a in expr.args]
        out = args[0]
        for a in args[1:]:
            out = f"symprop_{self._fn('fmax')}({out}, {a})"
        return out

    def _print_Min(self, expr):
        args = [self._print(a) for a in expr.args]
        out = args[0]
        for a in args[1:]:
            out = f"symprop_{self._fn('fmin')}({out}, {a})"
        return out

    def _print_finite_or(self, expr):
        e, a = (self._print(v) for v in expr.args)
        return f"symprop_finite_or{self.sfx}({e}, {a})"

    def _print_nan_through(self, expr):
        e, v = (self._print(a) for a in expr.args)
        return f"symprop_nan_through{self.sfx}({e}, {v})"

    def _print_at_infinity(self, expr):
        return f"symprop_at_infinity{self.sfx}({', '.join(self._print(a) for a in expr.args)})"

    def _print_Piecewise(self, expr):
        *pieces, last = expr.args
        if last.cond != sp.true:
            raise NotImplementedError(f"Piecewise without a default branch: {expr}")
        if len(pieces) == 1 and pieces[0].expr.is_number and last.expr.is_number:
            # constant branches: an Iverson bracket [c] cast to the float type, branch-free so the
            # loop vectorizes (a ternary becomes an if/else that mispredicts on random signs)
            (hi, cond), lo = pieces[0], last.expr
            bracket = f"(<{self.ctype}>{self._print(cond)})"
            if lo == 0:
                return bracket if hi == 1 else f"({self._print(hi)}*{bracket})"
            return f"({self._print(lo)} + {self._print(hi - lo)}*{bracket})"
        out = self._print(last.expr)
        for e, c in reversed(pieces):
            out = f"({self._print(e)} if {self._print(c)} else {out})"
        return out

    def _print_Relational(self, expr):
        return f"({self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)})"

    def _print_And(self, expr):
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(not {self._print(expr.args[0])})"

    def _print_Indexed(self, expr):
        raise NotImplementedError(f"indexed term {expr} reached the scalar printer")


def print_expr(expr: sp.Basic, ctype: str, names: dict | None = None) -> str:
    return CythonPrinter(ctype, names).doprint(expr)


for _name in MATH - {"fabs", "fmax", "fmin", "pow"}:
    setattr(CythonPrinter, f"_print_{_name}", CythonPrinter._print_math_func)
