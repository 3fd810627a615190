"""The derivations as a LaTeX document: the human-readable twin of ``generated/``.

Every formula is printed from the same derived SymPy objects that ``codegen`` prints as
kernels (no hand-typed formulas): definitions, first-order pullbacks (VJPs), pushforwards
(JVPs), the R-op pullbacks, the Hessian-diagonal rules, and the simplified forms with their
op counts and kernel names.

    from symprop.derive import latex
    text = latex.document()                     # every built-in layer and loss
    text = latex.document(layers=["tanh", "conv2d"], extra=[my_spec])
"""
from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter

from . import builtins
from .cost import summed_work
from .elementwise import DerivedElementwise, ElementwiseSpec, derive_elementwise
from .indexed import ContractionSpec, DerivedContraction, derive_contraction
from .composite import CompositeSpec, DerivedComposite, derive_composite
from .losses import derive_softmax_cross_entropy, mse, sigmoid_cross_entropy

#: non-ASCII characters of spec docstrings, in LaTeX
_UNICODE = {"ᵀ": r"\textsuperscript{T}", "·": r"$\cdot$", "Σ": r"$\Sigma$", "σ": r"$\sigma$", "ḡ": r"$\bar g$",
            "′": "'", "″": "''", "→": r"$\to$", "←": r"$\leftarrow$", "≤": r"$\le$", "≥": r"$\ge$",
            "−": "-", "–": "--", "—": "---", "×": r"$\times$", "δ": r"$\delta$", "∂": r"$\partial$",
            "⊙": r"$\odot$", "²": r"\textsuperscript{2}", "ε": r"$\varepsilon$", "θ": r"$\theta$",
            "λ": r"$\lambda$", "β": r"$\beta$", "α": r"$\alpha$", "√": r"$\surd$", "⌊": r"$\lfloor$",
            "⌋": r"$\rfloor$", "ℓ": r"$\ell$", "𝓡": r"$\mathcal{R}$", "∈": r"$\in$", "…": r"\dots{}"}
_SPECIALS = {"\\": r"\textbackslash{}", "_": r"\_", "#": r"\#", "%": r"\%", "&": r"\&", "$": r"\$",
             "{": r"\{", "}": r"\}", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}"}


def escape(text: str) -> str:
    """``text`` safe in LaTeX text mode (user-given names: ``my_act#1%`` → ``my\\_act\\#1\\%``)."""
    return "".join(_SPECIALS.get(ch) or _UNICODE.get(ch) or (ch if ord(ch) < 128 else "?") for ch in str(text))


class DerivationPrinter(LatexPrinter):
    """SymPy's LaTeX printer with symprop's notation: ``g`` is ḡ (the incoming gradient),
    ``R·`` arrays are directions 𝓡{·}, guarded adjoint reads print as Iverson brackets."""

    def _print_Symbol(self, expr, style="plain"):
        name = expr.name
        if name == "g":
            return r"\bar{g}"
        if name.startswith("R") and len(name) > 1 and name[1:] in ("x", "y", "g", "W", "b", "gx", "gW", "gb"):
            return r"\mathcal{R}\{" + self._print_Symbol(sp.Symbol(name[1:])) + r"\}"
        if name.endswith("_"):   # fresh index symbols of a pullback: u_ → u'
            return self._print_Symbol(sp.Symbol(name[:-1])) + "'"
        if name.startswith("R") and len(name) > 1 and name[1:] in ("gamma", "beta", "alpha"):
            return r"\mathcal{R}\{" + super()._print_Symbol(sp.Symbol(name[1:]), style) + r"\}"
        if name == "xhat":
            return r"\hat{x}"
        if name in ("rstd", "var"):
            return r"\mathrm{" + name + "}"
        if name == "eps":
            return r"\varepsilon"
        if name in ("hx", "hW", "hb"):
            return "h^{" + self._print_Symbol(sp.Symbol(name[1:])) + "}"
        if name in ("gx", "gW", "gb"):
            return r"\bar{g}^{" + self._print_Symbol(sp.Symbol(name[1:])) + "}"
        return super()._print_Symbol(expr, style)

    def _print_finite_or(self, expr, exp=None):
        out = (r"\operatorname{finite\_or}\left(" + self._print(expr.args[0]) + r",\; "
               + self._print(expr.args[1]) + r"\right)")
        return out if exp is None else r"\left(" + out + r"\right)^{" + exp + "}"

    def _print_GroupSum(self, expr):
        return r"\sum_{\mathcal{G}}\!\left(" + self._print(expr.args[0]) + r"\right)"

    def _print_Piecewise(self, expr):
        # Piecewise((e, cond), (0, True)): the guard as Iverson brackets [c1][c2]… e
        if len(expr.args) == 2 and expr.args[1].cond == sp.true and expr.args[1].expr == 0:
            e, cond = expr.args[0]
            conds = cond.args if isinstance(cond, sp.And) else (cond,)
            brackets = "".join(r"\left[" + self._print(c) + r"\right]" for c in conds)
            return brackets + r"\, " + self._print(e)
        return super()._print_Piecewise(expr)


_PRINTER = DerivationPrinter({"mul_symbol": None})


def tex(expr) -> str:
    """LaTeX of one SymPy expression in the document's notation."""
    return _PRINTER.doprint(expr)


def _lhs(out: str, indices) -> str:
    return tex(sp.IndexedBase(out)[tuple(indices)]) if indices else tex(sp.Symbol(out))


def _guarded(term):
    """``Σ c·Piecewise((e, conds), (0, True))`` → (sum prefix, coefficient, conditions, e) or None."""
    if not isinstance(term, sp.Sum):
        return None
    coeff, pw = sp.S.One, term.function
    if isinstance(pw, sp.Mul):
        pws = [a for a in pw.args if isinstance(a, sp.Piecewise)]
        if len(pws) != 1:
            return None
        coeff, pw = pw / pws[0], pws[0]
    if not (isinstance(pw, sp.Piecewise) and len(pw.args) == 2 and pw.args[1].cond == sp.true
            and pw.args[1].expr == 0):
        return None
    e, cond = pw.args[0]
    marker = sp.Symbol("MARKER")
    prefix = tex(sp.Sum(marker, *term.limits)).replace("MARKER", "").rstrip()
    return prefix, coeff, (cond.args if isinstance(cond, sp.And) else (cond,)), e


def _term_lines(term) -> list[str]:
    """A term as one or more lines: guarded adjoint sums put two guard brackets per line."""
    g = _guarded(term)
    if g is None:
        return [tex(term)]
    prefix, coeff, conds, e = g
    br = [r"\left[" + tex(c) + r"\right]" for c in conds]
    lines = [prefix + (" " + tex(coeff) if coeff != 1 else "") + " " + "".join(br[:2])]
    lines += [r"\cdot " + "".join(br[k:k + 2]) for k in range(2, len(br), 2)]
    lines.append(r"\cdot " + tex(e))
    return lines


def _equation(lhs: str, expr, label: str | None = None) -> str:
    """One numbered equation; a sum of several terms gets a line per term (``align``) and long
    guarded sums are broken after every two guards."""
    terms = sp.Add.make_args(expr) if isinstance(expr, sp.Add) else (expr,)
    lines = []
    for k, t in enumerate(terms):
        tl = _term_lines(t)
        lines.append(tl[0] if k == 0 or tl[0].startswith("-") else "+ " + tl[0])
        lines += [r"\qquad " + x for x in tl[1:]]
    body = lhs + " &= " + lines[0]
    for ln in lines[1:]:
        body += r" \notag\\ &\quad " + ln
    lab = f"\\label{{{label}}}" if label else ""
    return "\\begin{align}\n" + body + lab + "\n\\end{align}\n"


def _kernel_ref(name: str) -> str:
    return r"\texttt{" + escape(name) + "}"


def _work(k, raw=None) -> str:
    """Kernel name and its multiply-adds per output element (before/after delta collapse)."""
    after = "$" + tex(summed_work(k.expr)) + "$"
    if raw is None:
        return f"{_kernel_ref(k.name)} ({after} multiply-adds per output element):\n"
    return (f"{_kernel_ref(k.name)} (multiply-adds per output element: ${tex(summed_work(raw))}$ as "
            f"differentiated, a sum over every output with Kronecker deltas; {after} after collapsing them):\n")


# ---------------------------------------------------------------- sections
NOTATION = r"""
\section*{Notation}
$\bar g = \partial L/\partial y$ is the gradient arriving at a layer's output $y$ and
$\bar g^x, \bar g^W, \bar g^b$ the gradients it passes on (the pullback, or VJP).
$\mathcal{R}\{\cdot\}$ is Pearlmutter's R-operator, the directional derivative along a
direction $v$ in parameter space: $\mathcal{R}\{x\}$ is the pushed-forward input direction,
$\mathcal{R}\{y\}$ the layer's JVP, and $\mathcal{R}\{\bar g^x\}$, $\mathcal{R}\{\bar g^W\}$
the R-op of the pullback, whose parameter parts form the Hessian-vector product $Hv$.
Indices: $n$ sample, $i,o$ input/output features, $c,o$ input/output channels, $h,w$ output
positions, $u,v$ input positions, $i,j$ kernel offsets; primed indices are the free indices
of a pullback. $[P]$ is 1 when $P$ holds and 0 otherwise. Elementwise maps are written per
element with $x$ the input and $y = f(x)$ the saved output. Op counts use the weighted cost
model of \texttt{derive/cost.py} (a transcendental call counts 10--12, a division 4).
$\operatorname{finite\_or}(e, a)$ is $e$ where it is finite and $a$, its limit, where an
intermediate of $e$ overflows. In composite layers $\sum_{\mathcal{G}}$ sums over the
elements of one group (a channel for batch normalization, a sample for softmax) and $M$ is
their number.
"""


def elementwise_section(d: DerivedElementwise) -> str:
    s = d.spec
    x, y = sp.Symbol("x"), sp.Symbol("y")
    kind = "Activation" if s.name in builtins.ACTIVATIONS or not (s.arrays or s.learnable or
                                                                   s.name in builtins.PENALTIES) else \
        "Learnable activation" if s.learnable else "Mask" if s.arrays else "Penalty"
    out = [f"\\clearpage\n\\section{{{kind} \\texttt{{{escape(s.name)}}}}}\n"]
    if s.doc:
        out.append(escape(s.doc) + "\n\n")
    out.append("Definition:\n" + _equation("y", d.forward.textbook, f"eq:{s.name}:def"))
    out.append("\\subsection*{Derivatives as derived and as computed}\n")
    for key, label, choice in (("f", "f(x)", d.forward), ("d1", "f'(x)", d.d1), ("d2", "f''(x)", d.d2)):
        out.append(f"${label}$ as differentiated (op count {choice.cost_before}):\n"
                   + _equation(label, choice.textbook))
        if choice.chosen != choice.textbook:
            out.append(f"and in the form the kernels use (op count {choice.cost_after}"
                       + (", written with the saved output $y$" if choice.uses_output else "") + "):\n"
                       + _equation(label, choice.chosen))
    out.append("\\subsection*{Chain rule}\n"
               "First order: $\\bar g^x = f'(x)\\,\\bar g$. Second order (R-op): "
               "$\\mathcal{R}\\{y\\} = f'(x)\\,\\mathcal{R}\\{x\\}$ and "
               "$\\mathcal{R}\\{\\bar g^x\\} = f''(x)\\,\\mathcal{R}\\{x\\}\\,\\bar g + "
               "f'(x)\\,\\mathcal{R}\\{\\bar g\\}$. Hessian diagonals: the exact and Gauss--Newton "
               "backprop differ by the residual $r = f''(x)\\,\\bar g$ (added only for the exact "
               "diagonal); Becker--LeCun propagates $h_x = f'(x)^2 h + f''(x)\\,\\bar g$.\n")
    out.append("\\subsection*{Kernels}\n")
    for k in d.kernels:
        cost, repl, reduced = k.cse
        out.append(f"{_kernel_ref(k.name)} (op count {cost} after common-subexpression elimination):\n")
        for (o, e) in k.outputs:
            out.append(_equation(tex(sp.Symbol(o)), e, f"eq:{k.name}:{o}"))
        if repl:
            out.append("computed as " + ", ".join(f"${tex(a)} = {tex(b)}$" for a, b in repl)
                       + ", then " + ", ".join(f"${tex(sp.Symbol(o))} = {tex(r)}$"
                                               for (o, _), r in zip(k.outputs, reduced)) + ".\n\n")
    return "".join(out)


def contraction_section(d: DerivedContraction) -> str:
    s = d.spec
    kind = "Layer" if s.params else "Pooling layer"
    out = [f"\\clearpage\n\\section{{{kind} \\texttt{{{escape(s.name)}}}}}\n"]
    if s.doc:
        out.append(escape(s.doc) + "\n\n")
    out.append("Definition (index notation; reads outside the input are zero), computed by "
               + _work(d.forward)
               + _equation(_lhs(s.output, s.out_indices), d.forward.expr, f"eq:{s.name}:def"))
    if s.selects:
        out.append("Here " + ", ".join(f"${tex(sp.Symbol(m))}$" for m in s.selects)
                   + " is the one-hot argmax of the window saved by the forward pass (the layer's "
                   "local linearization; its second derivative is zero).\n\n")
    out.append("\\subsection*{First order: pullbacks}\n")
    out.append("From $L = \\sum " + tex(sp.Symbol("g")) + "\\, " + _lhs(s.output, s.out_indices)
               + "$ differentiated by one array element, Kronecker deltas collapsed.\n")
    for wrt, k in d.vjps.items():
        maps = d.adjoint_maps.get(wrt) or ()
        if maps:
            out.append("The read of $" + tex(sp.Symbol(wrt)) + "$ is a gather through "
                       + ", ".join(f"${tex(m.inp)} = {tex(m.out)} {tex(m.stride)} + {tex(m.kernel)} "
                                   f"{tex(m.dilation)} - {tex(m.padding)}$" for m in maps)
                       + "; its pullback is the adjoint (a scatter), written as a gather over the "
                       "output positions that solve the map, guarded by divisibility and range:\n")
        out.append(_work(k, d.raw_vjps.get(wrt)) + _equation(_lhs(k.out, k.out_indices), k.expr, f"eq:{k.name}"))
    out.append("\\subsection*{Second order: pushforward and R-op pullbacks}\n")
    out.append(_work(d.jvp) + _equation(_lhs(d.jvp.out, d.jvp.out_indices), d.jvp.expr,
                                                         f"eq:{d.jvp.name}"))
    for wrt, k in d.rvjps.items():
        out.append(_work(k) + _equation(_lhs(k.out, k.out_indices), k.expr, f"eq:{k.name}"))
    out.append(hessian_diagonal_subsection(d))
    return "".join(out)


def hessian_diagonal_subsection(d: DerivedContraction) -> str:
    """Becker–LeCun (every array) and Gauss–Newton (parameters) diagonal rules: the
    expressions the ``bl:`` and ``sqvjp:`` kernels compute, derived from the layer's own
    pullbacks (:mod:`symprop.derive.curvature`)."""
    s = d.spec
    out = ["\\subsection*{Hessian diagonals}\n"
           "Becker--LeCun backpropagates only the diagonal $H$ of the Hessian w.r.t.\\ the output: "
           "each pullback with $\\bar g$ replaced by $H$ and its Jacobian entries squared "
           "(off-diagonal terms dropped); kernels " + ", ".join(_kernel_ref(k.name) for k in d.bls.values()) + ":\n"]
    for wrt, k in d.bls.items():
        out.append(_equation(_lhs("h" + wrt, k.out_indices), k.expr, f"eq:{s.name}:bl:{wrt}"))
    if s.params:
        out.append("Gauss--Newton: with the output Hessian factored per sample as "
                   "$\\sum_k w_k S_{k} S_{k}^\\top$ (signs $w_k$ omitted below), a parameter's diagonal "
                   "is the sum over factor columns and samples of its squared per-sample pullback; the "
                   "exact diagonal adds, at every activation before this layer, the residual "
                   "$f''(x)\\,\\bar g$ as further columns:\n")
        for wrt, sq in d.sqvjps.items():
            k = d.vjps[wrt]
            how = ("one product per sample, so the square factors and the kernel is the Becker--LeCun rule "
                   "at $H = \\sum_k w_k S_k^2$" if sq.mode == "factorized" else
                   "the weight is shared over positions, so the kernel forms each sample's pullback and squares it")
            out.append(_equation(r"\operatorname{diag}(G)_{" + tex(sp.IndexedBase(wrt)[k.out_indices]) + "}",
                                 sq.definition, f"eq:{s.name}:gn:{wrt}")
                       + f"({how}; {_kernel_ref(s.name + '_sqvjp_' + wrt)}).\n")
    return "".join(out)


_KIND = {"map": "", "sum": r"\sum_{\mathcal{G}}", "mean": r"\frac{1}{M}\sum_{\mathcal{G}}",
         "max": r"\max_{\mathcal{G}}"}


def composite_section(d: DerivedComposite) -> str:
    """A composite layer: its stages, the backward sweep stage by stage, the identities the
    reductions imply, the simplified pullbacks, the JVP and the R-op, and its kernels."""
    s = d.spec
    out = [f"\\clearpage\n\\section{{Composite layer \\texttt{{{escape(s.name)}}}}}\n"]
    if s.doc:
        out.append(escape(s.doc) + ".\n\n")
    out.append(f"A group $\\mathcal{{G}}$ is {escape(s.groups)}; $M = |\\mathcal{{G}}|$. Stages, in order "
               "(element-level unless reduced over the group):\n\\begin{align}\n")
    rows = []
    for st in s.stages:
        rhs = tex(st.expr)
        if st.kind != "map":
            rhs = _KIND[st.kind] + r"\left(" + rhs + r"\right)"
        rows.append(tex(st.symbol) + " &= " + rhs)
    out.append(" \\\\\n".join(rows))
    out.append("\n\\end{align}\n")
    out.append("\\subsection*{Backward sweep, stage by stage}\n"
               "Visiting the stages in reverse, the adjoint $\\bar{s}$ of each stage symbol $s$ "
               "(the group-level adjoint of a symbol read by element-level stages is a group sum: "
               "broadcast and sum are adjoints), every form written with the saved "
               + ", ".join(f"${tex(v)}$" for v in d.saved) + ":\n\\begin{align}\n")
    adj_rows = [r"\bar{" + tex(st.symbol) + "} &= " + tex(d.pretty(a)) for st, a in d.sweep]
    out.append(" \\\\\n".join(adj_rows) + "\n\\end{align}\n")
    maxes = [st.symbol for st in s.stages if st.kind == "max"]
    if maxes:
        out.append("The adjoint of the shift " + ", ".join(f"${tex(m)}$" for m in maxes)
                   + " simplifies to zero, so the output is invariant to it and it is a constant "
                   "for every derivative.\n\n")
    if d.identities:
        out.append("The reductions imply, and the simplification uses:\n\\begin{align}\n"
                   + " \\\\\n".join(f"{tex(a)} &= {tex(v)} && \\text{{(from ${tex(sym)}$)}}"
                                       for sym, a, v in d.identities) + "\n\\end{align}\n")
    out.append("\\subsection*{First order: the simplified pullbacks}\n")
    for k, e in d.vjp.items():
        out.append(_equation(r"\bar{g}^{" + tex(sp.Symbol(k)) + "}", d.pretty(e), f"eq:{s.name}:vjp:{k}"))
    out.append("\\subsection*{Second order: pushforward and R-op}\n")
    out.append(_equation(r"\mathcal{R}\{y\}", d.pretty(d.jvp), f"eq:{s.name}:jvp"))
    for k, e in d.rvjp.items():
        out.append(_equation(r"\mathcal{R}\{\bar{g}^{" + tex(sp.Symbol(k)) + r"}\}", e,
                             f"eq:{s.name}:rvjp:{k}"))
    out.append("\\subsection*{Kernels}\n")
    for role, rk in d.role_kernels.items():
        out.append(f"{_kernel_ref(s.name + '_' + role)}: one pass accumulating {len(rk.sums)} group "
                   f"sum{'s' if len(rk.sums) != 1 else ''}"
                   + (" (" + ", ".join(f"$\\sum_{{\\mathcal{{G}}}} {tex(e)}$" for _, e in rk.sums) + ")"
                      if rk.sums else "") + ", then the outputs.\n\n")
    out.append(f"{_kernel_ref(s.name + '_forward')}: the stages in order, one pass per reduction.\n")
    return "".join(out)


def losses_section() -> str:
    ce = derive_softmax_cross_entropy()
    ms = mse()
    sc = sigmoid_cross_entropy()
    out = ["\\clearpage\n\\section{Losses}\n\\subsection*{Softmax cross-entropy}\n",
           "Per sample, with a shift $m$ (the row maximum) for stability and one-hot target $t$:\n",
           _equation(r"\ell", ce.definition, "eq:ce:def"),
           "The derivation checks $\\partial\\ell/\\partial m = " + tex(ce.shift_derivative)
           + "$, so any shift is exact. Gradient as differentiated and in $p = \\mathrm{softmax}(z)$:\n",
           _equation(r"\frac{\partial \ell}{\partial z_j}", ce.grad_raw),
           _equation(r"\frac{\partial \ell}{\partial z_j}", ce.grad, "eq:ce:grad"),
           "Hessian-vector product (kernel \\texttt{softmax\\_cross\\_entropy\\_hvp}), "
           "with $s = \\sum_l p_l v_l$:\n",
           _equation(r"(H v)_j", ce.hvp, "eq:ce:hvp"),
           _equation(r"(H v)_j", ce.hvp_elem),
           "\\subsection*{Mean squared error}\n",
           _equation(r"e(a, t)", ms.elem, "eq:mse:def"),
           _equation(r"\frac{\partial e}{\partial a}", ms.grad_elem),
           _equation(r"\frac{\partial^2 e}{\partial a^2}", ms.hess_elem),
           "averaged over all elements (kernels \\texttt{mse}, \\texttt{mse\\_hvp}).\n",
           "\\subsection*{Sigmoid cross-entropy (logits)}\n",
           _equation(r"e(a, t)", sc.elem, "eq:sce:def"),
           _equation(r"\frac{\partial e}{\partial a}", sc.grad_elem),
           _equation(r"\frac{\partial^2 e}{\partial a^2}", sc.hess_elem),
           "averaged over all elements, in the forms the rewriter chose (finite for logits of any size).\n"]
    return "".join(out)


def model_section(name: str, layer_names: list[str]) -> str:
    """Backpropagation through a stack as the chain rule evaluated from the loss back."""
    L = len(layer_names)
    rows = []
    for k, nm in enumerate(layer_names, start=1):
        rows.append(f"{k} & \\texttt{{{escape(nm)}}} \\\\")
    chain = " ".join(f"J_{{{k}}}^\\top" for k in range(1, L + 1))
    return (f"\\clearpage\n\\section{{Model \\texttt{{{escape(name)}}}: the composed chain rule}}\n"
            "Forward: $x_0 \\mapsto x_1 = f_1(x_0) \\mapsto \\dots \\mapsto x_{" + str(L)
            + "} = f_{" + str(L) + "}(x_{" + str(L - 1) + "})$, then the loss $L(x_{" + str(L) + "})$.\n"
            "\\begin{center}\\begin{tabular}{rl}\\hline $k$ & layer $f_k$\\\\\\hline\n"
            + "\n".join(rows) + "\n\\hline\\end{tabular}\\end{center}\n"
            "Backward: with $J_k = \\partial x_k/\\partial x_{k-1}$ and $\\bar g_{" + str(L)
            + "} = \\partial L/\\partial x_{" + str(L) + "}$,\n"
            "\\begin{align}\n\\bar g_{k-1} &= J_k^\\top \\bar g_k,\\qquad "
            "\\frac{\\partial L}{\\partial \\theta_k} = \\Big(\\frac{\\partial x_k}{\\partial \\theta_k}\\Big)^{\\!\\top}"
            " \\bar g_k,\\qquad k = " + str(L) + ", \\dots, 1,\\\\\n"
            "\\frac{\\partial L}{\\partial x_0} &= " + chain + "\\, \\bar g_{" + str(L) + "}\n\\end{align}\n"
            "--- the Jacobian products in the reverse order of the forward pass, each applied by its "
            "layer's pullback kernel without forming $J_k$. Second order runs the same sweep on "
            "$(\\bar g_k, \\mathcal{R}\\{\\bar g_k\\})$ after a forward sweep of $\\mathcal{R}\\{x_k\\}$, "
            "starting from $\\mathcal{R}\\{\\bar g_{" + str(L) + "}\\} = H_L\\, \\mathcal{R}\\{x_{" + str(L)
            + "}\\}$ (the loss HVP).\n")


PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage[T1]{fontenc}
\usepackage[margin=2cm]{geometry}
\usepackage{amsmath,amssymb}
\allowdisplaybreaks
\sloppy
\numberwithin{equation}{section}
\title{symprop: derivations of first- and second-order backpropagation}
\date{}
\begin{document}
\maketitle
"""


def _elementwise_builtins() -> dict:
    return {**builtins.ACTIVATIONS, **builtins.LEARNABLE, **builtins.MASKS, **builtins.PENALTIES}


def builtin_layer_names() -> list[str]:
    return (list(_elementwise_builtins()) + list(builtins.CONTRACTIONS) + list(builtins.WINDOWS)
            + list(builtins.COMPOSITES))


def document(layers: list[str] | None = None, extra: list = (), model: tuple | None = None,
             losses: bool = True) -> str:
    """The full document: notation, one section per selected built-in layer (default: all),
    one per extra spec (:class:`ElementwiseSpec` or :class:`ContractionSpec`), the losses and,
    with ``model=(name, [layer names])``, the model's composed chain rule."""
    known = builtin_layer_names()
    chosen = known if layers is None else list(layers)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"latex: unknown layer(s) {unknown}; built-ins are {known}")
    parts = [PREAMBLE, NOTATION]
    for nm in chosen:
        if nm in _elementwise_builtins():
            parts.append(elementwise_section(derive_elementwise(_elementwise_builtins()[nm])))
        elif nm in builtins.COMPOSITES:
            parts.append(composite_section(derive_composite(builtins.COMPOSITES[nm])))
        else:
            spec = {**builtins.CONTRACTIONS, **builtins.WINDOWS}[nm]
            parts.append(contraction_section(derive_contraction(spec)))
    for spec in extra:
        if isinstance(spec, ElementwiseSpec):
            parts.append(elementwise_section(derive_elementwise(spec)))
        elif isinstance(spec, ContractionSpec):
            parts.append(contraction_section(derive_contraction(spec)))
        elif isinstance(spec, CompositeSpec):
            parts.append(composite_section(derive_composite(spec)))
        else:
            raise TypeError(f"latex: extra specs must be ElementwiseSpec or ContractionSpec, got {type(spec).__name__}")
    if losses:
        parts.append(losses_section())
    if model is not None:
        parts.append(model_section(*model))
    parts.append("\\end{document}\n")
    return "".join(parts)


def compile_pdf(text: str, pdf_path) -> "Path":
    """Compile ``text`` with pdflatex in a temporary directory (shell escape off, run twice for
    references) and move the PDF to ``pdf_path``; errors quote the LaTeX log."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    exe = shutil.which("pdflatex")
    if exe is None:
        raise FileNotFoundError("pdflatex not found: install TeX (Debian: texlive-latex-base "
                                "texlive-latex-recommended)")
    pdf_path = Path(pdf_path)
    with tempfile.TemporaryDirectory(prefix="symprop-latex-") as tmp:
        src = Path(tmp) / "derivations.tex"
        src.write_text(text)
        for _ in range(2):
            r = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                                src.name], cwd=tmp, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                log = (Path(tmp) / "derivations.log")
                lines = log.read_text(errors="replace").splitlines() if log.exists() else r.stdout.splitlines()
                errs = [ln for i, ln in enumerate(lines) if ln.startswith("!")]
                raise RuntimeError("pdflatex failed: " + ("; ".join(errs[:3]) or "\n".join(lines[-15:])))
        tmp_pdf = pdf_path.with_name(pdf_path.name + ".tmp")
        shutil.copyfile(Path(tmp) / "derivations.pdf", tmp_pdf)
        tmp_pdf.replace(pdf_path)
    return pdf_path
