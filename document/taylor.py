"""The Taylor-mode part: derivatives with respect to a layer's *input*.

Printed from :mod:`symprop.derive.taylor`, the derivation the Taylor-mode kernels are emitted
from: Faà di Bruno's rules ``taylor:1 … taylor:4`` and the collapsed forward Laplacian with
its pullback, in abstract derivatives f′ … f⁽⁴⁾ (once); then per activation the higher
derivatives f‴, f⁽⁴⁾ as differentiated and as computed (chosen as f′ and f″ are, often in the
saved output y), and the forward-Laplacian rule with those forms substituted — the
expressions the ``laplacian`` kernel evaluates (each recorded in :attr:`Document.printed`).
"""
from __future__ import annotations

import functools

import sympy as sp

from ..codegen.taylor import kernel_name
from ..derive import builtins
from ..derive.elementwise import ElementwiseSpec
from ..derive.rewrite import at_infinity, finite_or, nan_through
from ..derive.taylor import F, MAX_ORDER, collapsed_role, derivative_forms, faa_di_bruno, laplacian_role, realize, vjp_role
from .appendix import KernelTable
from .derived import _builtin_specs, _derive
from .layout import LINE, Row, display, rhs_terms, row, tex_width
from .printer import DerivationPrinter, tex
from .prose import Printed, _is_word, _title
from .simplify import display_form

#: the abstract derivatives and the coefficient arrays of the Taylor roles, as printed
TAYLOR_NAMES = {"F1": "f'", "F2": "f''", "F3": "f'''", "F4": "f^{(4)}", "F5": "f^{(5)}",
                "J": "J_{i}", "Jy": "J^{y}_{i}", "L": "L", "Ly": "L^{y}",
                "gy": r"\bar{g}^{y}", "gJy": r"\bar{g}^{J^{y}}_{i}", "gLy": r"\bar{g}^{L^{y}}",
                "gx": r"\bar{g}^{x}", "gJ": r"\bar{g}^{J}_{i}", "gL": r"\bar{g}^{L}",
                "T": "T", "Ty": "T^{y}", "c": "c_{i}", **{f"x{k}i": f"x_{{{k},i}}" for k in range(1, 5)}}
#: what each derivative is called in the text
ORDINAL = {3: "f'''", 4: "f^{(4)}"}


class TaylorPrinter(DerivationPrinter):
    """The document's printer with the Taylor roles' names: ``dsum(e)`` as Σ_i e (a sum over
    the input directions), the coefficients J_i, L and their cotangents."""

    def __init__(self, names: dict | None = None, **kw):
        super().__init__(names={**TAYLOR_NAMES, **(names or {})}, **kw)

    def _print_dsum(self, expr, exp=None):
        inner = self._print(expr.args[0])
        if isinstance(expr.args[0], sp.Add):
            inner = r"\left(" + inner + r"\right)"
        out = r"\sum_{i} " + inner
        return out if exp is None else r"\left(" + out + r"\right)^{" + exp + "}"


def taylor_eligible(spec) -> bool:
    """An elementwise map the Taylor roles are derived for: an activation (built-in, or a
    user spec) without learnable parameters or mask arrays."""
    return (isinstance(spec, ElementwiseSpec) and not spec.learnable and not spec.arrays
            and spec.name not in builtins.MASKS and spec.name not in builtins.PENALTIES)


@functools.lru_cache(maxsize=None)
def _builtin_forms(name: str):
    return _forms_new(_builtin_specs()[name])


def _forms_new(spec):
    _, forms = derivative_forms(spec, _derive(spec), upto=MAX_ORDER)
    return forms


def taylor_forms(spec) -> list:
    """f′ … f⁽⁴⁾ of ``spec`` as :func:`derive.taylor.derivative_forms` chooses them (each chosen
    from the previous one, so they are the forms ``derive_taylor`` gives the kernels; f⁽⁵⁾, which
    only the order-4 pullback needs, is not derived here). Built-ins derived once per process."""
    if _builtin_specs().get(spec.name) is spec:
        return _builtin_forms(spec.name)
    return _forms_new(spec)


def realized_laplacian(spec) -> list[tuple[str, sp.Basic]]:
    """The ``laplacian`` role of ``spec`` with its chosen forms substituted: [(output, expr)],
    the expressions its kernel evaluates (f‴ and up stay abstract: the role does not use them)."""
    chosen = [c.chosen for c in taylor_forms(spec)]
    chosen += F[len(chosen) + 1:]
    r = realize(laplacian_role(), chosen, _derive(spec).forward.chosen, spec)
    return [(o, e) for o, e in r.point_outputs + r.dir_outputs if o != "y"]


TAYLOR_INTRO = r"""
\section{Taylor mode: derivatives with respect to the input}\label{sec:taylor}
A physics-informed loss needs derivatives of the network's output with respect to its
\emph{input}: $\nabla u$, $\Delta u$, $\partial^k u/\partial x_i^k$. Taylor mode pushes them
forward with the values. Let the input of an elementwise layer $y = f(x)$ move along a curve
$x(t)$ with coefficients $x_k = \mathrm{d}^k x/\mathrm{d}t^k$ at $t = 0$; the output's coefficients
$y_k$ are Faà di Bruno's combinations of $f', \dots, f^{(k)}$ (all at $x$), found by SymPy from a
truncated series rather than written down:
"""


def taylor_intro(P: DerivationPrinter | None = None) -> str:
    """The general rules, in abstract derivatives: Faà di Bruno to order 4, the forward
    Laplacian collapsed from order 2, and that role's pullback."""
    P = P or TaylorPrinter()
    fdb = faa_di_bruno(MAX_ORDER)
    out = [TAYLOR_INTRO.replace("Faà", "Fa\\`a"),
           display([row(f"y_{{{k}}}", e, P, "eq:taylor:fdb" if k == MAX_ORDER else None)
                     for k, e in enumerate(fdb, 1)])]
    lap = laplacian_role()
    out.append("Along a coordinate direction $e_i$ of the network's input, $x_1$ is the first derivative and "
               "$x_2$ the second. The forward Laplacian propagates, instead of a jet per direction, the value, "
               "the $d$ first-order coefficients $J_i$ ($i = 1, \\dots, d$) and the \\emph{summed} second-order "
               "coefficient $L = \\sum_i x_{2,i}$: summing $y_2$ over the directions gives\n")
    out.append(display([row(tex(sp.Symbol(o), P), e, P, "eq:taylor:lap" if o == "Ly" else None)
                        for o, e in lap.dir_outputs + lap.point_outputs if o != "y"]))
    back = vjp_role(lap)
    out.append("so a sweep carries $d + 2$ arrays per layer, not a Hessian. Its pullback (the VJP of the "
               "role, derived from the role by SymPy) takes the cotangents "
               "$\\bar g^{y}, \\bar g^{J^{y}}_i, \\bar g^{L^{y}}$ of the outputs to the inputs, with "
               "$f'''$ entering through $L^y$:\n")
    out.append(display([row(tex(sp.Symbol(o), P), e, P, "eq:taylor:lapvjp" if o == "gx" else None)
                        for o, e in back.point_outputs + back.dir_outputs]))
    col = collapsed_role(MAX_ORDER)
    out.append(f"An operator of order ${MAX_ORDER}$ such as $\\Delta^2 u$ is a weighted sum "
               f"$\\sum_i c_i \\,\\mathrm{{d}}^{MAX_ORDER} u(x + t w_i)/\\mathrm{{d}}t^{MAX_ORDER}$ of jets along a few directions "
               f"$w_i$. The top coefficient enters $y_{MAX_ORDER}$ only through $f' x_{MAX_ORDER}$, so it can travel as one "
               f"weighted sum $T = \\sum_i c_i x_{{{MAX_ORDER},i}}$ (collapsed Taylor mode), the lower coefficients per "
               f"direction as before; the role \\texttt{{collapsed:{MAX_ORDER}}} (and \\texttt{{collapsed:3}}) computes\n")
    per_dir = {sp.Symbol(f"x{k}"): sp.Symbol(f"x{k}i") for k in range(1, MAX_ORDER)}
    out.append(display([row(tex(sp.Symbol(o), P), e.xreplace(per_dir), P, "eq:taylor:col" if o == "Ty" else None)
                        for o, e in col.point_outputs if o != "y"]))
    out.append("and its pullback is derived from it like the forward Laplacian's.\n\n")
    out.append("Dense and convolution layers are affine in their input: every coefficient goes through "
               "the same linear map, and the bias enters the value only (its derivative along the input "
               "is zero). Each activation below gives $f'''$ and $f^{(4)}$ as differentiated and in the "
               "form its kernels compute (chosen, like $f'$ and $f''$, as the cheapest form accurate in "
               "float32 and float64), and the forward-Laplacian rule \\eqref{eq:taylor:lap} with its forms "
               "substituted, as its kernel evaluates it.\n")
    return "".join(out)


def kernel_table(spec) -> KernelTable:
    """The appendix table of an activation's Taylor-mode kernels (``generated/taylor``)."""
    rows = [(kernel_name(spec.name, f"taylor:{k}"), "$y, y_1$" if k == 1 else f"$y, y_1, \\dots, y_{k}$",
             "\\eqref{eq:taylor:fdb}") for k in range(1, MAX_ORDER + 1)]
    rows.append((kernel_name(spec.name, "laplacian"), "$y, J^{y}_i, L^{y}$", f"\\eqref{{eq:{spec.name}:lap}}"))
    rows += [(kernel_name(spec.name, f"vjp:taylor:{k}"), f"the pullback of the order-{k} rule", "")
             for k in range(1, MAX_ORDER + 1)]
    rows.append((kernel_name(spec.name, "vjp:laplacian"), "the pullback of the forward Laplacian",
                 "\\eqref{eq:taylor:lapvjp}"))
    rows += [(kernel_name(spec.name, f"collapsed:{k}"), "$y, " + ", ".join(f"y_{j}" for j in range(1, k)) + ", T^{y}$",
              "\\eqref{eq:taylor:col}")
             for k in range(3, MAX_ORDER + 1)]
    rows += [(kernel_name(spec.name, f"vjp:collapsed:{k}"), f"the pullback of the collapsed order-{k} rule", "")
             for k in range(3, MAX_ORDER + 1)]
    return KernelTable(_title(spec) + ", Taylor mode", f"taylor:{spec.name}", "l R l",
                       ("kernel", "computes", "eq."), rows)


def activation_taylor_section(spec, printed: list | None = None, kernels: list | None = None) -> str:
    """One activation's Taylor rules: f‴, f⁽⁴⁾ as differentiated and as computed, and the
    realized forward-Laplacian rule (recorded in ``printed`` under its kernel's name; its
    kernels' appendix table appended to ``kernels``)."""
    P = TaylorPrinter(names={p: r"\mathrm{" + p + "}" for p, _ in spec.params if _is_word(p)})
    forms = taylor_forms(spec)
    out = [f"\\needlines{{8}}\n\\subsection{{{_title(spec)}}}\\label{{sec:taylor:{spec.name}}}\n",
           f"With $f'$ and $f''$ of \\eqref{{eq:{spec.name}:d1}}--\\eqref{{eq:{spec.name}:d2}} (its Taylor-mode "
           f"kernels are listed in Appendix~\\ref{{app:taylor:{spec.name}}}):\n"]
    if kernels is not None:
        kernels.append(kernel_table(spec))
    rows, notes = [], []
    for j in (3, 4):
        c = forms[j - 1]
        then = display_form(c.chosen) if c.chosen != c.textbook else None
        if then is not None and tex(then, P) == tex(display_form(c.textbook), P):
            then = None
        if then is not None and tex_width(tex(then, P)) > 2 * LINE:
            then, limit = unguarded(then)        # a guard's cases cannot break across lines
            if limit is not None:
                notes.append((f"${ORDINAL[j]}$", f"${tex(limit, P)}$"))
        rows.append(_row_then(f"{ORDINAL[j]}(x)", display_form(c.textbook), then, P, f"eq:{spec.name}:d{j}"))
    out.append(display(rows))
    if notes:
        if len({lim for _, lim in notes}) == 1:
            out.append(f"Where an intermediate overflows, the kernels use {notes[0][1]} for "
                       + " and ".join(f for f, _ in notes) + ". ")
        else:
            out.append("Where an intermediate overflows, the kernels use "
                       + "; ".join(f"{lim} for {f}" for f, lim in notes) + ". ")
    counts = [f"${ORDINAL[j]}$ {forms[j - 1].cost_before}" + (
        f"\\,$\\to$\\,{forms[j - 1].cost_after}" if forms[j - 1].chosen != forms[j - 1].textbook else "")
        for j in (3, 4)]
    out.append("Op counts as differentiated and as computed: " + ", ".join(counts) + ". "
               "The forward Laplacian \\eqref{eq:taylor:lap} as its kernel evaluates it:\n")
    rows = []
    name = kernel_name(spec.name, "laplacian")
    for o, e in realized_laplacian(spec):
        shown = display_form(e)
        if printed is not None:
            printed.append(Printed(name, o, e, shown))
        rows.append(row(tex(sp.Symbol(o), P), shown, P, f"eq:{spec.name}:lap" if o == "Ly" else None))
    out.append(display(rows))
    return "".join(out)


def _row_then(lhs: str, expr, then, P, label: str) -> Row:
    """``lhs = expr`` and, from a new line, ``= then`` — both broken between terms (a long
    computed form, such as Mish's f⁽⁴⁾, runs over several lines)."""
    terms = rhs_terms(expr, P)
    if then is not None:
        more = rhs_terms(then, P)
        more[0][0] = "= " + more[0][0]
        terms += more
    return Row(lhs, terms, label)


def unguarded(e) -> tuple:
    """``(form, limit)``: a chosen form without its floating-point guards (``finite_or``'s
    fallback ``limit``, or None), for a form too long to print as cases."""
    limit = None
    while isinstance(e, (finite_or, nan_through, at_infinity)):
        if isinstance(e, finite_or):
            limit = e.args[1]
        e = e.args[0]
    return e, limit



def taylor_part(specs: list, printed: list | None = None, sweep: str = "", kernels: list | None = None) -> str:
    """The Taylor-mode part: the general rules, one subsection per eligible activation in
    ``specs``, then ``sweep`` (a model's forward-Laplacian sweep, already printed)."""
    acts = [s for s in specs if taylor_eligible(s)]
    return taylor_intro() + "".join(activation_taylor_section(s, printed, kernels) for s in acts) + sweep
