"""Elementwise maps ``y = f(x; params)``: the spec and its derived products.

From one SymPy expression this derives the forward map, f' and f'' in their cheapest
numerically sound forms (possibly written with the saved output y), and the four kernel
bodies every layer needs:

====================  ==========================================
forward               y = f(x)
vjp (pullback)        ∂L/∂x = f'(x) · ḡ
jvp (pushforward)     Ry = f'(x) · Rx
rvjp (R-op backward)  R(∂L/∂x) = f''(x) · Rx · ḡ + f'(x) · R(ḡ)
====================  ==========================================

and two for Hessian diagonals: ``residual`` r = f''(x) · ḡ (the second-order term an
elementwise map adds to the Hessian w.r.t. its input; omitted when f'' ≡ 0) and
``bl:x``          h_x = f'(x)² · h + f''(x) · ḡ (Becker & LeCun's diagonal rule).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp

from .cost import cse_cost
from .rewrite import (Choice, choose_form, clean_distributions, in_terms_of_output,
                      inverse_candidates, _try)

X, Y = sp.Symbol("x"), sp.Symbol("y")
G, RX, RG, H = sp.Symbol("g"), sp.Symbol("Rx"), sp.Symbol("Rg"), sp.Symbol("H")


#: names the kernels use for their own arrays (input, output, incoming gradient, directions,
#: Hessian diagonal, outputs): a parameter or mask with one of them would be confused with it
RESERVED_NAMES = frozenset({"x", "y", "g", "h", "H", "r", "Rx", "Rg", "Ry", "gx", "Rgx", "hx"})


class SpecError(ValueError):
    """A spec that cannot be derived or compiled; the message names the spec."""


@dataclass(frozen=True)
class ElementwiseSpec:
    """``name``: identifier; ``expr``: SymPy expression in ``var`` (and ``params``)."""
    name: str
    expr: sp.Basic
    var: sp.Symbol
    params: tuple = ()  # ((name, default), ...)
    doc: str = ""
    arrays: tuple = ()  # constant input arrays of x's shape (e.g. a dropout mask), not differentiated
    learnable: tuple = ()  # names of params that are trained (each one value per channel, axis 1, or shared)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise SpecError(f"elementwise spec name {self.name!r} must be a Python identifier")
        if not isinstance(self.expr, sp.Basic):
            raise SpecError(f"spec {self.name!r}: expr must be a SymPy expression, got {type(self.expr).__name__}")
        if not isinstance(self.var, sp.Symbol):
            raise SpecError(f"spec {self.name!r}: var must be a sympy.Symbol, got {self.var!r}")
        extra = self.expr.free_symbols - {self.var} - {sp.Symbol(p) for p, _ in self.params} \
            - {sp.Symbol(a) for a in self.arrays}
        if extra:
            raise SpecError(f"spec {self.name!r}: expression has unbound symbols "
                            f"{sorted(map(str, extra))}; declare them as params")
        clash = sorted({p for p, _ in self.params} | set(self.arrays))
        clash = [n for n in clash if n in RESERVED_NAMES or (n.startswith("R") and n[1:] in RESERVED_NAMES)]
        if clash:
            raise SpecError(f"spec {self.name!r}: parameter/array names {clash} are reserved for the kernels' "
                            f"own arrays ({', '.join(sorted(RESERVED_NAMES))}); rename them")
        unknown = set(self.learnable) - {p for p, _ in self.params}
        if unknown:
            raise SpecError(f"spec {self.name!r}: learnable {sorted(unknown)} must be among its params")
        own = {"S", "w"} | {f"{pre}{q}" for q in self.learnable for pre in ("R", "g", "Rg")}
        taken = [p for p, _ in self.params if p in own or p.startswith("_")] if self.learnable else []
        if taken:   # the channelwise kernels' own names (factor columns, their weights, loop variables,
            # a learnable parameter's direction R<p> and pullbacks g<p>, Rg<p>)
            raise SpecError(f"spec {self.name!r}: parameter names {taken} are reserved in a spec with learnable "
                            f"parameters (S, w, R<p>, g<p> and Rg<p> for a learnable p, names starting with _); "
                            f"rename them")
        if len(set(self.learnable)) != len(self.learnable):
            raise SpecError(f"spec {self.name!r}: learnable {list(self.learnable)} names a parameter twice")

    @property
    def canonical(self) -> sp.Basic:
        """The expression in the canonical variable ``x``; ``|u|`` written ``max(u, −u)`` (SymPy
        differentiates ``Abs`` of a symbol not declared real into complex parts)."""
        e = self.expr.subs(self.var, X) if self.var != X else self.expr
        return e.replace(sp.Abs, lambda u: sp.Max(u, -u))

    @property
    def hash(self) -> str:
        text = "|".join([self.name, sp.srepr(self.canonical), repr(self.params)]
                        + ([repr(self.arrays)] if self.arrays else [])
                        + ([repr(self.learnable)] if self.learnable else []))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Kernel:
    """One elementwise kernel: named outputs as expressions of array inputs and scalars."""
    name: str
    inputs: list[str]            # array arguments, in order
    scalars: list[str]           # scalar arguments, in order
    outputs: list[tuple[str, sp.Basic]]
    inplace: dict = field(default_factory=dict)   # output name -> input name it overwrites
    role: str = ""               # what the runtime asks for: forward, vjp:x, jvp, rvjp:x, residual, bl:x
    reduce: str = ""             # "sum": outputs are summed per channel (a learnable parameter's
                                 # pullback); "sqsum": Σ_k w[k,n]·(Σ_s S[k]·expr)² per channel

    @cached_property
    def cse(self):
        cost, repl, reduced = cse_cost([e for _, e in self.outputs])
        return cost, repl, reduced

    @property
    def cost(self) -> int:
        return self.cse[0]


@dataclass
class DerivedElementwise:
    spec: ElementwiseSpec
    forward: Choice
    d1: Choice
    d2: Choice
    kernels: list[Kernel]
    param_derivatives: dict = field(default_factory=dict)   # "f_p:a", "f_xp:a", "f_pp:a,b" -> Choice

    @property
    def name(self):
        return self.spec.name

    def op_counts(self) -> dict:
        """Weighted op counts of f, f', f'' before (textbook) and after rewriting."""
        return {k: {"before": c.cost_before, "after": c.cost_after}
                for k, c in (("f", self.forward), ("f'", self.d1), ("f''", self.d2))}


def _kernel(name: str, outputs: list[tuple[str, sp.Basic]], order: list[str], params, role: str = "",
            reduce: str = "", learnable=()) -> Kernel:
    used = set().union(*(e.free_symbols for _, e in outputs)) if outputs else set()
    inputs = [s for s in order if sp.Symbol(s) in used]
    scalars = [p for p, _ in params if sp.Symbol(p) in used and p not in learnable]
    return Kernel(name=name, inputs=inputs, scalars=scalars, outputs=outputs, role=role, reduce=reduce)


def derive_elementwise(spec: ElementwiseSpec) -> DerivedElementwise:
    """Derive f, f', f'' and the kernel bodies for ``spec`` (SymPy only)."""
    params = {sp.Symbol(p): float(v) for p, v in spec.params}
    params.update({sp.Symbol(a): 1.0 for a in spec.arrays})   # constants: checked at 1
    f = spec.canonical
    try:
        d1_raw = clean_distributions(sp.diff(f, X))
        d2_raw = clean_distributions(sp.diff(d1_raw, X))
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"spec {spec.name!r}: SymPy cannot differentiate {f}: {exc}") from exc
    if d1_raw.has(sp.Derivative) or d2_raw.has(sp.Derivative):
        raise SpecError(f"spec {spec.name!r}: derivative of {f} is not in closed form ({d1_raw})")

    fwd = choose_form(f, [], X, None, None, params)
    inverses = inverse_candidates(f, X, Y) if not f.has(sp.Piecewise, sp.Max, sp.Min) else []
    chosen = {}
    for key, raw in (("d1", d1_raw), ("d2", d2_raw)):
        cands = [c for c in (_try(lambda raw=raw: sp.simplify(raw)),
                             _try(lambda raw=raw: sp.factor(raw)),
                             _try(lambda raw=raw: sp.powsimp(sp.expand(raw))))
                 if c is not None]
        ycands = []
        for c in [raw] + cands:
            ycands += in_terms_of_output(c, f, X, Y, inverses)
        chosen[key] = choose_form(raw, cands + ycands, X, Y, fwd.chosen, params)
    d1, d2 = chosen["d1"].chosen, chosen["d2"].chosen

    order = ["x", "y", "g", "Rx", "Rg", "H", *spec.arrays]
    n = spec.name
    kernels = [
        _kernel(f"{n}_forward", [("y", fwd.chosen)], order, spec.params, "forward"),
        _kernel(f"{n}_vjp", [("gx", G * d1)], order, spec.params, "vjp:x"),
        _kernel(f"{n}_jvp", [("Ry", d1 * RX)], order, spec.params, "jvp"),
        _kernel(f"{n}_rvjp", [("Rgx", d2 * RX * G + d1 * RG)], order, spec.params, "rvjp:x"),
        _kernel(f"{n}_bl_x", [("hx", d1 ** 2 * H + d2 * G)], order, spec.params, "bl:x"),
    ]
    if d2 != 0:
        kernels.append(_kernel(f"{n}_curv_x", [("r", d2 * G)], order, spec.params, "curv:x"))
    derived = DerivedElementwise(spec=spec, forward=fwd, d1=chosen["d1"], d2=chosen["d2"], kernels=kernels)
    if spec.learnable:
        _learnable_kernels(derived, f, d1_raw, inverses, params)
    return derived


def _choose(raw, f, inverses, fwd, params):
    cands = [c for c in (_try(lambda: sp.simplify(raw)), _try(lambda: sp.factor(raw))) if c is not None]
    ycands = []
    for c in [raw] + cands:
        ycands += in_terms_of_output(c, f, X, Y, inverses)
    return choose_form(raw, cands + ycands, X, Y, fwd, params)


def _learnable_kernels(d: DerivedElementwise, f, d1_raw, inverses, params):
    """Kernels of a spec with learnable parameters (each one value per channel, or shared):
    their pullbacks, the pushforward and the R-op terms. A parameter's pullback is a sum over
    the axes it is broadcast along (``reduce="sum"``); its Gauss–Newton role sums squared
    per-sample pullbacks of factor columns (``reduce="sqsum"``). ``param_derivatives`` keeps
    the chosen ∂f/∂a (``f_p:a``), ∂f'/∂a (``f_xp:a``) and ∂²f/∂a∂b (``f_pp:a,b``)."""
    spec = d.spec
    L = spec.learnable
    Ps = {a: sp.Symbol(a) for a in L}
    RPs = {a: sp.Symbol("R" + a) for a in L}
    fp_raw = {a: clean_distributions(sp.diff(f, Ps[a])) for a in L}
    raws = {}
    for a in L:
        raws[f"f_p:{a}"] = fp_raw[a]
        raws[f"f_xp:{a}"] = clean_distributions(sp.diff(d1_raw, Ps[a]))
        for b in L[L.index(a):]:   # symmetric: the upper triangle
            raws[f"f_pp:{a},{b}"] = clean_distributions(sp.diff(fp_raw[a], Ps[b]))
    ch = {k: _choose(r, f, inverses, d.forward.chosen, params) for k, r in raws.items()}
    d.param_derivatives = ch
    fx, fxx = d.d1.chosen, d.d2.chosen
    fp = {a: ch[f"f_p:{a}"].chosen for a in L}
    fxp = {a: ch[f"f_xp:{a}"].chosen for a in L}

    def fpp(a, b):
        i, j = sorted((L.index(a), L.index(b)))
        return ch[f"f_pp:{L[i]},{L[j]}"].chosen

    order = ["x", "y", "g", "Rx", "Rg", "H"] + [s for a in L for s in (a, "R" + a)]
    n, P = spec.name, spec.params
    kernels = [
        _kernel(f"{n}_forward", [("y", d.forward.chosen)], order, P, "forward", learnable=L),
        _kernel(f"{n}_vjp", [("gx", G * fx)], order, P, "vjp:x", learnable=L),
    ]
    kernels += [_kernel(f"{n}_vjp_{a}", [("g" + a, G * fp[a])], order, P, f"vjp:{a}", "sum", L) for a in L]
    kernels += [
        _kernel(f"{n}_jvp", [("Ry", fx * RX + sum(fp[a] * RPs[a] for a in L))], order, P, "jvp", learnable=L),
        _kernel(f"{n}_rvjp", [("Rgx", fxx * RX * G + sum(fxp[a] * RPs[a] for a in L) * G + fx * RG)], order, P,
                "rvjp:x", learnable=L),
    ]
    kernels += [_kernel(f"{n}_rvjp_{a}", [("Rg" + a, fxp[a] * RX * G + sum(fpp(a, b) * RPs[b] for b in L) * G
                                           + fp[a] * RG)], order, P, f"rvjp:{a}", "sum", L) for a in L]
    kernels.append(_kernel(f"{n}_bl_x", [("hx", fx ** 2 * H + fxx * G)], order, P, "bl:x", learnable=L))
    kernels += [_kernel(f"{n}_bl_{a}", [("h" + a, fp[a] ** 2 * H + fpp(a, a) * G)], order, P, f"bl:{a}", "sum", L)
                for a in L]
    kernels += [_kernel(f"{n}_sqvjp_{a}", [("s" + a, fp[a])], order, P, f"sqvjp:{a}", "sqsum", L) for a in L]
    if fxx != 0:
        kernels.append(_kernel(f"{n}_curv_x", [("r", fxx * G)], order, P, "curv:x", learnable=L))
    d.kernels = kernels
