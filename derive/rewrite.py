"""Cost-aware, stability-checked rewriting of scalar expressions.

``sympy.simplify`` optimizes for size, not cost or stability (it turns σ' into
``1/(4cosh²(x/2))`` and keeps ``log(1 + exp(x))``, which loses everything below
x ≈ -37). Here a rewrite is a *candidate*: every candidate is evaluated in float32 and
float64 on a grid of points against a 50-digit mpmath reference of the textbook form,
candidates with more bad points than the best are dropped, and the cheapest survivor
(by :func:`symprop.derive.cost.op_cost`) wins.
"""
from __future__ import annotations

import functools

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import mpmath
import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from .cost import op_cost


class finite_or(sp.Function):
    """``finite_or(e, a)``: e where it is finite, else a — the kernel-side guard that replaces
    an overflowed intermediate (inf/inf, inf·0) by the function's limit. Printed as one
    branch-free select (``symprop_finite_or``)."""
    nargs = 2


def _np_finite_or(e, a):
    e = np.asarray(e)
    return np.where(np.isfinite(e), e, a)


class nan_through(sp.Function):
    """``nan_through(e, v)``: v where v is NaN, else e — carries a NaN input through a form
    whose comparisons or guards would map it to a number (an Iverson bracket ``[x > 0]``, a
    ``finite_or`` fallback). Printed as one select (``symprop_nan_through``)."""
    nargs = 2

    def _latex(self, printer, exp=None):
        """LaTeX shows the function; the guard only realizes it in floating point."""
        out = printer._print(self.args[0])
        return out if exp is None else r"\left(" + out + r"\right)^{" + exp + "}"


def _np_nan_through(e, v):
    return np.where(np.isnan(v), v, e)


class at_infinity(sp.Function):
    """``at_infinity(e, v, s, a)``: a where v = s·∞ (s = ±1), else e — a form that evaluates
    inf·0 or inf/inf at ±∞ returns the function's limit there. Printed as one compare and
    one select (``symprop_at_infinity``)."""
    nargs = 4

    def _latex(self, printer, exp=None):
        """LaTeX shows the function; the guard only realizes it in floating point."""
        out = printer._print(self.args[0])
        return out if exp is None else r"\left(" + out + r"\right)^{" + exp + "}"


def _np_at_infinity(e, v, s, a):
    return np.where(np.asarray(v) == s * np.inf, a, e)


#: what a guard adds to a form's op count (compares and selects, no libm call)
GUARD_COST = {nan_through: 2, at_infinity: 2}


def clean_distributions(expr: sp.Basic) -> sp.Basic:
    """Replace the artefacts of differentiating piecewise functions by the a.e. derivative:
    ``DiracDelta(u) -> 0`` and ``Heaviside(u) -> [u > 0]``."""
    expr = expr.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
    expr = expr.replace(lambda e: isinstance(e, sp.Heaviside),
                        lambda e: sp.Piecewise((sp.S.One, e.args[0] > 0), (sp.S.Zero, True)))
    return expr


@functools.lru_cache(maxsize=4096)
def _stable_rules(expr: sp.Basic) -> sp.Basic:
    """Rewrite known overflow/cancellation patterns into their stable equivalents (memoised:
    candidate forms of high-order derivatives are large and met several times)."""
    def softplus(e):
        # log(1 + exp(u)) -> max(u, 0) + log1p(exp(-|u|))
        if isinstance(e, sp.log) and isinstance(e.args[0], sp.Add):
            a = e.args[0]
            if len(a.args) == 2 and sp.S.One in a.args:
                other = [t for t in a.args if t != sp.S.One][0]
                if isinstance(other, sp.exp):
                    u = other.args[0]
                    return sp.Max(u, 0) + log1p(sp.exp(-sp.Abs(u)))
                return log1p(other)
        return None

    def logistic(e):
        # exp(u)/(1 + exp(u)) -> 1/(1 + exp(-u))
        if not isinstance(e, sp.Expr):
            return None
        num, den = e.as_numer_denom()
        if isinstance(num, sp.exp) and isinstance(den, sp.Add) and len(den.args) == 2 \
                and sp.S.One in den.args and num in den.args:
            return 1 / (1 + sp.exp(-num.args[0]))
        return None

    def expm1_rule(e):
        # exp(u) - 1 -> expm1(u);  1 - exp(u) -> -expm1(u)
        if isinstance(e, sp.Add) and len(e.args) == 2:
            for one, sign in ((sp.S.NegativeOne, 1), (sp.S.One, -1)):
                if one in e.args:
                    other = [t for t in e.args if t != one][0]
                    if sign == 1 and isinstance(other, sp.exp):
                        return expm1(other.args[0])
                    if sign == -1 and isinstance(-other, sp.exp):
                        return -expm1((-other).args[0])
        return None

    def log_cosh(e):
        # log(cosh(u)) -> |u| + log1p(exp(-2|u|)) - log(2): cosh overflows for |u| > 89 (float32)
        if isinstance(e, sp.log) and isinstance(e.args[0], sp.cosh):
            u = sp.Abs(e.args[0].args[0])
            return u + log1p(sp.exp(-2 * u)) - sp.log(2)
        return None

    for rule in (softplus, logistic, expm1_rule, log_cosh):
        seen = {}   # each subexpression is tested once, not once in the test and again in the rewrite

        def apply(e, r=rule, seen=seen):
            if e not in seen:
                seen[e] = r(e)
            return seen[e]
        expr = expr.replace(lambda e, f=apply: f(e) is not None, lambda e, f=apply: f(e))
    return expr


class Folded(sp.NumberSymbol):
    """An irrational constant kept as one number (√2/2, 1/√(2π)): kernels and NumPy checks see
    one float literal, LaTeX the exact value. Used by :func:`float_coefficients`."""
    is_real = True
    is_finite = True
    is_irrational = True
    __slots__ = ("exact",)

    def __new__(cls, exact):
        obj = sp.Expr.__new__(cls)
        obj.exact = sp.sympify(exact)
        return obj

    def __getnewargs__(self):
        return (self.exact,)

    def _hashable_content(self):
        return (self.exact,)

    def __eq__(self, other):
        return isinstance(other, Folded) and self.exact == other.exact

    def __ne__(self, other):
        return not self == other

    __hash__ = sp.NumberSymbol.__hash__

    def _as_mpf_val(self, prec):
        return self.exact.evalf(mpmath.libmp.prec_to_dps(prec) + 5)._as_mpf_val(prec)

    def _latex(self, printer, exp=None):
        out = printer._print(self.exact)
        return out if exp is None else r"\left(" + out + r"\right)^{" + exp + "}"

    def _sympyrepr(self, printer):
        return f"Folded({printer._print(self.exact)})"

    def _sympystr(self, printer):
        return repr(float(self))


def float_coefficients(expr: sp.Basic) -> sp.Basic:
    """Irrational numeric coefficients folded into one constant (√2·x/2 → 0.7071…·x): the kernel
    multiplies once, and the common-subexpression pass finds no √2·x to share — an
    intermediate that overflows for |x| > 2.4e38 in float32 although the function does not."""
    def fold(m):
        coeff, rest = m.as_coeff_mul()
        num = [a for a in rest if a.is_number]
        return sp.Mul(Folded(sp.Mul(coeff, *num)), *[a for a in rest if not a.is_number])
    return expr.replace(lambda e: isinstance(e, sp.Mul) and any(a.is_number and not a.is_Rational
                                                                 and not isinstance(a, Folded) for a in e.args),
                        fold)


#: wall-clock bounds on SymPy calls are for interactive user specs only; `symprop generate`
#: turns them off so the emitted files never depend on machine load
_BOUNDED = [True]


@contextmanager
def unbounded():
    """Run SymPy calls without time limits (deterministic output for the built-in specs)."""
    _BOUNDED.append(False)
    try:
        yield
    finally:
        _BOUNDED.pop()


@contextmanager
def _time_limit(seconds: int):
    """Bound slow SymPy calls (solve/simplify on user specs); a no-op off the main thread."""
    if (not _BOUNDED[-1] or threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "SIGALRM")):
        yield
        return

    def handler(signum, frame):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _try(fn, seconds=5):
    try:
        with _time_limit(seconds):
            return fn()
    except Exception:  # noqa: BLE001 — a failed rewrite is just a missing candidate
        return None


def inverse_candidates(f: sp.Basic, x: sp.Symbol, y: sp.Symbol) -> list[sp.Basic]:
    """Solutions of ``y = f(x)`` for x (used to express derivatives in the saved output)."""
    sols = _try(lambda: sp.solve(sp.Eq(y, f), x), seconds=5) or []
    return [s for s in sols if not s.has(x)][:4]


def in_terms_of_output(d: sp.Basic, f: sp.Basic, x: sp.Symbol, y: sp.Symbol,
                       inverses: list[sp.Basic]) -> list[sp.Basic]:
    """Forms of the derivative ``d`` written with the forward output ``y = f(x)``."""
    out = []
    direct = d.subs(f, y)
    if direct != d:
        out.append(direct)
    for inv in inverses:
        sub = _try(lambda inv=inv: sp.simplify(d.subs(x, inv)))
        if sub is not None and not sub.has(x) and sub.is_finite is not False:
            out.append(sub)
            fac = _try(lambda sub=sub: sp.factor(sub))
            if fac is not None:
                out.append(fac)
    return out


# ---------------------------------------------------------------- numerical check

#: magnitudes beyond the central grid, up to float32's largest: forms must stay finite there
FAR = np.array([200.0, 1e3, 1e4, 1e6, 1e10, 1e20, 1e30, 3e38, float(np.finfo(np.float32).max)])


def sample_grid() -> np.ndarray:
    """Points where candidates are compared: tiny to huge magnitudes (up to the float32
    range), both signs, no 0."""
    mags = np.concatenate([np.logspace(-3, 2, 41), np.linspace(0.05, 5, 34), FAR])
    return np.unique(np.concatenate([-mags, mags]))


@dataclass
class Check:
    bad32: int
    bad64: int

    @property
    def key(self):
        return (self.bad64, self.bad32)


def reference_values(expr: sp.Basic, x: sp.Symbol, params: dict, grid: np.ndarray) -> np.ndarray:
    """50-digit mpmath values of ``expr`` on ``grid`` (NaN where undefined)."""
    fn = sp.lambdify([x] + list(params), expr, modules="mpmath")
    vals = []
    with mpmath.workdps(50):
        for g in grid:
            try:
                vals.append(float(fn(mpmath.mpf(float(g)), *[mpmath.mpf(v) for v in params.values()])))
            except (ZeroDivisionError, ValueError, TypeError, OverflowError):
                vals.append(np.nan)
    return np.array(vals)


def _numpy_fn(expr, args):
    return sp.lambdify(args, expr, modules=[{"log1p": np.log1p, "expm1": np.expm1, "finite_or": _np_finite_or,
                                             "nan_through": _np_nan_through, "at_infinity": _np_at_infinity},
                                            "numpy", "scipy"])


def _weak_constants(expr: sp.Basic) -> sp.Basic:
    """Irrational constants (√2, π, …) as float literals: NumPy keeps an array's dtype with a
    Python float but promotes float32 to float64 with ``numpy.sqrt(2)``; the kernels compute
    them in their own type."""
    consts = {a for a in sp.preorder_traversal(expr)
              if isinstance(a, sp.Expr) and a.is_number and a.is_extended_real and not a.is_Rational
              and not a.has(sp.oo, sp.zoo, sp.nan)}
    top = {a for a in consts if not any(a != b and b.has(a) for b in consts)}
    return expr.xreplace({a: a.evalf(17) for a in top})


_KERNEL_FNS: dict = {}


def _kernel_fn(expr: sp.Basic, args: list):
    """``expr`` as a kernel evaluates it: the same common-subexpression elimination as the
    emitted loop (``cost.cse_cost``), so an intermediate such as √2·x that overflows in the
    kernel overflows here too, each step a NumPy function of ``args`` and the earlier steps."""
    key = (expr, tuple(args))
    if key not in _KERNEL_FNS:
        repl, (reduced,) = sp.cse([expr], symbols=sp.numbered_symbols("_t"), optimizations="basic")
        steps, names = [], list(args)
        for t, v in repl:
            steps.append(_numpy_fn(_weak_constants(v), list(names)))
            names.append(t)
        last = _numpy_fn(_weak_constants(reduced), list(names))

        def fn(*vals):
            vals = list(vals)
            for step in steps:
                vals.append(step(*vals))
            return last(*vals)
        _KERNEL_FNS[key] = fn
    return _KERNEL_FNS[key]


def evaluate(expr: sp.Basic, x: sp.Symbol, y: sp.Symbol | None, forward: sp.Basic | None,
             params: dict, xs: np.ndarray) -> np.ndarray:
    """``expr`` at the points ``xs`` in their dtype, as a kernel evaluates it (its CSE steps,
    constants in the dtype): the saved output y from ``forward``; a float64 result (a complex
    intermediate, a log of a negative, gives NaN)."""
    dt = xs.dtype.type
    pv = [dt(v) for v in params.values()]
    with np.errstate(all="ignore"):
        args = [xs]
        if y is not None:
            yv = np.broadcast_to(_kernel_fn(forward, [x] + list(params))(xs, *pv), xs.shape).astype(dt)
            args.append(yv)
        syms = [x] + ([y] if y is not None else []) + list(params)
        val = np.broadcast_to(np.asarray(_kernel_fn(expr, syms)(*args, *pv)), xs.shape)
        if np.iscomplexobj(val):
            val = np.where(val.imag == 0, val.real, np.nan)
        return val.astype(np.float64)


def check_candidate(expr: sp.Basic, x: sp.Symbol, y: sp.Symbol | None, forward: sp.Basic | None,
                    params: dict, grid: np.ndarray, ref: np.ndarray) -> Check:
    """Count grid points where ``expr`` (evaluated as a kernel would, per dtype) is bad."""
    bad = []
    # Errors are measured relative to max(|reference|, scale) with scale the largest
    # reference magnitude for |x| <= 5: gradients need normwise, not tail-relative,
    # accuracy (as y(1-y) for σ' in every framework); overflow to inf/NaN is always bad.
    central = np.abs(grid) <= 5
    finite = np.isfinite(ref) & central
    scale = float(np.max(np.abs(ref[finite]))) if finite.any() else 1.0
    scale = scale if scale > 0 else 1.0
    for dt in (np.float32, np.float64):
        tol = 64 * float(np.finfo(dt).eps)
        val = evaluate(expr, x, y, forward, params, grid.astype(dt))
        with np.errstate(all="ignore"):
            r = ref.astype(dt).astype(np.float64)
            err = np.abs(val - r) / np.maximum(np.abs(r), scale)
            finite_ref = np.isfinite(r)
            badpts = finite_ref & (~np.isfinite(val) | (err > tol))
        bad.append(int(badpts.sum()))
    return Check(bad32=bad[0], bad64=bad[1])


def param_sets(params: dict) -> list[dict]:
    """The parameter values every form is checked at: the defaults, the nonzero ones doubled,
    halved and negated (a form whose overflow guard holds at β = 1 can give inf/inf at β = 2,
    and a learnable β can turn negative in training)."""
    out = [dict(params)]
    for scale in (2.0, 0.5, -1.0):
        scaled = {p: v * scale for p, v in params.items()}
        if scaled not in out:
            out.append(scaled)
    return out


def _branch_at(pw: sp.Piecewise, x: sp.Symbol, side) -> sp.Basic | None:
    """The branch of ``pw`` that holds for every x beyond some bound towards ``side`` (±∞)."""
    for e, c in pw.args:
        v = c if c in (sp.true, sp.false) else _try(lambda c=c: c.subs(x, side))
        if v == sp.true:
            return e
        if v != sp.false:
            return None
    return None


_LIMITS: dict = {}


def _one_sided_limit(e: sp.Basic, x: sp.Symbol, side):
    """The limit of ``e`` at ``side`` (±∞) — a piecewise function's outermost branch's — when
    SymPy finds a finite one or ±∞, else None."""
    for pw in sorted(e.atoms(sp.Piecewise), key=sp.default_sort_key):
        branch = _branch_at(pw, x, side)
        if branch is None:
            return None
        e = e.xreplace({pw: branch})
    L = _try(lambda: sp.limit(e, x, side), seconds=10)
    ok = (L is not None and not L.has(x, sp.AccumBounds, sp.nan, sp.zoo)
          and (L.is_finite or L in (sp.oo, -sp.oo)))
    return L if ok else None


def limits_at_infinity(textbook: sp.Basic, x: sp.Symbol, params: dict) -> tuple:
    """(L+, L−): the limits of ``textbook`` at +∞ and −∞ — finite expressions in the
    parameters, ``oo`` or ``-oo`` — or None where SymPy finds none (no limit, an oscillation,
    a timeout). Derived with the parameters positive; a parameter whose sign changes a limit
    (swish's β) gives cases ``Piecewise((L, p > 0), (L_neg, p < 0), (L at p = 0, True))``."""
    key = (textbook, x, tuple(sorted(map(str, params))))
    if key in _LIMITS:
        return _LIMITS[key]
    pos = {p: sp.Symbol(p.name, positive=True) for p in params}

    def limit(expr, assume, side):
        L = _one_sided_limit(expr.xreplace(assume), x, side)
        return None if L is None else L.xreplace({v: k for k, v in assume.items()})

    out = [limit(textbook, pos, side) for side in (sp.oo, -sp.oo)]
    present = {s.name for s in textbook.free_symbols}
    for p in params:
        if p.name not in present:   # its sign cannot change a limit (a pullback to another parameter)
            continue
        neg = {**pos, p: sp.Symbol(p.name, negative=True)}
        for i, side in enumerate((sp.oo, -sp.oo)):
            if out[i] is None:
                continue
            L_neg = limit(textbook, neg, side)
            if L_neg == out[i]:
                continue
            L_zero = limit(textbook.subs(p, 0), pos, side)
            out[i] = None if L_neg is None or L_zero is None else \
                sp.Piecewise((out[i], p > 0), (L_neg, p < 0), (L_zero, True))
    _LIMITS[key] = tuple(out)
    return _LIMITS[key]


def _limit_fallback(textbook: sp.Basic, x: sp.Symbol, params: dict):
    """``Piecewise((L+, x > 0), (L−, True))`` with L± the finite limits of ``textbook`` at ±∞
    (parameters taken positive), or None when neither is finite."""
    lims = [L if L is not None and not L.has(sp.oo, -sp.oo) else None
            for L in limits_at_infinity(textbook, x, params)]
    if lims[0] is None and lims[1] is None:
        return None
    if lims[0] is None:
        return lims[1]
    if lims[1] is None or lims[1] == lims[0]:
        return lims[0]
    return sp.Piecewise((lims[0], x > 0), (lims[1], True))


@dataclass
class NonfiniteCheck:
    """Where a form breaks the non-finite semantics (for some dtype and parameter set):
    ``nan``: a NaN input gives a number; ``plus``/``minus``: the value at ±∞ is not the
    limit there (inf·0 = NaN where the limit is 0, …)."""
    nan: bool = False
    plus: bool = False
    minus: bool = False

    @property
    def ok(self) -> bool:
        return not (self.nan or self.plus or self.minus)


def check_nonfinite(expr: sp.Basic, x: sp.Symbol, y: sp.Symbol | None, forward: sp.Basic | None,
                    params: dict, limits: tuple) -> NonfiniteCheck:
    """Evaluate ``expr`` (as a kernel would, both dtypes, every parameter set) at NaN, +∞ and
    −∞: NaN must give NaN when ``expr`` reads x or y, ±∞ the limits ``limits`` (a side whose
    limit SymPy does not know is not checked)."""
    out = NonfiniteCheck()
    reads_input = expr.has(x) or (y is not None and expr.has(y))
    for pset in param_sets(params):
        for dt in (np.float32, np.float64):
            tol = 64 * float(np.finfo(dt).eps)
            val = evaluate(expr, x, y, forward, pset, np.array([np.nan, np.inf, -np.inf], dt))
            out.nan |= reads_input and not np.isnan(val[0])
            for side, v, L in (("plus", val[1], limits[0]), ("minus", val[2], limits[1])):
                if L is None:
                    continue
                want = float(L.subs({p: float(pv) for p, pv in pset.items()}))
                if np.isinf(want) or np.isnan(want):
                    bad = not v == want
                else:
                    bad = not (np.isfinite(v) and abs(v - want) <= tol * max(1.0, abs(want)))
                setattr(out, side, getattr(out, side) or bad)
    return out


def guard_nonfinite(form: sp.Basic, textbook: sp.Basic, x: sp.Symbol, y: sp.Symbol | None,
                    forward: sp.Basic | None, params: dict) -> tuple[sp.Basic, int]:
    """``form`` made to return NaN at a NaN input and the limits of ``textbook`` at ±∞, with
    the least guarding that does it (checked with :func:`check_nonfinite`): none when the form
    already does (``max(0, x)``, ``tanh``); ``at_infinity`` for a side that gives inf·0 or
    inf/inf (an infinite limit written ±x, which is ±∞ there); then ``nan_through`` when a
    NaN input still gives a number (an Iverson bracket, a ``finite_or`` fallback). Returns
    the form and the guards' op cost."""
    limits = limits_at_infinity(textbook, x, params)
    faults = check_nonfinite(form, x, y, forward, params, limits)
    cost = 0
    for bad, sign, L in ((faults.plus, 1, limits[0]), (faults.minus, -1, limits[1])):
        if bad:   # an infinite limit is ±x there (x = sign·∞)
            value = L.xreplace({sp.oo: sign * x, sp.S.NegativeInfinity: -sign * x})
            form = at_infinity(form, x, sp.Integer(sign), value)
            cost += GUARD_COST[at_infinity]
    if cost:
        faults = check_nonfinite(form, x, y, forward, params, limits)
    if faults.nan:
        form = nan_through(form, x if form.has(x) else y)
        cost += GUARD_COST[nan_through]
        faults = check_nonfinite(form, x, y, forward, params, limits)
    if not faults.ok:   # cannot happen for guards that select the limits; keep the check honest
        raise ValueError(f"guarding {form} at NaN/±inf left {faults}")
    return form, cost


@dataclass
class Choice:
    """The chosen form of one expression, with what it was chosen against."""
    textbook: sp.Basic
    chosen: sp.Basic
    cost_before: int
    cost_after: int
    uses_output: bool
    candidates: int


def choose_form(textbook: sp.Basic, candidates: list[sp.Basic], x: sp.Symbol,
                y: sp.Symbol | None, forward: sp.Basic | None, params: dict,
                grid: np.ndarray | None = None) -> Choice:
    """Pick the cheapest candidate among the numerically best ones, then guard it at NaN and
    ±∞ (:func:`guard_nonfinite`).

    ``textbook`` is the raw derivative (after removing distribution artefacts); it is both
    the reference (evaluated with mpmath) and the 'before' of the recorded op counts.
    Candidates are checked at every parameter set of :func:`param_sets`; bad points add up.
    """
    grid = sample_grid() if grid is None else grid
    psets = param_sets(params)
    refs = [reference_values(textbook, x, ps, grid) for ps in psets]

    def check(form):
        checks = [check_candidate(form, x, y, forward, ps, grid, ref) for ps, ref in zip(psets, refs)]
        return Check(bad32=sum(c.bad32 for c in checks), bad64=sum(c.bad64 for c in checks))

    pool, seen = [], set()
    for c in [textbook] + candidates:
        stable = _stable_rules(c)
        for form in (c, stable, float_coefficients(c), float_coefficients(stable)):
            if form is None or form in seen or form.has(sp.nan, sp.zoo, sp.oo):
                continue
            if form.free_symbols - ({x} | ({y} if y is not None else set()) | set(params)):
                continue
            seen.add(form)
            try:
                pool.append((check(form), form))
            except Exception:  # noqa: BLE001 — a candidate numpy cannot evaluate is dropped
                continue
    best = min(ch.key for ch, _ in pool)
    if best != (0, 0):   # overflow at large |x|: guard the best forms with the limits at ±∞
        fallback = _limit_fallback(textbook, x, params)
        if fallback is not None:
            ranked = sorted(pool, key=lambda cf: (cf[0].key, op_cost(cf[1]), sp.srepr(cf[1])))[:8]
            for _, form in ranked:
                guarded = finite_or(form, fallback)
                try:
                    pool.append((check(guarded), guarded))
                except Exception:  # noqa: BLE001
                    continue
            best = min(ch.key for ch, _ in pool)
    survivors = [f for ch, f in pool if ch.key == best]
    # cheapest; ties broken by a stable textual order so output is deterministic
    chosen = min(survivors, key=lambda f: (op_cost(f), len(sp.srepr(f)), sp.srepr(f)))
    cost_after = op_cost(chosen)
    chosen, guard_cost = guard_nonfinite(chosen, textbook, x, y, forward, params)
    return Choice(textbook=textbook, chosen=chosen, cost_before=op_cost(textbook),
                  cost_after=cost_after + guard_cost, uses_output=y is not None and chosen.has(y),
                  candidates=len(pool))
