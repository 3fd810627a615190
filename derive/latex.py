"""The derivations as a LaTeX document: the human-readable twin of ``generated/``.

Every formula is printed from the same derived SymPy objects that ``codegen`` prints as
kernels (no hand-typed formulas): definitions, first-order pullbacks (VJPs), pushforwards
(JVPs), the R-op pullbacks, the Hessian-diagonal rules, and the simplified forms with their
op counts. With a model, the document adds the network-level chain rule (layer shapes, the
composed first- and second-order sweeps). Kernel names appear only in the appendix: one table
per layer, and per model the kernels each training call runs, in order.

Printing is for a reader: sections titled in words (the spec name once, in the text), Latin
Modern type, index names chosen per section so each symbol has one meaning, upright
multi-letter subscripts, Iverson brackets without unit factors, the adjoint of a window read
guarded in the compact form ``[s | ĥ + p − k d]·[0 ≤ h < H_out]`` (checked equal to the
normalised conditions the derivation produces, :class:`CompactGuard`), ``expm1``/``log1p``
written out, overflow guards as cases, CSE temporaries named τ₁, τ₂, … only where an output
would not fit on two lines, and small expressions rewritten for display (:func:`display_form`;
always checked equal, never fed back to the kernels). :attr:`Document.printed` records every
printed kernel expression as it was before display rewriting, so tests compare those with
the kernels' own expressions.

    from symprop.derive import latex
    text = latex.document()                     # every built-in layer and loss
    text = latex.document(layers=["tanh", "conv2d"], extra=[my_spec])
    text = latex.document(model=latex.describe_model("m", (64,), configs))   # configs: Layer.config()
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import sympy as sp
from sympy.core.mul import _keep_coeff
from sympy.printing.latex import LatexPrinter

from . import builtins
from .affine import AxisMap, _solution_condition
from .cost import summed_work
from .elementwise import DerivedElementwise, ElementwiseSpec, derive_elementwise
from .composite import CompositeSpec, DerivedComposite, derive_composite
from .indexed import ContractionSpec, DerivedContraction, _expand, derive_contraction
from .losses import PointwiseLossSpec, derive_softmax_cross_entropy, derive_user_loss, mse, sigmoid_cross_entropy


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




# ---------------------------------------------------------------- compact guards of window adjoints
@dataclass(frozen=True)
class CompactGuard:
    """The guard of the adjoint of one window axis ``û = h·s + k·d − p`` in the form a reader
    wants: ``[s | û + p − k d]·[0 ≤ h < H_out]`` with ``h = (û + p − k d)/s``, derived from the
    :class:`AxisMap` (the same rule :func:`symprop.derive.affine.adjoint_delta` applies)."""
    map: AxisMap

    @property
    def numerator(self) -> sp.Expr:
        m = self.map
        return m.inp + m.padding - m.kernel * m.dilation

    @property
    def position(self) -> sp.Expr:
        """The output position that reads input position ``inp`` through kernel offset ``kernel``."""
        return self.numerator / self.map.stride

    def normalised(self) -> frozenset:
        """The conditions as the derivation produces them: the adjoint-map rule's relations after
        the derivation's expansion (``Σ`` bodies are distributed, relations with them)."""
        m = self.map
        cond = _solution_condition(self.numerator, m.stride, (sp.S.Zero, m.out_extent - 1))
        guarded = _expand(sp.Piecewise((sp.Symbol("value"), cond), (0, True)))
        return frozenset(sp.And.make_args(guarded.args[0].cond))

    def conditions(self) -> tuple:
        """The compact guard as unevaluated SymPy relations: ``s | numerator``, ``0 ≤ h``,
        ``h < H_out`` (``h`` the output position); equal to :meth:`normalised` (tested)."""
        m = self.map
        out = [] if m.stride == 1 else [sp.Eq(sp.Mod(self.numerator, m.stride), 0, evaluate=False)]
        return tuple(out + [sp.Le(0, self.position, evaluate=False),
                            sp.Lt(self.position, m.out_extent, evaluate=False)])

    def holds(self, values: dict) -> bool:
        """Evaluate the compact guard at integer ``values`` of its symbols."""
        m = self.map
        num = int(self.numerator.subs(values))
        s, hi = int(m.stride.subs(values)), int(m.out_extent.subs(values))
        return num % s == 0 and 0 <= num // s < hi


def canonical(rel) -> tuple:
    """A relation as ``(kind, expr)`` with ``expr ≥ 0`` (``kind`` "ge") or ``expr = 0`` ("eq"),
    expanded; strict inequalities of integers become non-strict (``a < b`` ⇔ ``b − a − 1 ≥ 0``;
    window positions are integers wherever the divisibility guard holds). Any other condition
    is its own key."""
    if not isinstance(rel, (sp.Eq, sp.Gt, sp.Lt, sp.Ge, sp.Le)):
        return ("other", rel)
    a, b = rel.args
    if isinstance(rel, sp.Eq):
        return ("eq", sp.expand(a - b))
    if isinstance(rel, (sp.Gt, sp.Lt)):
        hi, lo = (a, b) if isinstance(rel, sp.Gt) else (b, a)
        return ("ge", sp.expand(hi - lo - 1))
    hi, lo = (a, b) if isinstance(rel, sp.Ge) else (b, a)
    return ("ge", sp.expand(hi - lo))


def _is_iverson(e) -> bool:
    """``Piecewise((value, condition), (0, True))``: printed as ``[condition]·value``."""
    return (isinstance(e, sp.Piecewise) and len(e.args) == 2 and e.args[1].cond == sp.true
            and e.args[1].expr == 0)


def _neg(e) -> bool:
    return e.could_extract_minus_sign()


# ---------------------------------------------------------------- printer
def _mathematical_names(expr):
    """``expm1(u)`` → ``e^u − 1`` and ``log1p(u)`` → ``log(1 + u)``: the same functions, as a reader
    writes them (the kernels' accurate forms are an implementation detail)."""
    names = {"expm1": lambda u: sp.exp(u) - 1, "log1p": lambda u: sp.log(1 + u)}
    return expr.replace(lambda e: isinstance(e, sp.Function) and type(e).__name__ in names,
                        lambda e: names[type(e).__name__](*e.args))


#: a multi-letter subscript such as H_out: set upright (H_{\mathrm{out}}), not as a product of letters
_WORD_SUBSCRIPT = re.compile(r"_\{([A-Za-z]{2,})\}")


def upright_subscripts(t: str) -> str:
    """``H_{out}`` → ``H_{\\mathrm{out}}`` in a LaTeX string (commands such as ``\\max`` untouched)."""
    return _WORD_SUBSCRIPT.sub(r"_{\\mathrm{\1}}", t)


#: symbols of the composite specs printed as a reader writes them
_NAMED = {"xhat": r"\hat{x}", "rstd": r"\rho", "l1": r"\lambda_1", "l2": r"\lambda_2", "var": r"\mathrm{var}", "eps": r"\varepsilon",
          "running_mean": r"\hat{\mu}", "running_var": r"\hat{\sigma}^2"}


class DerivationPrinter(LatexPrinter):
    """SymPy's LaTeX printer with the document's notation.

    ``g`` is ḡ (the incoming gradient), ``gx``/``hx`` the pullback ḡ^x and the Hessian-diagonal
    rule D^x of array ``x``, ``R·`` arrays are directions 𝓡{·}; ``names`` renames symbols for one
    section (so each letter has one meaning in the whole document); ``maps`` are the section's
    window axes, whose adjoint guards print compactly and whose solved output positions print
    as ``h``/``w``. Guarded terms print as Iverson brackets, ``[c]·1`` as ``[c]``."""

    def __init__(self, names: dict | None = None, maps=(), arrays=()):
        super().__init__({"mul_symbol": None})
        self.names = {"H": "D", **(names or {})}
        self.guards = tuple(CompactGuard(m) for m in maps)
        self.arrays = set(arrays) | {"x", "y", "W", "b"}

    # symbols
    def _print_Symbol(self, expr, style="plain"):
        name = expr.name
        if name in self.names:
            return self.names[name]
        m = re.fullmatch(r"_t(\d+)", name)
        if m:                                   # CSE temporaries: τ₁, τ₂, …
            return r"\tau_{%d}" % (int(m.group(1)) + 1)
        if name.endswith("_") or name.endswith("'"):   # fresh / renamed bound indices: u_ → u'
            return self._print_Symbol(sp.Symbol(name[:-1])) + "'"
        if name == "g":
            return r"\bar{g}"
        if name == "h" and not expr.is_integer:
            return "D"
        if name.startswith("R") and len(name) > 1 and (name[1:] in self.arrays or name[1:] == "g"
                                                        or name[2:] in self.arrays and name[1] in "gh"):
            return r"\mathcal{R}\{" + self._print_Symbol(sp.Symbol(name[1:])) + r"\}"
        if name.startswith("R") and name[1:] in ("gamma", "beta", "alpha"):
            return r"\mathcal{R}\{" + super()._print_Symbol(sp.Symbol(name[1:]), style) + r"\}"
        if len(name) > 1 and name[0] in "gh" and name[1:] in self.arrays:
            return (r"\bar{g}" if name[0] == "g" else "D") + "^{" + self._print_Symbol(sp.Symbol(name[1:])) + "}"
        if len(name) > 1 and name[0] == "s" and name[1:] in self.arrays:
            return r"\partial y/\partial " + self._print_Symbol(sp.Symbol(name[1:]))
        if name in _NAMED:
            return _NAMED[name]
        return upright_subscripts(super()._print_Symbol(expr, style))

    def _print_finite_or(self, expr, exp=None):
        """The overflow guard as cases (``\\guarded`` of the preamble): the function, and its limit."""
        out = r"\guarded{" + self._print(expr.args[0]) + "}{" + self._print(expr.args[1]) + "}"
        return out if exp is None else r"\left(" + out + r"\right)^{" + exp + "}"

    def _needs_mul_brackets(self, expr, first=False, last=False) -> bool:
        """Cases as the last factor of a product need no parentheses (nothing follows the brace)."""
        if isinstance(expr, sp.Piecewise) and last and not _is_iverson(expr):
            return False
        return super()._needs_mul_brackets(expr, first=first, last=last)

    def _print_GroupSum(self, expr):
        return r"\sum_{\mathcal{G}}\!\left(" + self._print(expr.args[0]) + r"\right)"

    def doprint(self, expr):
        """Print ``expr`` with the kernels' numerically motivated functions in their mathematical
        names: ``expm1(u)`` as ``e^u − 1``, ``log1p(u)`` as ``log(1 + u)`` (equal by definition)."""
        if isinstance(expr, sp.Basic):
            expr = _mathematical_names(expr)
        return super().doprint(expr)

    def _print_Function(self, expr, exp=None):
        if type(expr).__name__ in ("expm1", "log1p"):          # reached only by _print of a part
            t = self._print(_mathematical_names(expr))
            return (r"\left(" + t + r"\right)") + (f"^{{{exp}}}" if exp else "")
        return super()._print_Function(expr, exp)

    # sums over full index ranges print as Σ_{i,j}; the ranges are stated per section
    def _print_Sum(self, expr):
        if not all(lim[1] == 0 for lim in expr.limits):
            return super()._print_Sum(expr)
        sub = ",".join(self._print(lim[0]) for lim in expr.limits)
        body = self._print(expr.function)
        if isinstance(expr.function, sp.Add):
            body = r"\left(" + body + r"\right)"
        return r"\sum_{" + sub + "} " + body

    # sums of terms: a positive term first when there is one (t − a, not −a + t)
    def ordered_terms(self, expr) -> list:
        terms = self._as_ordered_terms(expr, order=None)
        if _neg(terms[0]) and any(not _neg(t) for t in terms):
            terms = [t for t in terms if not _neg(t)] + [t for t in terms if _neg(t)]
        return terms

    def _print_Add(self, expr, order=None):
        out = ""
        for i, term in enumerate(self.ordered_terms(expr)):
            if i == 0:
                pass
            elif _neg(term):
                out += " - "
                term = -term
            else:
                out += " + "
            t = self._print(term)
            if self._needs_add_brackets(term):
                t = r"\left(%s\right)" % t
            out += t if i == len(expr.args) - 1 else close_trailing_cases(t)
        return out

    # Iverson brackets
    def iverson(self, pw) -> tuple[list[list[str]], sp.Expr]:
        """Bracket groups (one per window axis, then the rest) and the guarded value, with the
        solved output positions of compact window guards substituted back as h, w."""
        value, cond = pw.args[0]
        conds = {canonical(c): c for c in sp.And.make_args(cond)}
        groups = []
        for gd in self.guards:
            normal = {canonical(c) for c in gd.normalised()}
            if normal <= set(conds):
                for key in normal:
                    del conds[key]
                groups.append(self.compact_brackets(gd))
                value = value.replace(
                    lambda e: isinstance(e, sp.Indexed),
                    lambda e, gd=gd: e.base[tuple(gd.map.out if sp.expand(ix - gd.position) == 0 else ix
                                                  for ix in e.indices)])
        rest = sorted(conds.values(), key=sp.default_sort_key)
        if rest:
            groups.append([self._bracket(c) for c in rest])
        return groups, value

    def _bracket(self, c) -> str:
        t = self._print(c)
        return (r"\left[" + t + r"\right]") if r"\frac" in t else "[" + t + "]"

    def compact_brackets(self, gd: CompactGuard) -> list[str]:
        m = gd.map
        out = []
        if m.stride != 1:
            out.append("[" + self._print(m.stride) + r" \mid " + self.numerator_tex(gd) + "]")
        out.append(r"[0 \le " + self._print(m.out) + " < " + self._print(m.out_extent) + "]")
        return out

    def numerator_tex(self, gd: CompactGuard) -> str:
        m = gd.map
        t = self._print(m.inp)
        if m.padding != 0:
            t += " + " + self._print(m.padding)
        kd = self._print(m.kernel) + ("" if m.dilation == 1 else " " + self._print(m.dilation))
        return t + " - " + kd

    def forward_tex(self, gd: CompactGuard) -> str:
        """The window read ``h s + k d − p`` in the order a reader expects."""
        m = gd.map
        t = self._print(m.out) + ("" if m.stride == 1 else " " + self._print(m.stride))
        t += " + " + self._print(m.kernel) + ("" if m.dilation == 1 else " " + self._print(m.dilation))
        return t + ("" if m.padding == 0 else " - " + self._print(m.padding))

    def _print_Indexed(self, expr):
        if not self.guards:
            return super()._print_Indexed(expr)
        idx = []
        for ix in expr.indices:
            gd = next((g for g in self.guards if sp.expand(ix - g.map.forward_index()) == 0), None)
            idx.append(self._print(ix) if gd is None else self.forward_tex(gd))
        return "{" + self._print(expr.base) + "}_{" + ",".join(idx) + "}"

    def position_tex(self, gd: CompactGuard) -> str:
        m = gd.map
        return self._print(m.out) + " = (" + self.numerator_tex(gd) + ")/" + self._print(m.stride)

    def _print_Piecewise(self, expr):
        if not _is_iverson(expr):
            return super()._print_Piecewise(expr)
        groups, value = self.iverson(expr)
        br = "".join(b for g in groups for b in g)
        return br if value == 1 else br + r"\, " + self._print_factor(value)

    def _print_factor(self, e) -> str:
        t = self._print(e)
        return r"\left(" + t + r"\right)" if isinstance(e, sp.Add) else t

    def split_iverson(self, expr):
        """``c·[conds]·v`` → (sign, bracket groups, c·v) or None when no factor is a guard."""
        facs = sp.Mul.make_args(expr)
        pws = [f for f in facs if _is_iverson(f)]
        if not pws:
            return None
        groups, rest = [], [f for f in facs if not _is_iverson(f)]
        for p in pws:
            g, v = self.iverson(p)
            groups += g
            rest.append(v)
        other = sp.Mul(*rest)
        sign = ""
        if _neg(other):
            sign, other = "-", -other
        return sign, groups, other

    def _print_Mul(self, expr):
        parts = self.split_iverson(expr)
        if parts is None:
            facs = sp.Mul.make_args(expr)
            adds = [f for f in facs if isinstance(f, sp.Add)]
            if adds and len(adds) < len(facs) and not any(f.is_Pow and f.exp.is_negative for f in facs) \
                    and not _neg(expr) and not any(isinstance(f, sp.Piecewise) for f in facs):
                # sums last: p_j (v_j − s), not (v_j − s) p_j (not after cases, which would seem to hold them)
                rest = sp.Mul(*[f for f in facs if not isinstance(f, sp.Add)])
                return super()._print_Mul(rest) + " " + " ".join(r"\left(" + self._print(a) + r"\right)"
                                                                  for a in adds)
            return super()._print_Mul(expr)
        sign, groups, other = parts
        br = "".join(b for g in groups for b in g)
        return sign + br + ("" if other == 1 else r"\, " + self._print_factor(other))

    # a term as pieces that may go on separate lines
    def term_parts(self, term) -> list[str]:
        """A (positive) term as line-breakable pieces: a guarded sum gives its Σ with the first
        guards, the other guard groups, and the guarded value."""
        coeff, core = sp.S.One, term
        if isinstance(term, sp.Mul):
            sums = [f for f in term.args if isinstance(f, sp.Sum)]
            if len(sums) == 1:
                coeff, core = term / sums[0], sums[0]
        if not isinstance(core, sp.Sum) or not all(lim[1] == 0 for lim in core.limits):
            return [self._print(term)]
        inner = self.split_iverson(core.function)
        if inner is None:
            return [self._print(term)]
        sign, groups, value = inner
        prefix = (self._print(coeff) + " " if coeff != 1 else "") + r"\sum_{" + ",".join(
            self._print(lim[0]) for lim in core.limits) + "} " + sign
        pieces = ["".join(g) for g in groups]
        pieces[0] = prefix + pieces[0]
        if value != 1:
            pieces.append(self._print_factor(value))
        return pieces


def _group_end(t: str, i: int) -> int:
    """The index after the brace group that opens at ``t[i] == "{"``."""
    depth = 0
    for j in range(i, len(t)):
        depth += {"{": 1, "}": -1}.get(t[j], 0) if t[j - 1:j] != "\\" or j == 0 else 0
        if depth == 0:
            return j + 1
    return len(t)


def close_trailing_cases(t: str) -> str:
    """A term that ends with cases (or an overflow guard), followed by more terms, with the cases
    in parentheses: otherwise what follows the open brace would seem to belong to the last case."""
    if t.endswith(r"\end{cases}"):
        i = t.rfind(r"\begin{cases}")
        return t[:i] + r"\left(" + t[i:] + r"\right)"
    i = t.rfind(r"\guarded{")
    if i >= 0:
        j = _group_end(t, i + len(r"\guarded"))
        if _group_end(t, j) == len(t):
            return t[:i] + r"\left(" + t[i:] + r"\right)"
    return t


def tex(expr, printer: DerivationPrinter | None = None) -> str:
    """LaTeX of one SymPy expression in the document's notation."""
    return (printer or _PLAIN).doprint(expr)


_PLAIN = DerivationPrinter()


# ---------------------------------------------------------------- width estimate and line breaking
_CMD_WIDTH = {"sum": 2.0, "cdot": 0.8, "quad": 2.0, "qquad": 4.0, "mid": 1.6, "le": 1.8, "ge": 1.8,
              "in": 1.6, "to": 1.8, "top": 0.8, "langle": 0.6, "rangle": 0.6, "dots": 2.0, "cdots": 2.0,
              "ldots": 2.0, "times": 1.6, "mapsto": 2.0, "odot": 1.6, "circ": 1.2, "tanh": 3.6,
              "log": 2.6, "exp": 2.6, "max": 3.0, "min": 3.0, "cosh": 3.6, "sinh": 3.6, "partial": 1.0,
              "nabla": 1.2, "ell": 0.8, "left": 0.0, "right": 0.0, "notag": 0.0, "label": 0.0, "\\": 0.0}
_WRAPPERS = {"bar", "hat", "tilde", "mathcal", "mathrm", "mathit", "mathbf", "operatorname", "text", "texttt"}
_SPACES = {",": 0.3, ";": 0.5, "!": 0.0, ":": 0.4, " ": 0.3, "{": 0.5, "}": 0.5, "|": 0.5}


def tex_width(s: str) -> float:
    """Rough display width of a LaTeX math string in units of one italic letter (about 5.5 pt at
    11 pt): good enough to decide whether an equation fits on a line."""
    w, _ = _width(s, 0)
    return w


def _group(s: str, i: int):
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] == "{":
        w, i = _width(s, i + 1)
        return w, i + 1
    if i < len(s) and s[i] == "\\":
        j = i + 1
        while j < len(s) and s[j].isalpha():
            j += 1
        return _CMD_WIDTH.get(s[i + 1:j], 1.0), max(j, i + 2)
    return (1.0 if i < len(s) else 0.0), i + 1


def _width(s: str, i: int):
    total = 0.0
    while i < len(s):
        c = s[i]
        if c == "}":
            return total, i
        if c == "{":
            w, i = _width(s, i + 1)
            total, i = total + w, i + 1
        elif c == "\\":
            j = i + 1
            while j < len(s) and s[j].isalpha():
                j += 1
            name = s[i + 1:j]
            if not name:                               # \, \; \{ \! …
                total += _SPACES.get(s[i + 1:i + 2], 1.0) if i + 1 < len(s) else 0
                i += 2
                continue
            i = j
            if name == "frac":
                a, i = _group(s, i)
                b, i = _group(s, i)
                total += max(a, b) + 0.4
            elif name == "guarded":                    # cases: the wider line and its note
                a, i = _group(s, i)
                b, i = _group(s, i)
                total += max(a, b) + 12.0
            elif name == "sqrt":
                a, i = _group(s, i)
                total += a + 1.2
            elif name in _WRAPPERS:
                a, i = _group(s, i)
                total += a * (1.15 if name == "texttt" else 1.0)
            elif name in ("left", "right"):
                if i < len(s) and s[i] == "\\":
                    i += 2
                else:
                    i += 1
                total += 0.5
            elif name in ("label", "tag"):
                _, i = _group(s, i)
            else:
                total += _CMD_WIDTH.get(name, 1.0)
        elif c in "^_":
            a, i = _group(s, i + 1)
            total += 0.7 * a
        elif c in " &":
            i += 1
        elif c in "+-=<>":
            total += 1.7
            i += 1
        elif c in "()[],;.'|":
            total += 0.5
            i += 1
        else:
            total += 1.0
            i += 1
    return total, i


#: display width (in :func:`tex_width` units) of one equation line: 17 cm of text less the number
LINE = 62.0


def _pack(lhs: str, terms: list[list[str]]) -> list[str]:
    """Lines of the right-hand side: whole terms while they fit, long terms broken between their
    pieces (guards, value) with a leading ·."""
    cap = LINE - tex_width(lhs) - 3
    lines, cur = [], ""
    for parts in terms:
        whole = " ".join(parts)
        if cur and tex_width(cur + " " + whole) <= cap and not whole.startswith("= "):
            cur += " " + whole
            continue
        if cur:
            lines.append(cur)
            cur = ""
        if tex_width(whole) <= cap:
            cur = whole
            continue
        for j, p in enumerate(parts):
            if not cur:
                cur = p if j == 0 else r"\cdot " + p
            elif tex_width(cur + " " + p) <= cap:
                cur += " " + p
            else:
                lines.append(cur)
                cur = r"\cdot " + p
    lines.append(cur)
    return lines


def rhs_terms(expr, printer: DerivationPrinter) -> list[list[str]]:
    """``expr`` as terms (sign included), each a list of line-breakable pieces."""
    expr = _mathematical_names(expr)
    terms = printer.ordered_terms(expr) if isinstance(expr, sp.Add) else [expr]
    out = []
    for k, t in enumerate(terms):
        sign = ""
        if _neg(t):
            sign, t = "- ", -t
        elif k:
            sign = "+ "
        parts = printer.term_parts(t)
        parts[0] = sign + parts[0]
        if k < len(terms) - 1:
            parts[-1] = close_trailing_cases(parts[-1])
        out.append(parts)
    return out


@dataclass
class Row:
    """One equation of a display: ``lhs = rhs`` (rhs given as terms of pieces)."""
    lhs: str
    terms: list
    label: str | None = None


def row(lhs: str, expr, printer: DerivationPrinter, label: str | None = None, then=None) -> Row:
    """``lhs = expr``, and ``= then`` (the same value in another form) on the next line."""
    terms = rhs_terms(expr, printer)
    if then is not None:
        t = rhs_terms(then, printer)
        t[0][0] = "= " + t[0][0]
        terms += [[" ".join(x for p in t for x in p)]]
    return Row(lhs, terms, label)


def display(rows: list[Row]) -> str:
    """Rows as one display: ``equation`` when it is a single short line, else ``align`` (aligned
    at =, long right-hand sides continued on indented lines). Only labelled rows are numbered."""
    if not rows:
        return ""
    packed = [(r, _pack(r.lhs, r.terms)) for r in rows]
    if len(rows) == 1 and len(packed[0][1]) == 1:
        r, (line,) = packed[0]
        lab = f"\\label{{{r.label}}}" if r.label else "\\notag"
        return "\\begin{equation}\n" + r.lhs + " = " + line + lab + "\n\\end{equation}\n"
    body = []
    for r, lines in packed:
        lab = f"\\label{{{r.label}}}" if r.label else "\\notag"
        if r.lhs == "":                  # a "where" line under the previous row: the temporaries
            body.append(r"&\qquad \text{where } " + (r" \notag\\" + "\n" + r"&\qquad ").join(lines) + lab)
            continue
        text = r.lhs + " &= " + lines[0]
        for ln in lines[1:]:
            text += " \\notag\\\\\n" + ("&" + ln if ln.startswith("= ") else r"&\quad " + ln)
        body.append(text + lab)
    return "\\begin{align}\n" + " \\\\\n".join(body) + "\n\\end{align}\n"


# ---------------------------------------------------------------- display-only simplification
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


# ---------------------------------------------------------------- the document being written
@dataclass
class Printed:
    """A kernel expression as the document prints it: ``expr`` is the kernel's own expression
    (before display rewriting); ``shown`` is what was printed, with CSE temporaries ``temps``."""
    kernel: str
    output: str
    expr: sp.Expr
    shown: sp.Expr
    temps: list = field(default_factory=list)


@dataclass
class Document:
    """The LaTeX text and every kernel expression printed in it."""
    text: str
    printed: list          # [Printed]: every kernel expression in the text


def _kernel_ref(name: str, breakable: bool = False) -> str:
    """A kernel's name in typewriter type; ``breakable`` allows line breaks after underscores
    (for table cells)."""
    text = escape(name)
    if breakable:
        text = text.replace(r"\_", r"\_\allowbreak{}")
    return r"\texttt{" + text + "}"


#: what a reader is told about each built-in layer (math in math mode); user specs print their doc
DESCRIPTIONS = {
    "tanh": r"The hyperbolic tangent.",
    "sigmoid": r"The logistic sigmoid $\sigma(x) = 1/(1 + e^{-x})$.",
    "relu": r"The rectified linear unit, differentiated almost everywhere: $f'(x) = [x > 0]$ and "
            r"$f'' = 0$ (the distributional $\delta$ at 0 is dropped, as in every framework).",
    "softplus": r"Softplus, a smooth ReLU; the kernels evaluate it in the overflow-free form "
                r"$\max(0, x) + \log(1 + e^{-|x|})$.",
    "leaky_relu": r"Leaky ReLU with slope $\alpha$ below 0.",
    "elu": r"The exponential linear unit: $x$ for $x > 0$ and $\alpha(e^x - 1)$ otherwise.",
    "silu": r"The sigmoid-weighted linear unit $x\,\sigma(x)$.",
    "swish": r"Swish, $x\,\sigma(\beta x)$ for a fixed $\beta$.",
    "gelu": r"The Gaussian error linear unit in its exact form $x\,\Phi(x) = \tfrac{x}{2}(1 + \operatorname{erf}(x/\sqrt 2))$.",
    "mish": r"Mish, $x \tanh(\operatorname{softplus}(x))$.",
    "prelu": r"PReLU: leaky ReLU whose slope $\alpha$ below 0 is learned (one per channel, or one shared).",
    "swish_learnable": r"Swish $x\,\sigma(\beta x)$ with a learned $\beta$ (one per channel, or one shared).",
    "dropout": r"Inverted dropout: $y = m x$ with a mask $m \in \{0, 1/(1-p)\}$ drawn per forward call "
               r"(each element kept with probability $1 - p$); the same kernels mask a dense layer's weights "
               r"for DropConnect.",
    "penalty": r"The weight penalty $\lambda_1 |x| + \tfrac{\lambda_2}{2} x^2$ of one weight $x$ (of a fully connected "
               r"or convolution layer), added to the loss.",
    "batchnorm": r"Batch normalisation in training mode: each channel normalised by its batch mean and "
                 r"biased batch variance, then scaled by $\gamma$ and shifted by $\beta$.",
    "batchnorm_eval": r"Batch normalisation in evaluation mode: the running mean $\hat\mu$ and variance "
                      r"$\hat\sigma^2$ (constants here) in place of the batch statistics.",
    "softmax": r"Softmax over the $K$ classes of a sample, shifted by the row maximum so that no exponential "
               r"overflows.",
    "dense": r"The fully connected layer $y = x W^\top + b$ for a batch $x$ of $N$ rows, with $W$ of shape "
             r"$O \times I$ (PyTorch's layout).",
    "conv2d": r"Two-dimensional convolution (a cross-correlation, as in PyTorch) of an input of shape "
              r"$N \times C_{\mathrm{in}} \times H_{\mathrm{in}} \times W_{\mathrm{in}}$ with a weight of shape "
              r"$C_{\mathrm{out}} \times C_{\mathrm{in}} \times K_h \times K_w$ and stride $(s_h, s_w)$, padding $(p_h, p_w)$, "
              r"dilation $(d_h, d_w)$.",
    "avgpool2d": r"Average pooling over $K_h \times K_w$ windows with stride $(s_h, s_w)$ and padding "
                 r"$(p_h, p_w)$; zero padding counts in the mean (PyTorch's \texttt{count\_include\_pad=True}).",
    "maxpool2d": r"Max pooling, written as its local linearisation: $A_{n,c,h,w,k,l}$ is the one-hot argmax "
                 r"of each window (the first maximum in row-major order, as in PyTorch), saved by the "
                 r"forward pass and held fixed by every derivative, so the second derivative is zero.",
}

#: section titles of the built-in layers, as a reader names them (the spec name is given once in the text)
TITLES = {"tanh": "Hyperbolic tangent", "sigmoid": "Logistic sigmoid", "relu": "Rectified linear unit",
          "softplus": "Softplus", "leaky_relu": "Leaky rectified linear unit", "elu": "Exponential linear unit",
          "silu": "Sigmoid-weighted linear unit", "swish": "Swish", "gelu": "Gaussian error linear unit",
          "mish": "Mish", "prelu": "Parametric rectified linear unit", "swish_learnable": "Swish with a learned slope",
          "dropout": "Dropout", "penalty": "Weight penalty", "dense": "Fully connected layer",
          "conv2d": "Two-dimensional convolution", "avgpool2d": "Average pooling", "maxpool2d": "Max pooling",
          "batchnorm": "Batch normalisation, training mode", "batchnorm_eval": "Batch normalisation, evaluation mode",
          "softmax": "Softmax"}
#: the named models' titles (``symprop train --model NAME``)
MODEL_TITLES = {"lenet": "LeNet-5", "cnn": "a small convolutional network", "mlp": "a multilayer perceptron",
                "cifar_cnn": "a convolutional network for CIFAR-10"}


def _title(spec) -> str:
    """A section title in words: the built-in's name, or for a user spec the first clause of its
    docstring (capitalised) when that is short, else its name with spaces for underscores."""
    if _builtin_specs().get(spec.name) is spec and spec.name in TITLES:
        return TITLES[spec.name]
    first = re.split(r"[.;:\n]", spec.doc or "")[0].strip()
    words = first if 0 < len(first) <= 48 else spec.name.replace("_", " ").strip()
    return escape(_capitalised(words))


def _capitalised(text: str) -> str:
    """``text`` with a capital first letter when its first word is a plain word (a name such as
    ``my_act#1`` is left as written)."""
    first = text.split(" ", 1)[0]
    return text[:1].upper() + text[1:] if first.isalpha() and first.islower() else text


def _heading(spec) -> str:
    """The subsection of one layer, kept with at least the first lines of what follows it."""
    return f"\\needlines{{8}}\n\\subsection{{{_title(spec)}}}\\label{{sec:{spec.name}}}\n"


def _spec_note(name: str) -> str:
    """The one mention of a layer's spec name, for readers who look for the code, with a pointer
    to its kernels in the appendix."""
    return (f"In the code it is the spec {_kernel_ref(name)}; its kernels are listed in "
            f"Appendix~\\ref{{app:{name}}}.")


def command_tex(cmd: str) -> str:
    """A command line in typewriter type, typeset verbatim: ``--model`` keeps both hyphens (no
    en dash), special characters escaped."""
    return r"\texttt{" + escape(cmd).replace("-", "-{}") + "}"


@dataclass
class KernelTable:
    """One appendix table: the kernels of a layer (or the loss kernels), which product each
    computes, where the document derives it, and its cost."""
    title: str
    key: str                  # label app:<key>
    columns: str              # tabularx column spec
    header: tuple
    rows: list                # [tuple of cells]; the first cell is a kernel name
    note: str = ""


#: a kernel table two of which fit side by side: no wrapping column, names of at most this many characters
_NARROW_NAME = 25


def _narrow(t: KernelTable) -> bool:
    return "R" not in t.columns.split() and max(len(r[0]) for r in t.rows) <= _NARROW_NAME


def _table_tex(t: KernelTable) -> str:
    cols = t.columns.split()
    spec = "@{}" + " ".join(cols) + "@{}"
    env = "tabularx" if "R" in cols else "tabular"
    width = "{\\linewidth}" if env == "tabularx" else ""
    return (f"\\begin{{{env}}}{width}{{{spec}}}\n\\toprule\n" + " & ".join(t.header) + "\\\\\n\\midrule\n"
            + "".join(_kernel_ref(r[0]) + " & " + " & ".join(r[1:]) + "\\\\\n" for r in t.rows)
            + f"\\bottomrule\n\\end{{{env}}}\n")


def kernel_appendix(tables: list) -> str:
    """The appendix: one table of kernels per layer (typewriter names only here, never beside
    the equations); two narrow tables share a row."""
    if not tables:
        return ""
    out = ["\\section{Kernels}\\label{app:kernels}\n"
           "The generated kernels, one table per layer: the kernel's name in \\texttt{generated/}, what it "
           "computes, the equation it computes, and its op count (elementwise layers) or its multiply-adds per "
           "output element (dense and window layers).\n"]
    i = 0
    while i < len(tables):
        t = tables[i]
        if _narrow(t) and i + 1 < len(tables) and _narrow(tables[i + 1]):
            pair = tables[i:i + 2]
            rows = max(len(x.rows) for x in pair)
            out.append(f"\\needlines{{{rows + 6}}}\n\\noindent")
            for j, x in enumerate(pair):
                out.append(("\\hfill" if j else "") + "\\begin{minipage}[t]{0.485\\linewidth}\n"
                           f"\\refstepcounter{{subsection}}\\label{{app:{x.key}}}"
                           f"{{\\large\\bfseries \\thesubsection\\quad {x.title}\\par}}\\medskip\n"
                           + (x.note + "\n" if x.note else "") + "{\\small\\setlength{\\tabcolsep}{4pt}\n" + _table_tex(x) + "}\n\\end{minipage}")
            out.append("\n\\par\\bigskip\n")
            i += 2
            continue
        out.append(f"\\needlines{{{min(len(t.rows), 10) + 5}}}\n\\subsection{{{t.title}}}\\label{{app:{t.key}}}\n"
                   + (t.note + "\n" if t.note else "")
                   + "\\begin{center}\\small\n" + _table_tex(t) + "\\end{center}\n")
        i += 1
    return "".join(out)


#: display names of a window layer's indices: û, ŵ input positions, k, l kernel offsets
WINDOW_NAMES = {"u": r"\hat h", "v": r"\hat w", "i": "k", "j": "l", "M": "A"}
#: composite stage symbols that would collide with other meanings: the softmax shift, sum and
#: exponentials (m, s, e: mask, stride, Euler's e) and batch norm's centred input (d: dilation)
COMPOSITE_NAMES = {"m": r"x_{\max}", "s": "Z", "e": "u", "d": r"\tilde{x}"}
#: the losses: j' a second class index, ⟨p, v⟩ = Σ_j p_j v_j
LOSS_NAMES = {"k": "j'", "l": "j'", "s": r"\langle p, v\rangle"}


def _is_word(name: str) -> bool:
    """A multi-letter name SymPy would set in italics as a product (not a Greek letter, not
    a letter with a numeric subscript such as l1)."""
    return len(name) > 1 and name.isalpha() and sp.latex(sp.Symbol(name)) == name


def _description(name: str, doc: str) -> str:
    return DESCRIPTIONS.get(name) or (escape(_capitalised(doc)) + ("" if doc.endswith(".") else ".") if doc else "")


def _elementwise_builtins() -> dict:
    return {**builtins.ACTIVATIONS, **builtins.LEARNABLE, **builtins.MASKS, **builtins.PENALTIES}


def _builtin_specs() -> dict:
    """Every built-in spec by name, in document order."""
    return {**_elementwise_builtins(), **builtins.CONTRACTIONS, **builtins.WINDOWS, **builtins.COMPOSITES}


@functools.lru_cache(maxsize=None)
def _derived_builtin(name: str):
    return _derive_new(_builtin_specs()[name])


def _derive_new(spec):
    if isinstance(spec, ElementwiseSpec):
        return derive_elementwise(spec)
    if isinstance(spec, CompositeSpec):
        return derive_composite(spec)
    return derive_contraction(spec)


def _derive(spec):
    """The derivation of ``spec`` (built-ins derived once per process)."""
    if _builtin_specs().get(spec.name) is spec:
        return _derived_builtin(spec.name)
    return _derive_new(spec)


# ---------------------------------------------------------------- front matter
PREAMBLE = r"""\documentclass[11pt,a4paper]{article}
\pdfgentounicode=1
\input{glyphtounicode}
\usepackage[T1]{fontenc}
\usepackage{lmodern}
\usepackage{textcomp}
\usepackage[margin=2cm]{geometry}
\usepackage{amsmath,amssymb}
\usepackage{booktabs,tabularx,array}
\usepackage{microtype}
\allowdisplaybreaks
\sloppy
\clubpenalty=10000
\widowpenalty=10000
\numberwithin{equation}{section}
\setlength{\parindent}{0pt}
\setlength{\parskip}{0.5ex plus 0.3ex}
\newcolumntype{M}{>{\raggedright\arraybackslash$}X<{$}}
\newcolumntype{R}{>{\raggedright\arraybackslash}X}
\newcolumntype{K}[1]{>{\raggedright\arraybackslash}p{#1}}
\makeatletter
% a new page unless #1 lines are left: keeps a heading with what follows it
\newcommand{\needlines}[1]{\par\penalty-100\begingroup\dimen@=#1\baselineskip
  \dimen@ii=\pagegoal\advance\dimen@ii-\pagetotal
  \ifdim\dimen@>\dimen@ii\ifdim\dimen@ii>\z@\vfil\fi\break\fi\endgroup}
\makeatother
% the value the kernels use where an intermediate overflows (see the notation)
\newcommand{\guarded}[2]{\left\{\begin{array}{@{}l@{\quad}l@{}}\displaystyle #1 & \text{(finite)}\\[1ex]
  \displaystyle #2 & \text{(overflow)}\end{array}\right.}
\title{symprop: derivations of first- and second-order backpropagation}
\date{}
\begin{document}
\maketitle
"""

#: the notation section: one symbol per meaning, stated once (symbol, meaning)
NOTATION_ROWS = [
    (r"$x$, $y$; $W$, $b$", r"a layer's input and output; its weight and bias"),
    (r"$\bar g = \partial L/\partial y$; $\bar g^x$, $\bar g^W$", r"the gradient arriving at a layer's output; the "
     r"gradients it passes on (pullbacks, vector--Jacobian products $J^\top \bar g$)"),
    (r"$\mathcal{R}\{\cdot\}$", r"Pearlmutter's R-operator: the derivative along a direction $v$ in parameter space "
     r"($\mathcal{R}\{W\} = v_W$)"),
    (r"$\mathcal{R}\{x\}$, $\mathcal{R}\{y\}$; $\mathcal{R}\{\bar g\}$, $\mathcal{R}\{\bar g^x\}$",
     r"the direction at a layer's input and its pushforward (Jacobian--vector product); the direction of the "
     r"incoming gradient and the R-op of a pullback (its parameter parts make up the Hessian--vector product $Hv$)"),
    (r"$D$; $D^x$, $D^W$", r"the diagonal of the loss Hessian with respect to a layer's output (per sample); its "
     r"Becker--LeCun counterparts at the input and parameters"),
    (r"$S_q$, $\sigma_{q,n}$", r"columns of a factorisation of the output Hessian (Gauss--Newton), and their signs"),
    (r"indices", r"$n$ sample; $o$ output feature or channel; $i$ input feature; $c$ input channel; $h, w$ output "
     r"and $\hat h, \hat w$ input row and column; $k, l$ kernel offsets; $j, j'$ classes"),
    (r"sizes", r"$N$ samples; $I, O$ features; $C_{\mathrm{in}}, C_{\mathrm{out}}$ channels; "
     r"$H_{\mathrm{in}} \times W_{\mathrm{in}}$, $H_{\mathrm{out}} \times W_{\mathrm{out}}$ images; $K_h \times K_w$ "
     r"kernel; $K$ classes; $s, p, d$ stride, padding, dilation (subscript: the axis)"),
    (r"$\sum_{a,b}$", r"a sum over the whole range of its indices (stated with each layer)"),
    (r"$[P]$; $a \mid b$; $A^{\circ 2}$", r"1 when $P$ holds, else 0; $a$ divides $b$; every entry of $A$ squared"),
    (r"$\tau_1, \tau_2, \dots$", r"common subexpressions of one kernel"),
    (r"$\guarded{e}{a}$", r"$e$, which is the function; $a$, its limit at $\pm\infty$, is the value "
     r"the kernels use where an intermediate of $e$ overflows in floating point"),
    (r"$\mathcal{G}$; $M$; $\sum_{\mathcal{G}}$", r"in a composite layer: a group (a channel, a sample) a "
     r"reduction runs over; its size; a sum over it"),
    (r"op count", r"the weighted cost of an expression: a transcendental function counts 10--12, a division 4, "
     r"a multiplication or addition 1; multiply-adds are counted per output element"),
]


def notation(body: str) -> str:
    """The notation table: every row whose symbol the document ``body`` uses (the temporaries
    τ₁, τ₂ and the overflow guard only when some equation has them)."""
    optional = {r"$\tau_1, \tau_2, \dots$": r"\tau_{", r"$\guarded{e}{a}$": r"\guarded{"}
    rows = [(a, b) for a, b in NOTATION_ROWS if a not in optional or optional[a] in body]
    return ("\n\\section*{Notation}\n"
            "\\begin{center}\\small\n\\begin{tabularx}{\\linewidth}{@{}l R@{}}\n\\toprule\n"
            "symbol & meaning\\\\\n\\midrule\n"
            + "".join(f"{a} & {b}\\\\\n" for a, b in rows)
            + "\\bottomrule\n\\end{tabularx}\n\\end{center}\n")


# ---------------------------------------------------------------- elementwise part
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
is the residual an activation adds to the Hessian with respect to its input: the exact Hessian
diagonal includes it and the Gauss--Newton diagonal drops it. Each activation below gives its $f'$ and
$f''$ as differentiated and (after the second $=$) in the cheapest form that is accurate on a grid of
test points in float32 and float64, written with the saved output $y$ where that is cheaper, and the
kernels that compute these products with them.
"""

_EW_ROLE = {"forward": ("y = f(x)", "eq:{name}:def"), "vjp:x": (r"\bar g^x", "eq:ew:first"),
            "jvp": (r"\mathcal{R}\{y\}", "eq:ew:first"), "rvjp:x": (r"\mathcal{R}\{\bar g^x\}", "eq:ew:second"),
            "bl:x": ("D^x", "eq:ew:second"), "residual": ("r", "eq:ew:second")}


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


# ---------------------------------------------------------------- contraction part
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
The exact diagonal adds, at every activation before the layer, the residual $f''(x)\,\bar g$ as further
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
        out.append("Gauss--Newton (and exact, with the residual columns), with $0 \\le q < Q$:\n")
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


# ---------------------------------------------------------------- composite part
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
    table = [(s.name + "_forward", "the stages in order, one pass per reduction")]
    for role, rk in d.role_kernels.items():
        sums = ", ".join(f"$\\sum_{{\\mathcal{{G}}}} {tex(e, P)}$" for _, e in rk.sums)
        table.append((s.name + "_" + role, sums or "no group sum"))
    if kernels is not None:
        kernels.append(KernelTable(_title(s), s.name, "l R", ("kernel", "the group sums of its one pass per group"),
                                   table))
    return "".join(out)


# ---------------------------------------------------------------- losses
def losses_section(kernels: list | None = None) -> str:
    """The losses: definition, gradient and Hessian (-vector product) as the kernels compute them
    (their appendix table of kernels appended to ``kernels``)."""
    if kernels is not None:
        kernels.append(KernelTable("Losses", "losses", "l R l", ("kernel", "computes", "eq."), [
            ("softmax_cross_entropy", "the loss and its gradient", "\\eqref{eq:ce:def}, \\eqref{eq:ce:grad}"),
            ("softmax_cross_entropy_hvp", "the Hessian-vector product", "\\eqref{eq:ce:hvp}"),
            ("mse", "the loss and its gradient", "\\eqref{eq:mse:def}, \\eqref{eq:mse:grad}"),
            ("mse_hvp", "the second derivative times the direction", "\\eqref{eq:mse:hess}"),
            ("sigmoid_cross_entropy", "the loss and its gradient", "\\eqref{eq:sce:def}, \\eqref{eq:sce:grad}"),
            ("sigmoid_cross_entropy_hvp", "the second derivative times the direction", "\\eqref{eq:sce:hess}")]))
    ce = derive_softmax_cross_entropy()
    ms = mse()
    sc = sigmoid_cross_entropy()
    P = DerivationPrinter(names=LOSS_NAMES)
    j = sp.Symbol("j", integer=True)
    pe, ve = sp.symbols("p v")
    hvp_indexed = ce.hvp_elem.xreplace({pe: sp.IndexedBase("p")[j], ve: sp.IndexedBase("v")[j]})
    a, t = sp.symbols("a t")
    return "".join([
        "\\section{Losses}\n",
        "A loss compares the network's output with the targets; the batch loss is the mean over the "
        "$N$ samples. The gradient $\\partial L/\\partial y$ of the last layer's output is the first "
        "$\\bar g$ of the backward pass, and the loss Hessian times the pushed-forward direction the first "
        "$\\mathcal{R}\\{\\bar g\\}$ of the R-op.\n",
        "\\subsection{Softmax cross-entropy}\n",
        "Per sample, for logits $z$ and target $t$ (one-hot, or probabilities), with a shift $m$ for "
        "stability (the kernels use the row maximum):\n",
        display([row(r"\ell", ce.definition, P, "eq:ce:def")]),
        "The derivation checks $\\partial\\ell/\\partial m = " + tex(ce.shift_derivative, P)
        + "$, so any shift is exact. The gradient, as differentiated and in the probabilities "
        "$p = \\operatorname{softmax}(z)$, and the Hessian-vector product for a direction $v$ at the output:\n",
        display([row(r"\frac{\partial \ell}{\partial z_j}", ce.grad_raw, P, "eq:ce:grad", then=ce.grad),
                 row(r"(\nabla^2\ell\, v)_j", display_form(ce.hvp), P, "eq:ce:hvp", then=display_form(hvp_indexed))]),
        "\\subsection{Mean squared error}\n",
        "Per element of the output $a$ and target $t$, averaged over all elements:\n",
        display([row(r"\ell(a, t)", ms.elem.subs(sp.Symbol("a"), a), P, "eq:mse:def"),
                 row(r"\frac{\partial \ell}{\partial a}", display_form(ms.grad_elem), P, "eq:mse:grad"),
                 row(r"\frac{\partial^2 \ell}{\partial a^2}", ms.hess_elem, P, "eq:mse:hess")]),
        "\\subsection{Sigmoid cross-entropy}\n",
        "Per element of the logits $a$ and target $t \\in [0, 1]$, averaged over all elements, in the "
        "forms the rewriter chose, finite for logits of any size:\n",
        display([row(r"\ell(a, t)", sc.elem, P, "eq:sce:def"),
                 row(r"\frac{\partial \ell}{\partial a}", display_form(sc.grad_elem), P, "eq:sce:grad"),
                 row(r"\frac{\partial^2 \ell}{\partial a^2}", sc.hess_elem, P, "eq:sce:hess")]),
    ])


def user_loss_section(spec: PointwiseLossSpec, kernels: list | None = None) -> str:
    """A loss written with ``losses.from_sympy``: its definition, and ℓ′, ℓ″ as differentiated
    and in the forms its kernels compute."""
    d = derive_user_loss(spec)
    P = DerivationPrinter(names=LOSS_NAMES)
    a, tt = sp.symbols("a t", real=True)
    raw_g = sp.diff(spec.canonical, a)
    label = f"eq:{spec.name}"
    if kernels is not None:
        kernels.append(KernelTable(_capitalised(spec.name.replace("_", " ")), spec.name, "l R l",
                                   ("kernel", "computes", "eq."), [
            (spec.name, "the loss and its gradient", f"\\eqref{{{label}:def}}, \\eqref{{{label}:grad}}"),
            (spec.name + "_hvp", "the second derivative times the direction", f"\\eqref{{{label}:hess}}")]))
    return "".join([
        f"\\subsection{{{escape(_capitalised(spec.name.replace('_', ' ')))} (a loss written by the user)}}\n",
        (escape(spec.doc) + " " if spec.doc else "")
        + "Per element of the prediction $a$ and target $t$, averaged over all elements; the gradient as "
        "differentiated and as the kernel computes it, and the second derivative:\n",
        display([row(r"\ell(a, t)", spec.canonical, P, f"{label}:def"),
                 row(r"\frac{\partial \ell}{\partial a}", raw_g, P, f"{label}:grad",
                     then=None if sp.simplify(raw_g - d.grad_elem) == 0 and raw_g == d.grad_elem else d.grad_elem),
                 row(r"\frac{\partial^2 \ell}{\partial a^2}", d.hess_elem, P, f"{label}:hess")]),
    ])


# ---------------------------------------------------------------- a model: shapes, composed chain rule, kernel order
@dataclass
class ModelLayer:
    """One layer of a model as the document describes it (from its checkpoint config)."""
    kind: str                 # config type: Dense, Conv2D, MaxPool2D, AvgPool2D, Flatten, Activation
    spec: str | None          # the spec whose kernels it runs (None: a reshape)
    label: str                # in words, e.g. convolution, 1→6, 5×5, padding 2
    out_shape: tuple          # per sample
    params: list              # [(name, shape)]
    config: dict


@dataclass
class ModelInfo:
    """A model as the document describes it: layers with shapes and parameters, its loss, and
    where it comes from (e.g. " as symprop train --model lenet builds it")."""
    name: str
    input_shape: tuple
    layers: list
    loss: str = "softmax_cross_entropy"
    origin: str = ""
    schedule: dict | None = None   # the kernels each call runs, as recorded (see kernel_schedule)

    @property
    def n_params(self) -> int:
        return sum(_size(shape) for la in self.layers for _, shape in la.params)


def _size(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _window_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """PyTorch's output size ⌊(H + 2p − d(k − 1) − 1)/s⌋ + 1 (as runtime/conv.py)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


#: per loss: its name in the text, the label of its definition and of its Hessian
LOSS_TEXT = {"softmax_cross_entropy": ("softmax cross-entropy", "eq:ce:def", "eq:ce:hvp"),
             "mse": ("mean squared error", "eq:mse:def", "eq:mse:hess"),
             "sigmoid_cross_entropy": ("sigmoid cross-entropy", "eq:sce:def", "eq:sce:hess")}


def describe_model(name: str, input_shape, configs: list, loss: str = "softmax_cross_entropy",
                   origin: str = "") -> ModelInfo:
    """Shapes and parameters of a model from its layers' configs (``Layer.config()``, the
    checkpoint format) by shape arithmetic alone: no kernels, no data."""
    if loss not in LOSS_TEXT:
        raise ValueError(f"latex: the model's loss {loss!r} is not one the document derives ({sorted(LOSS_TEXT)})")
    shape = tuple(int(s) for s in input_shape)
    layers = []
    for cfg in configs:
        t = cfg.get("type")
        if t == "Dense":
            if shape != (cfg["in_features"],):
                raise ValueError(f"latex: Dense({cfg['in_features']} -> {cfg['out_features']}) after a layer "
                                 f"giving {shape}")
            o = cfg["out_features"]
            params = [("W", (o, cfg["in_features"]))] + ([("b", (o,))] if cfg.get("bias", True) else [])
            la = ModelLayer(t, "dense", f"Fully connected, {cfg['in_features']}$\\to${o}", (o,), params, cfg)
        elif t == "Conv2D":
            (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (cfg[k] for k in ("kernel_size", "stride", "padding", "dilation"))
            o, c = cfg["out_channels"], cfg["in_channels"]
            out = (o, _window_out(shape[1], kh, sh, ph, dh), _window_out(shape[2], kw, sw, pw, dw))
            params = [("W", (o, c, kh, kw))] + ([("b", (o,))] if cfg.get("bias", True) else [])
            extra = "".join(f", {nm} {v[0]}" if v[0] == v[1] else f", {nm} {v[0]}$\\times${v[1]}"
                            for nm, v, dflt in (("stride", (sh, sw), 1), ("padding", (ph, pw), 0),
                                                ("dilation", (dh, dw), 1)) if v != (dflt, dflt))
            la = ModelLayer(t, "conv2d", f"Convolution, {c}$\\to${o}, {kh}$\\times${kw}{extra}", out, params, cfg)
        elif t in ("MaxPool2D", "AvgPool2D"):
            (kh, kw), (sh, sw), (ph, pw) = (cfg[k] for k in ("kernel_size", "stride", "padding"))
            out = (shape[0], _window_out(shape[1], kh, sh, ph), _window_out(shape[2], kw, sw, pw))
            extra = "" if (sh, sw) == (kh, kw) else f", stride {sh}"
            kind = "Max pooling" if t == "MaxPool2D" else "Average pooling"
            la = ModelLayer(t, t.lower(), f"{kind}, {kh}$\\times${kw}{extra}", out, [], cfg)
        elif t == "Flatten":
            la = ModelLayer(t, None, "Flatten (a reshape)", (_size(shape),), [], cfg)
        elif t == "Activation":
            if cfg["name"] not in builtins.ACTIVATIONS:
                raise ValueError(f"latex: activation {cfg['name']!r} is not a built-in spec")
            la = ModelLayer(t, cfg["name"], TITLES.get(cfg["name"], escape(cfg["name"])), shape, [], cfg)
        else:
            raise ValueError(f"latex: no shape rule for layer type {t!r}")
        layers.append(la)
        shape = la.out_shape
    return ModelInfo(name, tuple(int(s) for s in input_shape), layers, loss, origin)


def _shape_tex(shape, batch: bool = True) -> str:
    dims = (["N"] if batch else []) + [str(s) for s in shape]
    return r"\mathbb{R}^{" + r" \times ".join(dims) + "}"


def _kernels_by_role(spec_name: str) -> dict:
    d = _derived_builtin(spec_name)
    if isinstance(d, DerivedElementwise):
        return {k.role: k.name for k in d.kernels}
    roles = {"forward": d.forward.name, "jvp": d.jvp.name}
    roles.update({k.role: k.name for k in d.vjps.values()})
    roles.update({k.role: k.name for k in d.rvjps.values()})
    roles.update({k.role: k.name for k in d.bls.values()})
    roles.update({f"sqvjp:{p}": f"{spec_name}_sqvjp_{p}" for p in d.sqvjps})
    return roles


def _layer_roles(info: ModelInfo) -> list[dict]:
    """Per layer of the model, its spec's kernels by role ({} for a reshape)."""
    return [(_kernels_by_role(la.spec) if la.spec else {}) for la in info.layers]


def kernel_schedule(info: ModelInfo) -> dict:
    """The kernels each training call runs, in order, as the runtime recorded them: ``{call:
    [(layer k or None for the loss, kernel name, note)]}`` from ``info.schedule``, the log of
    the sweep engine running the model's calls on a tiny batch (``runtime/sweep.py``,
    ``record_schedule``; entries with a ``position``, ``role`` and ``kernel``). Nothing here
    knows the call order: a layer inside a block counts as the block's layer k."""
    if info.schedule is None:
        raise ValueError("latex: the kernel schedule of a model is recorded by running it (the runtime's "
                         "sweep.record_schedule); compile the kernels (pip install .) to document a model")
    notes = {"residual": "a new group", "value_and_grad": "the loss and its gradient",
             "hvp": "the loss Hessian times the pushed-forward direction",
             "hessian_blocks": "once per output unit: the loss Hessian blocks"}
    calls = ("loss_and_grad", "hvp", "exact", "gauss_newton", "becker_lecun", "hutchinson")
    return {call: [(c.position[0] + 1 if c.position else None, c.kernel, notes.get(c.role, ""))
                   for c in info.schedule.get(call, ())] for call in calls}


def model_title(info: ModelInfo) -> str:
    """The model's name in words (``LeNet-5``), for titles and text."""
    return MODEL_TITLES.get(info.name, escape(info.name))


def model_section(info: ModelInfo) -> str:
    """The network-level chain rule of a model: shapes, the composed first-order product
    (reverse layer order), the R-op sweeps (forward, then reverse); the kernels per call are
    in the appendix (:func:`model_schedule`)."""
    L = len(info.layers)
    xs = [info.input_shape] + [la.out_shape for la in info.layers]
    roles = _layer_roles(info)
    loss_name, loss_def, loss_hess = LOSS_TEXT[info.loss]
    title = model_title(info)
    out = [f"\\section{{Model: {title[:1].upper() + title[1:]}}}\\label{{sec:model}}\n",
           f"The network{info.origin} for inputs "
           f"$x_0 \\in {_shape_tex(info.input_shape)}$: layer $k$ maps $x_{{k-1}}$ to "
           f"$x_k = f_k(x_{{k-1}}; \\theta_k)$ and the loss $L$ ({loss_name}, "
           f"\\eqref{{{loss_def}}}, averaged over the batch) is taken of $x_{{{L}}}$. "
           + f"${info.n_params:,}$ parameters in all; the kernels each training call runs are listed in "
           .replace(",", "\\,") + "Appendix~\\ref{app:schedule}.\n"]
    out.append("\\begin{center}\\small\n\\begin{tabular}{@{}r l l l r@{}}\n\\toprule\n"
               "$k$ & layer $f_k$ & output $x_k$ & parameters $\\theta_k$ & count\\\\\n\\midrule\n")
    for k, la in enumerate(info.layers, 1):
        ps = ", ".join(f"${tex(sp.Symbol(p))}_{{{k}}} \\in {_shape_tex(shape, False)}$" for p, shape in la.params)
        cnt = sum(_size(s) for _, s in la.params)
        out.append(f"{k} & {la.label} & ${_shape_tex(la.out_shape)}$ & {ps or '---'} & {cnt if cnt else ''}\\\\\n")
    out.append("\\bottomrule\n\\end{tabular}\n\\end{center}\n")

    def jac(k):
        return f"J_{{{k}}}"

    # first order
    out.append("\\subsection{First order: the chain rule in reverse layer order}\n"
               "With $J_k = \\partial x_k/\\partial x_{k-1}$ and $J_{\\theta_k} = \\partial x_k/\\partial \\theta_k$ "
               "(per sample; a $|x_k| \\times |x_{k-1}|$ matrix, never formed), the gradient of a "
               "parameter is the product of the transposed Jacobians from the loss back to its layer,\n"
               "\\begin{equation}\n\\frac{\\partial L}{\\partial \\theta_k} = J_{\\theta_k}^\\top\\, J_{k+1}^\\top "
               f"\\cdots J_{{{L}}}^\\top\\, \\bar g_{{{L}}}, \\qquad \\bar g_{{{L}}} = \\frac{{\\partial L}}{{\\partial x_{{{L}}}}},"
               "\\label{eq:model:grad}\n\\end{equation}\n"
               "evaluated right to left: each product is one pullback kernel applied to a vector "
               "($\\bar g_{k-1} = J_k^\\top \\bar g_k$), so no Jacobian is ever formed. For this model, top to bottom:\n")
    rows = [f"\\bar g_{{{L}}} &= \\nabla_{{x_{{{L}}}}} L \\in {_shape_tex(xs[L])}"]
    for k in range(L, 0, -1):
        la, r = info.layers[k - 1], roles[k - 1]
        for p, shape in la.params:
            P = tex(sp.Symbol(p))
            rows.append(f"\\partial L/\\partial {P}_{{{k}}} &= J_{{{P}_{{{k}}}}}^\\top \\bar g_{{{k}}} \\in "
                        f"{_shape_tex(shape, False)}")
        if k > 1:
            what = "" if la.spec else r" && \text{(a reshape)}"
            rows.append(f"\\bar g_{{{k - 1}}} &= {jac(k)}^\\top \\bar g_{{{k}}} \\in {_shape_tex(xs[k - 1])}{what}")
    out.append("\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}\n")

    # second order
    out.append("\\subsection{Second order: the R-op sweeps}\n"
               "For a direction $v = (v_{\\theta_1}, \\dots)$ aligned with the parameters, the R-operator "
               "pushes $v$ forward through the layers in their own order (the Jacobian products "
               "left to right),\n\\begin{equation}\n"
               f"\\mathcal{{R}}\\{{x_{{{L}}}\\}} = \\sum_k J_{{{L}}} \\cdots J_{{k+1}} J_{{\\theta_k}} v_{{\\theta_k}},"
               "\\label{eq:model:rfwd}\n\\end{equation}\n"
               f"through the loss Hessian, $\\mathcal{{R}}\\{{\\bar g_{{{L}}}\\}} = \\nabla^2 \\ell\\; "
               f"\\mathcal{{R}}\\{{x_{{{L}}}\\}}$ \\eqref{{{loss_hess}}}, and back through the R-op of every pullback in reverse order,\n"
               "\\begin{equation}\n\\mathcal{R}\\{\\bar g_{k-1}\\} = J_k^\\top \\mathcal{R}\\{\\bar g_k\\} + "
               "\\mathcal{R}\\{J_k\\}^\\top \\bar g_k, \\qquad (Hv)_{\\theta_k} = J_{\\theta_k}^\\top "
               "\\mathcal{R}\\{\\bar g_k\\} + \\mathcal{R}\\{J_{\\theta_k}\\}^\\top \\bar g_k,"
               "\\label{eq:model:rbwd}\n\\end{equation}\n"
               "where $\\mathcal{R}\\{J_k\\}^\\top \\bar g_k$ is the second-order term ($f''$ of an "
               "activation, the direction of a weight; zero for pooling and reshapes). For this model:\n")
    rows, started = [], False
    for k in range(1, L + 1):
        la, r = info.layers[k - 1], roles[k - 1]
        terms = []
        if started:
            terms.append(f"{jac(k)} \\mathcal{{R}}\\{{x_{{{k - 1}}}\\}}")
        terms += [f"J_{{{tex(sp.Symbol(p))}_{{{k}}}}} v_{{{tex(sp.Symbol(p))}_{{{k}}}}}" for p, _ in la.params]
        started = started or bool(la.params)
        if not terms:
            continue
        what = "" if la.spec else r" && \text{(a reshape)}"
        rows.append(f"\\mathcal{{R}}\\{{x_{{{k}}}\\}} &= {' + '.join(terms)} \\in {_shape_tex(xs[k])}{what}")
    rows.append(f"\\mathcal{{R}}\\{{\\bar g_{{{L}}}\\}} &= \\nabla^2 \\ell\\; \\mathcal{{R}}\\{{x_{{{L}}}\\}} "
                f"\\in {_shape_tex(xs[L])}")
    for k in range(L, 0, -1):
        la, r = info.layers[k - 1], roles[k - 1]
        for p, shape in la.params:
            P = f"{tex(sp.Symbol(p))}_{{{k}}}"
            rows.append(f"(Hv)_{{{P}}} &= J_{{{P}}}^\\top \\mathcal{{R}}\\{{\\bar g_{{{k}}}\\}} + "
                        f"\\mathcal{{R}}\\{{J_{{{P}}}\\}}^\\top \\bar g_{{{k}}} \\in {_shape_tex(shape, False)}")
        if k > 1:
            second = la.params or la.kind == "Activation"
            rhs = f"{jac(k)}^\\top \\mathcal{{R}}\\{{\\bar g_{{{k}}}\\}}" + (
                f" + \\mathcal{{R}}\\{{{jac(k)}\\}}^\\top \\bar g_{{{k}}}" if second else "")
            what = "" if la.spec else r" && \text{(a reshape)}"
            rows.append(f"\\mathcal{{R}}\\{{\\bar g_{{{k - 1}}}\\}} &= {rhs} \\in {_shape_tex(xs[k - 1])}{what}")
    out.append("\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}\n")

    return "".join(out)


def model_schedule(info: ModelInfo) -> str:
    """The appendix section of a model: the kernels each training call runs, in order
    (:func:`kernel_schedule`), as two tables (first order and the R-op; the Hessian diagonals)."""
    L = len(info.layers)
    sched = kernel_schedule(info)
    n_grad = len(sched["loss_and_grad"])

    def cell(steps, k):
        mine = [(n, note if note == "a new group" else "") for kk, n, note in steps if kk == k]
        return ", ".join(_kernel_ref(n) + (f" ({note})" if note else "") for n, note in dict.fromkeys(mine)) or "---"
    fwd = [s for s in sched["loss_and_grad"] if s[1].endswith("_forward")]
    pull = sched["loss_and_grad"][len(fwd) + 1:]
    rop = sched["hutchinson"][n_grad:]
    hvp = sched["hvp"]
    out = [f"\\needlines{{16}}\n\\section{{Kernel schedule: {model_title(info)}}}\\label{{app:schedule}}\n"
           "The kernels each training call runs, layer by layer ($k$ as in the table of Section~\\ref{sec:model}). "
           f"\\texttt{{loss\\_and\\_grad(X, y)}} runs the forward column top to bottom, then the loss kernel "
           f"{_kernel_ref(info.loss)} (the loss and $\\bar g_{{{L}}}$), then the pullback column bottom to top: "
           f"${n_grad}$ kernel calls. \\texttt{{hessian\\_diagonal(X, y, method)}} with \\texttt{{hutchinson}} adds, per "
           "probe, the R-op: the "
           f"JVPs top to bottom, {_kernel_ref(info.loss + '_hvp')}, then the R-op pullbacks bottom to top. "
           "\\texttt{hvp(X, y, v)} (and AdaHessian's step) runs fused kernels instead, which compute several "
           "of these products in one pass over their arrays: each layer's forward and JVP together, top to bottom "
           "(a convolution im2cols its input once for both), the loss with its gradient and Hessian term, then "
           "each layer's pullbacks and their R-ops together, bottom to top (the first layer computes no input "
           f"gradient): ${len(hvp)}$ kernel calls, which also give the gradient.\n"
           "\\begin{center}\\small\\setlength{\\tabcolsep}{4pt}\n"
           "\\begin{tabularx}{\\linewidth}{@{}r l R R R@{}}\n\\toprule\n"
           "$k$ & forward & pullbacks & JVP; R-op pullbacks & fused (\\texttt{hvp})\\\\\n\\midrule\n"]
    for k in range(1, L + 1):
        r = [s for s in rop if s[0] == k]
        jr = "; ".join(x for x in (cell([s for s in r if s[1].endswith("_jvp")], k),
                                   cell([s for s in r if not s[1].endswith("_jvp")], k)) if x != "---") or "---"
        out.append(f"{k} & {cell(fwd, k)} & {cell(pull, k)} & {jr} & {cell(hvp, k)}\\\\\n")
    out.append("\\bottomrule\n\\end{tabularx}\n\\end{center}\n")
    out.append("\\texttt{hessian\\_diagonal(X, y, method)} with \\texttt{becker\\_lecun}, \\texttt{gauss\\_newton} or "
               "\\texttt{exact} starts with the calls of \\texttt{loss\\_and\\_grad}, then runs "
               f"{_kernel_ref(info.loss + '_hvp')} once per output unit (the per-sample loss Hessian). "
               "Becker--LeCun passes its diagonal $D$ down through every layer's diagonal kernels (middle column). "
               "Gauss--Newton factors it by an eigendecomposition into a group of columns $S_q$; layer by layer, "
               "from the last, each group gives every parameter's diagonal (one call of its kernel per group) and passes "
               "its columns down through the input pullback (one call per column; right column); the exact diagonal adds, at each activation with $f'' \\ne 0$, its "
               "residual $f''(x)\\,\\bar g$ as a new group.\n")
    out.append("\\begin{center}\\small\n\\begin{tabularx}{\\linewidth}{@{}r l R R@{}}\n\\toprule\n"
               "$k$ & layer & Becker--LeCun & Gauss--Newton and exact\\\\\n\\midrule\n")
    bl = sched["becker_lecun"][n_grad:]
    ex = sched["exact"][n_grad:]
    for k in range(L, 0, -1):
        la = info.layers[k - 1]
        out.append(f"{k} & {la.label} & {cell(bl, k)} & {cell(ex, k)}\\\\\n")
    out.append("\\bottomrule\n\\end{tabularx}\n\\end{center}\n")
    return "".join(out)


# ---------------------------------------------------------------- the document
#: between parts: a new page unless a third of the page is left (a part never strands a few lines
#: on a page of their own)
PART_BREAK = "\\needlines{18}\\bigskip\n"


def builtin_layer_names() -> list[str]:
    """Every built-in spec that has a section, in document order."""
    return (list(_elementwise_builtins()) + list(builtins.CONTRACTIONS) + list(builtins.WINDOWS)
            + list(builtins.COMPOSITES))


def build(layers: list[str] | None = None, extra: list = (), model: ModelInfo | None = None,
          losses: bool = True) -> Document:
    """The document and the kernel expressions it prints (see :func:`document`); ``extra`` may
    hold :class:`PointwiseLossSpec` s (user losses), printed after the built-in losses."""
    user_losses = [s for s in extra if isinstance(s, PointwiseLossSpec)]
    extra = [s for s in extra if not isinstance(s, PointwiseLossSpec)]
    if model is not None and not isinstance(model, ModelInfo):
        raise TypeError(f"latex: model must be a ModelInfo (see describe_model), got {type(model).__name__}")
    losses = losses or model is not None        # the model part refers to its loss's equations
    known = builtin_layer_names()
    chosen = known if layers is None else list(layers)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"latex: unknown layer(s) {unknown}; built-ins are {known}")
    for spec in extra:
        if not isinstance(spec, (ElementwiseSpec, ContractionSpec, CompositeSpec)):
            raise TypeError("latex: extra specs must be ElementwiseSpec, ContractionSpec or CompositeSpec, "
                            f"got {type(spec).__name__}")
    specs = [_builtin_specs()[n] for n in chosen] + list(extra)
    printed: list = []
    tables: list = []                    # the appendix: one kernel table per layer
    parts = [PREAMBLE, ""]               # the notation, once the body is known
    breaks = False                       # a part break before every part but the first
    ew = [s for s in specs if isinstance(s, ElementwiseSpec)]
    ct = [s for s in specs if isinstance(s, ContractionSpec)]
    cp = [s for s in specs if isinstance(s, CompositeSpec)]
    if ew:
        parts.append(ELEMENTWISE_INTRO)
        parts += [elementwise_section(_derive(s), printed, tables) for s in ew]
        breaks = True
    if ct:
        parts.append((PART_BREAK if breaks else "") + CONTRACTION_INTRO)
        parts += [contraction_section(_derive(s), printed, tables) for s in ct]
        breaks = True
    if cp:
        parts.append((PART_BREAK if breaks else "") + COMPOSITE_INTRO)
        parts += [composite_section(_derive(s), tables) for s in cp]
        breaks = True
    if losses or user_losses:
        parts.append((PART_BREAK if breaks else "") + losses_section(tables)
                     + "".join(user_loss_section(s, tables) for s in user_losses))
        breaks = True
    if model is not None:
        parts.append((PART_BREAK if breaks else "") + model_section(model))
        breaks = True
    if tables or model is not None:
        parts.append((PART_BREAK if breaks else "") + "\\appendix\n" + kernel_appendix(tables)
                     + (model_schedule(model) if model is not None else ""))
    parts.append("\\end{document}\n")
    parts[1] = notation("".join(parts[2:]))
    return Document("".join(parts), printed)


def document(layers: list[str] | None = None, extra: list = (), model: ModelInfo | None = None,
             losses: bool = True) -> str:
    """The full document: notation, the elementwise layers, the dense and window layers, the
    composite layers (every built-in by default, or ``layers``, plus ``extra`` specs:
    :class:`ElementwiseSpec`, :class:`ContractionSpec` or :class:`CompositeSpec`), the losses
    and, with ``model`` (:func:`describe_model`), the model's shapes, composed chain rule and
    kernel order."""
    return build(layers, extra, model, losses).text


def compile_pdf(text: str, pdf_path):
    """Compile ``text`` with pdflatex in a temporary directory (shell escape off, run twice for
    references) and move the PDF to ``pdf_path``; errors quote the LaTeX log."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    exe = shutil.which("pdflatex")
    if exe is None:
        raise FileNotFoundError("pdflatex not found: install TeX (Debian: texlive-latex-base "
                                "texlive-latex-recommended lmodern)")
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

