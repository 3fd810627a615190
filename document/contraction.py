"""The dense and window part: definitions in index notation, pullbacks, pushforward and
R-op, and the Hessian-diagonal rules, with the compact guards of window adjoints."""
from __future__ import annotations

import sympy as sp

from ..derive.cost import summed_work
from ..derive.indexed import ContractionSpec, DerivedContraction
from .appendix import KernelTable
from .layout import display, row
from .printer import CompactGuard, DerivationPrinter, tex
from .prose import WINDOW_NAMES, Printed, _description, _heading, _spec_note, _title


CONTRACTION_INTRO = r"""
\section{Dense and window layers}
These layers are sums of products, written in index notation. A pullback comes from differentiating
$L = \sum \bar g\, y$ (summed over the output's indices) with respect to one element of an input or
parameter array; SymPy returns sums of Kronecker deltas, which collapse a sum each
(the tables count the multiply-adds per output element before and after). The pushforward is the
directional derivative of the definition, and the R-op of a pullback the directional derivative of the
pullback, $\mathcal{R}\{\bar g\}$ included.

A window layer (convolution, pooling) reads its input through an affine index map, e.g.
$\hat h = h s_h + k d_h - p_h$, and reads outside the input are zero. The pullback of such a gather is
a scatter; it is written here as a gather over the output positions $h = (\hat h + p_h - k d_h)/s_h$
that read $\hat h$ through kernel offset $k$, guarded by $[s_h \mid \hat h + p_h - k d_h]$ (an integer
position) and $[0 \le h < H_{\mathrm{out}}]$ (in range). SymPy's own substitution drops the divisibility
condition, which is wrong for $s > 1$; the guards come from the adjoint-map rule of
\texttt{derive/affine.py} and are printed in this compact form, checked equal to the conditions
the derivation produces.

For Hessian diagonals, Becker--LeCun backpropagates only the diagonal $D$ of the output Hessian: each
pullback with $\bar g$ replaced by $D$ and its Jacobian entries squared (off-diagonal terms dropped).
Gauss--Newton factors the output Hessian per sample $n$ as $\sum_q \sigma_{q,n} S_q S_q^\top$ (columns
$S_q$, signs $\sigma_{q,n} \in \{-1, 1\}$: the eigenvalues' signs); a parameter's diagonal is the signed sum over
columns $q$ and samples of its squared per-sample pullback.
The exact diagonal adds, at every activation before the layer, the curvature term $f''(x)\,\bar g$ as further
columns.
"""


def _ranges(spec: ContractionSpec, P: DerivationPrinter) -> str:
    idx = list(dict.fromkeys([*spec.out_indices, *[i for ix in spec.all_arrays.values() for i in ix]]))
    parts = [f"$0 \\le {tex(i, P)} < {tex(spec.extents[i], P)}$" for i in idx if i in spec.extents]
    return ", ".join(parts)


def _lhs(out: str, indices, P: DerivationPrinter) -> str:
    return tex(sp.IndexedBase(out)[tuple(indices)], P) if indices else tex(sp.Symbol(out), P)


def _product(role: str, spec: ContractionSpec) -> str:
    """The chain-rule product a contraction kernel computes, in operator notation."""
    kind, _, arr = role.partition(":")
    a = tex(sp.Symbol(arr)) if arr else ""
    if kind == "forward":
        return "$y$"
    if kind == "vjp":
        return f"$\\bar g^{{{a}}} = J_{{{a}}}^\\top \\bar g$"
    if kind == "jvp":
        return "$\\mathcal{R}\\{y\\} = " + " + ".join(
            f"J_{{{tex(sp.Symbol(n))}}} \\mathcal{{R}}\\{{{tex(sp.Symbol(n))}\\}}" for n in spec.arrays) + "$"
    if kind == "rvjp":
        return (f"$\\mathcal{{R}}\\{{\\bar g^{{{a}}}\\}} = J_{{{a}}}^\\top \\mathcal{{R}}\\{{\\bar g\\}} + "
                f"\\mathcal{{R}}\\{{J_{{{a}}}\\}}^\\top \\bar g$")
    if kind == "bl":
        return f"$D^{{{a}}} = (J_{{{a}}}^{{\\circ 2}})^\\top D$"
    if kind == "sqvjp":
        return f"$\\operatorname{{diag}}(G)_{{{a}}} = \\sum_{{q,n}} \\sigma_{{q,n}} (J_{{{a}}}^\\top S_q)^{{\\circ 2}}$"
    return ""


def _work(k, raw=None, P=None) -> str:
    after = tex(summed_work(k.expr), P)
    if raw is None:
        return f"${after}$"
    return f"${tex(summed_work(raw), P)} \\to {after}$"


def contraction_section(d: DerivedContraction, printed: list | None = None, kernels: list | None = None) -> str:
    """One dense or window layer: definition, pullbacks, pushforward and R-op, Hessian-diagonal
    rules (each kernel's expression is appended to ``printed``, its appendix table to ``kernels``)."""
    s = d.spec
    names = dict(WINDOW_NAMES) if s.maps else {}
    P = DerivationPrinter(names=names, maps=s.maps, arrays=s.all_arrays)
    out = [_heading(s), _description(s.name, s.doc), " ", _spec_note(s.name), "\n"]

    def rec(k, e=None):
        if printed is not None:
            printed.append(Printed(k.name, k.out, k.expr, k.expr if e is None else e))

    rec(d.forward)
    out.append(display([row(_lhs(s.output, s.out_indices, P), d.forward.expr, P, f"eq:{s.name}:def")]))
    out.append("with " + _ranges(s, P) + ".\n\n")
    out.append("\\paragraph{First order.} Pullbacks from $L = \\sum " + tex(sp.Symbol("g"), P) + "\\, "
               + _lhs(s.output, s.out_indices, P) + "$, Kronecker deltas collapsed")
    guards = [CompactGuard(m) for m in s.maps]
    if guards and any(d.adjoint_maps.get(w) for w in d.vjps):
        out.append("; the read of $x$ is the gather "
                   + ", ".join(f"${tex(g.map.inp, P)} = {P.forward_tex(g)}$" for g in guards)
                   + ", so its pullback is a guarded gather at the output positions "
                   + " and ".join(f"${P.position_tex(g)}$" for g in guards))
    out.append(":\n")
    rows = []
    for wrt, k in d.vjps.items():
        rec(k)
        rows.append(row(_lhs(k.out, k.out_indices, P), k.expr, P, f"eq:{k.name}"))
    out.append(display(rows))
    out.append("\\paragraph{Second order.} The pushforward and the R-op of each pullback:\n")
    rec(d.jvp)
    rows = [row(_lhs(d.jvp.out, d.jvp.out_indices, P), d.jvp.expr, P, f"eq:{d.jvp.name}")]
    for wrt, k in d.rvjps.items():
        rec(k)
        rows.append(row(_lhs(k.out, k.out_indices, P), k.expr, P, f"eq:{k.name}"))
    out.append(display(rows))
    out.append(hessian_diagonal_subsection(d, P, rec))
    raw_note = any(d.raw_vjps.get(w) is not None for w in d.vjps)
    table = []
    for k in d.kernels:
        ref = f"eq:{s.name}:def" if k.role == "forward" else f"eq:{k.name}"
        raw = d.raw_vjps.get(k.role.partition(":")[2]) if k.role.startswith("vjp:") else None
        table.append((k.name, _product(k.role, s), f"\\eqref{{{ref}}}", _work(k, raw, P)))
    for p, sq in d.sqvjps.items():
        how = "as the Becker--LeCun rule" if sq.mode == "factorized" else "per sample, then squared"
        table.append((s.name + "_sqvjp_" + p, _product("sqvjp:" + p, s), f"\\eqref{{eq:{s.name}:gn:{p}}}", how))
    if kernels is not None:
        note = ("For a pullback the count is given as differentiated (a sum over every output, with Kronecker "
                "deltas) and after collapsing the deltas." if raw_note else "")
        kernels.append(KernelTable(_title(s), s.name, "l l l R", ("kernel", "product", "eq.", "multiply-adds"),
                                   table, note))
    return "".join(out)


def _signed(definition):
    """``Σ_{q,n} (…)²`` as ``Σ_{q,n} σ_{q,n} (…)²``: each factor column's eigenvalue sign."""
    if not isinstance(definition, sp.Sum) or len(definition.limits) != 2:
        return definition
    (q, *_), (n, *_) = definition.limits
    return sp.Sum(sp.IndexedBase("sigma")[q, n] * definition.function, *definition.limits)


def hessian_diagonal_subsection(d: DerivedContraction, P: DerivationPrinter | None = None, rec=None) -> str:
    """Becker–LeCun (every array) and Gauss–Newton (parameters) diagonal rules: the expressions
    the ``bl:`` and ``sqvjp:`` kernels compute, derived from the layer's own pullbacks
    (:mod:`symprop.derive.curvature`)."""
    s = d.spec
    P = P or DerivationPrinter(names=WINDOW_NAMES if s.maps else {}, maps=s.maps, arrays=s.all_arrays)
    out = ["\\paragraph{Hessian diagonals.} Becker--LeCun:\n"]
    rows = []
    for wrt, k in d.bls.items():
        if rec:
            rec(k)
        rows.append(row(_lhs("h" + wrt, k.out_indices, P), k.expr, P, f"eq:{k.name}"))
    out.append(display(rows))
    if d.sqvjps:
        kk, KK = sp.Symbol("k", integer=True), sp.Symbol("K", integer=True, positive=True)
        q, Q = sp.Symbol("q", integer=True), sp.Symbol("Q", integer=True, positive=True)
        out.append("Gauss--Newton (and exact, with the curvature-term columns), with $0 \\le q < Q$:\n")
        rows, modes = [], {}
        for wrt, sq in d.sqvjps.items():
            k = d.vjps[wrt]
            rows.append(row(r"\operatorname{diag}(G)_{" + tex(sp.IndexedBase(wrt)[k.out_indices], P) + "}",
                            _signed(sq.definition.xreplace({kk: q, KK: Q})), P, f"eq:{s.name}:gn:{wrt}"))
            modes.setdefault(sq.mode, []).append(wrt)
        out.append(display(rows))
        notes = []
        for mode, names in modes.items():
            arrays = " and ".join(f"${tex(sp.Symbol(w), P)}$" for w in names)
            notes.append(("For " + arrays + " the square factors (one product per sample), so the kernels compute "
                          "the Becker--LeCun rule at $D = \\sum_q \\sigma_{q,n} S_q^{\\circ 2}$") if mode == "factorized"
                         else ("For " + arrays + ", shared over positions, the square does not factor: the kernels "
                               "form each sample's pullback and square it"))
        out.append("; ".join(notes) + ".\n")
    return "".join(out)
