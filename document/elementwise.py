"""The elementwise part: per activation, mask and penalty, f, f′, f″ as differentiated and
as computed, and the products its kernels compute."""
from __future__ import annotations

import sympy as sp

from ..derive import builtins
from ..derive.elementwise import DerivedElementwise
from .appendix import KernelTable
from .layout import LINE, Row, display, row, tex_width
from .printer import DerivationPrinter, tex
from .prose import Printed, _description, _heading, _is_word, _spec_note, _title
from .simplify import display_form


ELEMENTWISE_INTRO = r"""
\section{Elementwise layers: activations, masks, penalties}
An elementwise layer $y = f(x)$ (an activation, a mask, a penalty) acts on each element alone, so its
Jacobian is diagonal and every product of
the chain rule is a product of elements. With $\bar g$ and $\mathcal{R}\{x\}, \mathcal{R}\{\bar g\}$ at
the same element,
\begin{align}
\bar g^x &= f'(x)\,\bar g, & \mathcal{R}\{y\} &= f'(x)\,\mathcal{R}\{x\}, \label{eq:ew:first}\\
\mathcal{R}\{\bar g^x\} &= f''(x)\,\mathcal{R}\{x\}\,\bar g + f'(x)\,\mathcal{R}\{\bar g\}, &
D^x &= f'(x)^2 D + f''(x)\,\bar g. \label{eq:ew:second}
\end{align}
The pullback and pushforward \eqref{eq:ew:first} are the first-order products; the R-op of the pullback
and Becker--LeCun's diagonal rule \eqref{eq:ew:second} the second-order ones. The term $r = f''(x)\,\bar g$
is the curvature term an activation adds to the Hessian with respect to its input: the exact Hessian
diagonal includes it and the Gauss--Newton diagonal drops it. Each activation below gives its $f'$ and
$f''$ as differentiated and (after the second $=$) in the cheapest form that is accurate on a grid of
test points in float32 and float64, written with the saved output $y$ where that is cheaper, and the
kernels that compute these products with them.
"""

_EW_ROLE = {"forward": ("y = f(x)", "eq:{name}:def"), "vjp:x": (r"\bar g^x", "eq:ew:first"),
            "jvp": (r"\mathcal{R}\{y\}", "eq:ew:first"), "rvjp:x": (r"\mathcal{R}\{\bar g^x\}", "eq:ew:second"),
            "bl:x": ("D^x", "eq:ew:second"), "curv:x": ("r", "eq:ew:second")}


def elementwise_section(d: DerivedElementwise, printed: list | None = None, kernels: list | None = None) -> str:
    """One elementwise layer: f, f′, f″ as differentiated and as computed, and the products its
    kernels compute (each kernel's expression is appended to ``printed``, its appendix table
    to ``kernels``)."""
    s = d.spec
    P = DerivationPrinter(names={p: r"\mathrm{" + p + "}" for p, _ in s.params if _is_word(p)},
                          arrays=[*s.learnable, *s.arrays])
    out = [_heading(s), _description(s.name, s.doc) + " " + _spec_note(s.name) + " Definition and derivatives:\n"]
    rows = []
    for lhs, choice, label in (("y = f(x)", d.forward, f"eq:{s.name}:def"), ("f'(x)", d.d1, f"eq:{s.name}:d1"),
                               ("f''(x)", d.d2, f"eq:{s.name}:d2")):
        then = display_form(choice.chosen) if choice.chosen != choice.textbook else None
        if then is not None and tex(then, P) == tex(display_form(choice.textbook), P):
            then = None                  # differs only in a function the document writes out (expm1)
        rows.append(row(lhs, display_form(choice.textbook), P, label, then=then))
    out.append(display(rows))
    counts = []
    for key, c in (("f", d.forward), ("f'", d.d1), ("f''", d.d2)):
        counts.append(f"${key}$ {c.cost_before}" + (f"\\,$\\to$\\,{c.cost_after}" if c.chosen != c.textbook else ""))
    out.append("Op counts as differentiated and as computed: " + ", ".join(counts) + ". "
               "The products of the chain rule \\eqref{eq:ew:first}--\\eqref{eq:ew:second} as they are computed, "
               "one line per kernel:\n")
    rows, table = [], []
    for k in d.kernels:
        cost, repl, reduced = k.cse
        repl, reduced = _temporaries(k, *_conditions_inline(repl, reduced), P)
        for j, ((o, e), r) in enumerate(zip(k.outputs, reduced)):
            shown = display_form(r) if repl else display_form(e)
            if printed is not None:
                printed.append(Printed(k.name, o, e, shown, list(repl)))
            rows.append(row(tex(sp.Symbol(o), P), shown, P, f"eq:{k.name}" if j == 0 else None))
        if repl:
            rows.append(Row("", [[tex(t, P) + " = " + tex(display_form(v), P) + (r",\ " if j < len(repl) - 1 else "")]
                                 for j, (t, v) in enumerate(repl)]))
        what = ", ".join(f"${tex(sp.Symbol(o), P)}$" for o, _ in k.outputs)
        table.append((k.name, what, f"\\eqref{{eq:{k.name}}}", str(cost)))
    out.append(display(rows))
    for p in s.learnable:
        a = tex(sp.Symbol(p), P)
        out.append(f"The products for ${a}$ (one value per channel, or one shared) sum their per-element values "
                   f"over every element that shares ${a}$: $\\bar g^{{{a}}} = \\sum \\bar g\\, \\partial y/\\partial {a}$, "
                   f"and so $\\mathcal{{R}}\\{{\\bar g^{{{a}}}\\}}$ and $D^{{{a}}}$. Its Gauss--Newton diagonal sums over the "
                   "factor columns $q$ and the samples $n$, the elements $e$ of a sample summed inside the square:\n"
                   f"\\begin{{equation}}\n\\operatorname{{diag}}(G)_{{{a}}} = \\sum_{{q,n}} \\sigma_{{q,n}} \\Bigl(\\sum_{{e}} "
                   f"S_{{q,n,e}}\\, \\frac{{\\partial y_{{n,e}}}}{{\\partial {a}}}\\Bigr)^2.\\label{{eq:{s.name}:gn:{p}}}\n"
                   "\\end{equation}\n")
        name = f"{s.name}_sqvjp_{p}"
        if name in [r[0] for r in table]:       # the kernel of ∂y/∂a the sum reads: both equations
            table = [r if r[0] != name else (*r[:2], r[2] + f", \\eqref{{eq:{s.name}:gn:{p}}}", r[3]) for r in table]
        else:
            table.append((name, f"$\\operatorname{{diag}}(G)_{{{a}}}$", f"\\eqref{{eq:{s.name}:gn:{p}}}", ""))
    for m in s.arrays:
        out.append(f"The mask ${tex(sp.Symbol(m), P)}$ is drawn once per forward call and is a constant for every "
                   "derivative.\n")
    if s.name in builtins.PENALTIES:
        out.append("Here $x$ is one weight and $y$ its penalty, added to the loss; the kernels add $\\bar g^x$ "
                   "to the weight's gradient, and the second-order kernels their terms to the Hessian-vector "
                   "product and the Hessian diagonals.\n")
    if kernels is not None:
        kernels.append(KernelTable(_title(s), s.name, "l l l r", ("kernel", "computes", "eq.", "ops"), table))
    return "".join(out)


def _temporaries(k, repl, reduced, P):
    """The temporaries a reader is shown: none when every output of the kernel, written out, fits
    on two lines; else only those used more than once (the others put back where they are used)."""
    whole = [e for _, e in k.outputs]
    if all(tex_width(tex(display_form(e), P)) <= 2 * LINE for e in whole):
        return [], whole
    while True:
        uses = {t: sum(x.count(t) for x in [*reduced, *(v for _, v in repl)]) for t, _ in repl}
        once = next(((t, v) for t, v in repl if uses[t] <= 1), None)
        if once is None:
            return repl, reduced
        t, v = once
        repl = [(a, b.xreplace({t: v})) for a, b in repl if a != t]
        reduced = [r.xreplace({t: v}) for r in reduced]
        rename = {a: sp.Symbol(f"_t{i}") for i, (a, _) in enumerate(repl)}       # τ₁, τ₂, … without gaps
        repl = [(rename[a], b.xreplace(rename)) for a, b in repl]
        reduced = [r.xreplace(rename) for r in reduced]


def _conditions_inline(repl, reduced):
    """CSE temporaries that stand for a condition (``τ₁ = x < 0``) or a constant (``τ₁ = √2``)
    put back where they are used: a reader wants ``[x < 0]`` and ``√2``, not ``[τ₁]`` and ``τ₁``."""
    keep, back = [], {}
    for t, v in repl:
        v = v.xreplace(back)
        if isinstance(v, sp.logic.boolalg.Boolean) and not isinstance(v, sp.Expr) or not v.free_symbols:
            back[t] = v
        else:
            keep.append((t, v))
    if not back:
        return keep, list(reduced)
    rename = {t: sp.Symbol(f"_t{i}") for i, (t, _) in enumerate(keep)}     # τ₁, τ₂, … without gaps
    keep = [(rename[t], v.xreplace(rename)) for t, v in keep]
    return keep, [r.xreplace(back).xreplace(rename) for r in reduced]
