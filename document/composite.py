"""The composite part (batch normalisation, softmax): stages, the backward sweep stage by
stage, the identities the reductions imply, pullbacks, JVP and R-op."""
from __future__ import annotations

import sympy as sp

from ..derive.composite import TAYLOR_ORDER, DerivedComposite
from .appendix import KernelTable
from .layout import display, row
from .printer import DerivationPrinter, escape, tex
from .prose import COMPOSITE_NAMES, _description, _heading, _spec_note, _title


COMPOSITE_INTRO = r"""
\section{Normalisation and softmax: composite layers}
Batch normalisation and softmax couple the elements of a group $\mathcal{G}$ through reductions, so
their Jacobians are not diagonal. Each is written as a short list of stages, each either elementwise
or a reduction over the group ($\sum_{\mathcal{G}}$, a mean, or a maximum used as a shift). The
backward sweep visits the stages in reverse: the adjoint of a group value read by elementwise stages
is the group sum of what they pass back (broadcast and sum are adjoints). Every intermediate is
then rewritten in the values the forward pass saves, and the identities the reductions imply (a
normalised group sums to zero, probabilities sum to one) simplify the result. The pushforward runs
the stages in order, and the R-op of the pullback is its directional derivative.
"""

_KIND = {"map": "", "sum": r"\sum_{\mathcal{G}}", "mean": r"\frac{1}{M}\sum_{\mathcal{G}}",
         "max": r"\max_{\mathcal{G}}"}


def _taylor_or_none(d: DerivedComposite):
    """The spec's order-2 Taylor coefficients, or None when it has no Taylor roles (constants,
    batch statistics, or names that clash with the roles' arrays: said when a sweep needs them)."""
    from ..derive.elementwise import SpecError
    if not d.taylor_able:
        return None
    try:
        return d.taylor(2)[0]
    except SpecError:
        return None


def composite_section(d: DerivedComposite, kernels: list | None = None) -> str:
    """A composite layer: its stages, the backward sweep stage by stage, the identities the
    reductions imply, the simplified pullbacks, the JVP and the R-op (its appendix table of
    kernels appended to ``kernels``)."""
    s = d.spec
    P = DerivationPrinter(names=COMPOSITE_NAMES, arrays=[str(p) for p in s.params])
    out = [_heading(s), _description(s.name, s.doc), " ", _spec_note(s.name), " ",
           f"A group $\\mathcal{{G}}$ is {escape(s.groups)}. The stages, in order:\n"]
    rows = []
    for st in s.stages:
        rhs = tex(st.expr, P)
        if st.kind != "map":
            rhs = _KIND[st.kind] + (r"\left(" + rhs + r"\right)" if isinstance(st.expr, sp.Add) else " " + rhs)
        rows.append(tex(st.symbol, P) + " &= " + rhs)
    out.append("\\begin{align}\n" + ",\\notag\\\\\n".join(rows) + f".\\label{{eq:{s.name}:def}}\n\\end{{align}}\n")
    out.append("\\paragraph{Backward sweep.} The adjoint (barred) of each stage's value, from the last "
               "stage to the first, written with the saved " + ", ".join(f"${tex(v, P)}$" for v in d.saved) + ":\n")
    out.append(display([row(r"\overline{" + tex(st.symbol, P) + "}", d.pretty(a), P) for st, a in d.sweep]))
    maxes = [st.symbol for st in s.stages if st.kind == "max"]
    if maxes:
        out.append("The adjoint of the shift " + ", ".join(f"${tex(m, P)}$" for m in maxes)
                   + " simplifies to zero: the output does not depend on it, so it is a constant "
                   "for every derivative.\n\n")
    if d.identities:
        out.append("The reductions imply, and the simplification uses,\n\\begin{align*}\n"
                   + ",\\\\\n".join(f"{tex(a, P)} &= {tex(v, P)} && \\text{{(from ${tex(sym, P)}$)}}"
                                    for sym, a, v in d.identities) + ".\n\\end{align*}\n")
    out.append("\\paragraph{First order.} The pullbacks:\n")
    out.append(display([row(r"\bar{g}^{" + tex(sp.Symbol(k), P) + "}", d.pretty(e), P, f"eq:{s.name}:vjp:{k}")
                        for k, e in d.vjp.items()]))
    out.append("\\paragraph{Second order.} The pushforward and the R-op of each pullback:\n")
    rows = [row(r"\mathcal{R}\{y\}", d.pretty(d.jvp), P, f"eq:{s.name}:jvp")]
    rows += [row(r"\mathcal{R}\{\bar{g}^{" + tex(sp.Symbol(k), P) + r"}\}", e, P, f"eq:{s.name}:rvjp:{k}")
             for k, e in d.rvjp.items()]
    out.append(display(rows))
    roles = dict(d.role_kernels)
    taylor = _taylor_or_none(d)
    if taylor is not None:
        out.append(r"\paragraph{Taylor mode.} Along a path of the input $x(t) = x + t\,x_1 + \tfrac{t^2}{2}x_2 + "
                   r"\dots$ the output's coefficients are $y_1 = \mathcal{R}\{y\}$ with $\mathcal{R}\{x\} = x_1$, "
                   "then each the derivative of the one before along the path (the same stage-by-stage "
                   "differentiation as the R-op); the second:\n")
        out.append(display([row("y_{2}", sp.expand(taylor["y2"]), P, f"eq:{s.name}:taylor2")]))
        out.append(r"The pullback of the coefficients follows from $\partial y_k/\partial x_j = \binom{k}{j}"
                   r"\,\frac{d^{k-j}}{dt^{k-j}}J(x(t))$: the cotangent of $x_j$ is $\sum_{k \ge j}\binom{k}{j}$ "
                   r"times the $(k-j)$-th path derivative of the pullback with the cotangent $\bar{g}_k$ held fixed. "
                   f"Orders 1--{TAYLOR_ORDER} are emitted with the layer's kernels, orders 3--4 on first use.\n\n")
        roles.update(d.taylor_kernels(TAYLOR_ORDER))
    table = [(s.name + "_forward", "the stages in order, one pass per reduction")]
    for role, rk in roles.items():
        sums = ", ".join(f"$\\sum_{{\\mathcal{{G}}}} {tex(e, P)}$" for _, e in rk.sums)
        table.append((s.name + "_" + role.replace(":", "_"), sums or "no group sum"))
    if kernels is not None:
        kernels.append(KernelTable(_title(s), s.name, "l R", ("kernel", "the group sums of its one pass per group"),
                                   table))
    return "".join(out)
