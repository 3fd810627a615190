"""The PDE part: a physics-informed problem (:class:`symprop.pinn.Problem`) as its derivation
reads — the residual as written, rewritten in the network's derivatives (the product rule
through a hard-constraint factor), the derivatives it needs and the sweep that computes them,
and the cotangents ∂(r²)/∂q that start the backward sweep.

Everything is read from the problem's own derived terms (``problem.interior`` and one term
per condition: ``expr``, ``r``, ``qsyms``, ``needs``, ``mode``, ``plan``); nothing is re-derived
here but the one-line ∂r/∂q the cotangent 2r·∂r/∂q is printed with (tested equal to
∂(r²)/∂q).
"""
from __future__ import annotations

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

from .layout import Row, display, row
from .printer import DerivationPrinter, _neg, escape, tex

class PDEPrinter(DerivationPrinter):
    """The document's printer for a PDE: the unknown u(x, y) as ``u``, its derivatives as
    ∂ᵏu/∂xᵏ, the network's derivatives as subscripts (N_x, N_xx) and ΔN."""

    def __init__(self, term):
        names = {"N_": "N"}
        for s, label in zip(term.qsyms, term.needs):
            if s.name in names:
                continue
            names[s.name] = combination_tex(s, label) if s.name.startswith("N_op") else "N_{" + s.name[2:] + "}"
        for cmap in getattr(term, "combinations", {}).values():   # the partials a combination sums
            for a in cmap:
                name = "".join(str(x) * n for x, n in zip(term.coords, a))
                names.setdefault("N_" + name, "N_{" + name + "}")
        super().__init__(names=names)

    def _print_Mul(self, expr):
        """The network's derivative last in a term: ``x y (x − 1)(y − 1) ΔN``."""
        facs = sp.Mul.make_args(expr)
        qs = [f for f in facs if isinstance(f, sp.Symbol) and f.name.startswith("N_")]
        if len(qs) != 1 or len(facs) == 1:
            return super()._print_Mul(expr)
        rest = sp.Mul(*[f for f in facs if f is not qs[0]])
        if rest == -1:
            return "-" + self._print(qs[0])
        t = self._print(rest)
        return t + " " + self._print(qs[0]) if not isinstance(rest, sp.Add) else r"\left(" + t + r"\right) " + self._print(qs[0])

    def _print_Function(self, expr, exp=None):
        if isinstance(expr, AppliedUndef):
            name = self._print(sp.Symbol(expr.func.__name__))
            return name if exp is None else f"{name}^{{{exp}}}"
        return super()._print_Function(expr, exp)

    def _print_Derivative(self, expr):
        if not isinstance(expr.expr, AppliedUndef):
            return super()._print_Derivative(expr)
        n = sum(int(c) for _, c in expr.variable_count)
        num = r"\partial" + (f"^{{{n}}}" if n > 1 else "") + " " + self._print(sp.Symbol(expr.expr.func.__name__))
        den = " ".join(r"\partial " + self._print(v) + (f"^{{{int(c)}}}" if int(c) > 1 else "")
                       for v, c in expr.variable_count)
        return r"\frac{" + num + "}{" + den + "}"


def combination_tex(s, label: str) -> str:
    """A constant-coefficient combination of the network's order-k partials (``N_op<k>``):
    ΔN, Δ²N, or (for another combination) 𝓛_k N, defined in the text."""
    return {"ΔN": r"\Delta N", "Δ²N": r"\Delta^{2} N"}.get(label, r"\mathcal{L}_{" + s.name[4:] + "} N")


def _combination_words(term, P) -> str:
    """The definition of every combination printed as 𝓛_k N: Σ_α c_α N_α."""
    out = []
    for s, label in zip(term.qsyms, term.needs):
        if s.name.startswith("N_op") and label not in ("ΔN", "Δ²N"):
            cmap = term.combinations[s]
            shown = sp.Add(*[c * sp.Symbol("N_" + "".join(str(x) * n for x, n in zip(term.coords, a)))
                             for a, c in cmap.items()])
            out.append(f"${combination_tex(s, label)} = {tex(shown, P)}$")
    return (" (" + ", ".join(out) + ")") if out else ""


def _domain(problem, P) -> str:
    return ", ".join(f"${tex(c, P)} \\in [{lo:g}, {hi:g}]$" for c, (lo, hi) in zip(problem.coords, problem.box))


def _sweep_words(term, d: int) -> str:
    if term.mode == "laplacian":
        groups = term.plan[1]
        if len(groups) == 1 and len(groups[0]) == d and np.allclose(groups[0], np.eye(d)):
            return (f"the second derivatives enter only through $\\Delta N$, so the forward Laplacian "
                    f"\\eqref{{eq:taylor:lap}} computes them: $d + 2 = {d + 2}$ arrays per layer, no Hessian")
        n = sum(len(V) for V in groups)
        return (f"the second derivatives enter through one constant-coefficient combination, so the forward "
                f"Laplacian \\eqref{{eq:taylor:lap}} runs along the {n} direction(s) of its factor in "
                f"{len(groups)} group(s): {term.cost} arrays per layer, no Hessian")
    W, K = term.plan[1], term.plan[2]
    if term.order == 0:
        return "no derivative of $N$ enters, so the plain forward pass computes it"
    dirs = ", ".join("$(" + ", ".join(f"{v:g}" for v in w) + ")$" for w in W)
    m = len(W)
    jets = (f"Taylor jets of order {K} (Fa\\`a di Bruno's rules \\eqref{{eq:taylor:fdb}}) along "
            f"{'the direction' if m == 1 else 'the directions'} {dirs}")
    if term.mode == "collapsed":
        return (f"{jets}, the order-{K} coefficient carried as one weighted sum over them (collapsed Taylor "
                f"mode), compute them: $2 + {K - 1} \\cdot {m} = {2 + (K - 1) * m}$ arrays per layer instead "
                f"of ${1 + K * m}$")
    return f"{jets} compute them: $1 + {K} \\cdot {m} = {1 + K * m}$ arrays per layer"


def _factored(e):
    """``e`` factored when that is cheap and equal (display only)."""
    if sp.count_ops(e) > 80:
        return e
    f = sp.factor(e)
    return f if sp.expand(f - e) == 0 else e


def collected(r, qsyms) -> sp.Expr:
    """The residual grouped by the network's derivatives, each coefficient factored:
    ``−h ΔN − 2 h_x N_x …`` rather than every product expanded (display only; equal to ``r``)."""
    parts = sp.collect(sp.expand(r), list(qsyms), evaluate=False)
    shown = sp.Add(*[_factored(c) * (q if q != 1 else 1) for q, c in parts.items()])
    return shown if sp.expand(shown - r) == 0 else r


def cotangents(term) -> list:
    """[(q, ∂r/∂q)]: the cotangent of q is ∂(r²)/∂q = 2 r ∂r/∂q."""
    return [(s, _factored(sp.diff(term.r, s))) for s in term.qsyms]


def _cotangent_rows(term, P) -> list:
    """∂(r²)/∂q = 2 r ∂r/∂q for every quantity q the residual reads."""
    rows = []
    for s, dr in cotangents(term):
        lhs = r"\frac{\partial (r^2)}{\partial " + (tex(s, P) if not s.name.startswith("N_op") else
                                                    r"(" + tex(s, P) + ")") + "}"
        if dr == 0:
            rows.append(Row(lhs, [["0"]]))
            continue
        c, rest = dr.as_coeff_Mul()           # 2 r ∂r/∂q with the number in front: −4 r · y (2x − 1)(y − 1)
        c = 2 * c
        if not c.is_Integer:                  # a fraction reads better inside: 2 r · (−1/(100π))
            c, rest = sp.Integer(2), dr
        t = ("-" if c < 0 else "") + ("" if abs(c) == 1 else tex(abs(c), P) + " ") + "r"
        if rest != 1:
            inner = tex(rest, P)
            t += r" \cdot " + (r"\left(" + inner + r"\right)" if isinstance(rest, sp.Add) or _neg(rest) else inner)
        rows.append(Row(lhs, [[t]]))
    return rows


def term_block(term, P, label: str) -> str:
    """One residual term: r in N's derivatives, what it needs, and its cotangents."""
    out = [display([row("r", collected(term.r, term.qsyms), P, label)])]
    out.append("It needs " + ", ".join(f"${tex(s, P)}$" for s in term.qsyms) + _combination_words(term, P) + "; "
               + _sweep_words(term, len(term.coords)) + ". The cotangents of $r^2$:\n")
    out.append(display(_cotangent_rows(term, P)))
    return "".join(out)


def pde_section(problem) -> str:
    """The PDE part of the document for a :class:`symprop.pinn.Problem`."""
    term = problem.interior
    P = PDEPrinter(term)
    name = escape(getattr(problem, "name", "pde"))
    u = tex(problem.u, P)
    args = ", ".join(tex(c, P) for c in problem.coords)
    out = [f"\\needlines{{12}}\n\\section{{A PDE problem: {name}}}\\label{{sec:pde}}\n",
           f"The unknown ${u} = {u}({args})$ solves $r = 0$ on the box {_domain(problem, P)}, with the residual "
           "as written in SymPy:\n",
           display([row("r", term.expr, P, "eq:pde:written")])]
    if problem.hard is not None:
        out.append(f"The boundary condition is built in: ${u} = h N$ with the network $N$ and the factor "
                   f"$h = {tex(problem.hard, P)}$, which vanishes on the boundary. The product rule writes the "
                   "residual in the network's derivatives (subscripts are partial derivatives of $N$):\n")
    else:
        out.append(f"The network $N$ is ${u}$ itself; in its derivatives (subscripts are partial derivatives "
                   "of $N$):\n")
    out.append(term_block(term, P, "eq:pde:r"))
    out.append("The loss is the mean of $r^2$ over the collocation points; divided by their number, these "
               "cotangents start the backward sweep of Section~\\ref{sec:taylor}, which gives the gradient "
               "with respect to every parameter.\n")
    for j, (c, ct) in enumerate(zip(getattr(problem, "conditions", []), getattr(problem, "_cond_terms", []))):
        Pc = PDEPrinter(ct)
        where = ", ".join(f"${tex(s, Pc)} = " + ", ".join(f"{float(v):g}" for v in (vals if isinstance(vals, (tuple, list))
                                                                                     else (vals,))) + "$"
                          for s, vals in c.on.items())
        out.append(f"\\paragraph{{Condition {j + 1}.}} ${tex(ct.expr, Pc)} = 0$ on {where}, enforced softly: "
                   f"its mean square, weighted by ${float(c.weight):g}$, is added to the loss. Its residual:\n")
        out.append(term_block(ct, Pc, f"eq:pde:cond{j + 1}"))
    return "".join(out)
