"""The document's LaTeX printer: SymPy's printer with the document's notation.

Barred gradients, R-op directions 𝓡{·}, Iverson brackets, the compact guard of a window
adjoint ``[s | ĥ + p − k d]·[0 ≤ h < H_out]`` (:class:`CompactGuard`, checked equal to the
derivation's own conditions), ``expm1``/``log1p`` written out, overflow guards as cases, CSE
temporaries τ₁, τ₂, …; and :func:`escape` for user-given text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp
from sympy.printing.latex import LatexPrinter

from ..derive.affine import AxisMap, _solution_condition
from ..derive.indexed import _expand
from ..derive.rewrite import Folded, at_infinity, nan_through


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
    writes them (the kernels' accurate forms are an implementation detail). The NaN and ±∞
    selects (``nan_through``, ``at_infinity``) print as the function they guard, and a folded
    float constant as its exact value — done here, before printing, so that a product puts a
    guarded sum in parentheses and a sign folds into the constant (``−(−c)`` reads ``c``)."""
    if isinstance(expr, sp.Basic):
        expr = expr.replace(lambda e: isinstance(e, (nan_through, at_infinity)), lambda e: e.args[0])
        expr = expr.replace(lambda e: isinstance(e, Folded), lambda e: e.exact)
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

    def _print_GroupSum(self, expr, exp=None):
        body = r"\sum_{\mathcal{G}}\!\left(" + self._print(expr.args[0]) + r"\right)"
        return body if exp is None else r"\left(" + body + r"\right)^{" + exp + "}"

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
