"""Loss specs: per-sample losses, their gradients and Hessian-vector terms, derived.

Softmax cross-entropy is written with the log-sum-exp shift ``m`` (the row max) as a
free symbol; the derivation checks ∂ℓ/∂m = 0 (so any shift is exact) and that the
gradient reduces to ``p − onehot`` with ``p = softmax(z)``. Losses average over the
batch; MSE averages over all elements (as ``torch.nn.functional.mse_loss``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import sympy as sp

from .indexed import resolve_deltas
from .elementwise import SpecError

j, k, l_ = sp.symbols("j k l", integer=True)
K = sp.Symbol("K", integer=True, positive=True)
z, t, v, p = (sp.IndexedBase(s) for s in ("z", "t", "v", "p"))
m, S, s_dot, zt = sp.symbols("m S s z_t")


@dataclass
class SoftmaxCrossEntropyDerivation:
    """Per-row expressions for the softmax cross-entropy kernel family."""
    definition: sp.Expr        # ℓ(z; t) with shift m
    shift_derivative: sp.Expr  # ∂ℓ/∂m, must be 0
    grad_raw: sp.Expr          # ∂ℓ/∂z_j as SymPy derives it
    grad: sp.Expr              # in p: p_j − t_j
    hvp_raw: sp.Expr
    hvp: sp.Expr               # in p and s = Σ_l p_l v_l
    # scalar forms the kernel prints (element symbols without indices)
    row_loss: sp.Expr          # m + log(S) − z_t
    exp_term: sp.Expr          # exp(z − m)
    grad_elem: sp.Expr         # p − t
    hvp_elem: sp.Expr          # p·(v − s)
    name: str = "softmax_cross_entropy"

    @property
    def hash(self):
        return hashlib.sha256(sp.srepr(self.definition).encode()).hexdigest()[:16]


def _name_normalizer(expr: sp.Expr, Ssum: sp.Expr) -> sp.Expr:
    """Replace every sum that is a constant multiple of the normalizer Σ_k exp(z_k − m) by c·S."""
    def repl(e):
        ratio = sp.powsimp(e.function / Ssum.function)
        return ratio * S if not ratio.has(k) and e.limits == Ssum.limits else e
    return expr.replace(lambda e: isinstance(e, sp.Sum), repl)


def _to_p(expr: sp.Expr, Ssum: sp.Expr) -> sp.Expr:
    """Rewrite exp(z_i − m) as p_i·S and the normalizer sum as S."""
    expr = _name_normalizer(expr, Ssum)
    expr = expr.replace(
        lambda e: isinstance(e, sp.exp) and isinstance(e.args[0], sp.Add)
        and any(isinstance(a, sp.Indexed) and a.base == z for a in e.args[0].args),
        lambda e: p[[a for a in e.args[0].args if isinstance(a, sp.Indexed)][0].indices] * S)
    return sp.expand(expr, power_exp=False, log=False)


def derive_softmax_cross_entropy() -> SoftmaxCrossEntropyDerivation:
    Ssum = sp.Sum(sp.exp(z[k] - m), (k, 0, K - 1))
    loss = m + sp.log(Ssum) - sp.Sum(t[k] * z[k], (k, 0, K - 1))
    dm = sp.simplify(_name_normalizer(resolve_deltas(sp.diff(loss, m)), Ssum))
    if dm != 0:
        raise SpecError(f"softmax_cross_entropy: shift derivative is {dm}, not 0")
    grad_raw = resolve_deltas(sp.diff(loss, z[j]))
    grad = _to_p(grad_raw, Ssum)
    if sp.simplify(grad - (p[j] - t[j])) != 0:
        raise SpecError(f"softmax_cross_entropy: gradient {grad} did not reduce to p − onehot")
    hvp_raw = resolve_deltas(sp.Sum(sp.diff(grad_raw, z[l_]) * v[l_], (l_, 0, K - 1)))
    hvp = _to_p(hvp_raw, Ssum)
    dots = [e for e in hvp.atoms(sp.Sum)]
    hvp_s = hvp
    for d in dots:  # Σ_l p_l v_l is the one row reduction the kernel computes
        dep = sp.Mul(*[f for f in sp.Mul.make_args(d.function) if f.has(l_)])
        if dep == p[l_] * v[l_]:
            hvp_s = hvp_s.subs(d, (d.function / dep) * s_dot)
    if hvp_s.has(sp.Sum):
        raise SpecError(f"softmax_cross_entropy: HVP {hvp} has an unrecognized reduction")
    pe, te, ve = sp.symbols("p t v")
    elem = {p[j]: pe, t[j]: te, v[j]: ve}
    return SoftmaxCrossEntropyDerivation(
        definition=loss, shift_derivative=dm, grad_raw=grad_raw, grad=grad,
        hvp_raw=hvp_raw, hvp=hvp,
        row_loss=m + sp.log(S) - zt, exp_term=sp.exp(sp.Symbol("z") - m),
        grad_elem=grad.xreplace(elem), hvp_elem=sp.factor(hvp_s.xreplace(elem)))


@dataclass
class PointwiseLossDerivation:
    """ℓ = scale · Σ e(a, t) over all elements; gradient and (diagonal) Hessian terms.
    ``scalars``: names of the loss's scalar arguments (Huber's δ), kernel arguments."""
    name: str
    elem: sp.Expr
    grad_elem: sp.Expr
    hess_elem: sp.Expr
    scalars: tuple = ()

    @property
    def hash(self):
        extra = "".join(f"|{s}" for s in self.scalars)   # none: the hash of a loss without scalars
        return hashlib.sha256((self.name + sp.srepr(self.elem) + extra).encode()).hexdigest()[:16]


def derive_pointwise_loss(name: str, elem: sp.Expr, real: bool = False,
                          scalars: dict | None = None) -> PointwiseLossDerivation:
    """Element loss, gradient and Hessian in their cheapest numerically sound forms (the
    elementwise rewriter: stable softplus/logistic/log-cosh identities, overflow guards), checked
    for predictions up to the float32 range, a target of 0.5 and ``scalars`` (symbol -> default
    value; also at twice, half and minus it). ``real``: ``elem`` is written in real symbols
    ``a``, ``t`` (so |a − t| differentiates to a sign, not to complex parts)."""
    from .rewrite import _try, choose_form, clean_distributions
    a, tt = sp.symbols("a t", real=True) if real else sp.symbols("a t")
    params = {tt: 0.5, **(scalars or {})}
    def signs(e):   # |u|' = sign(u): written as the branches the kernels print
        return e.replace(sp.sign, lambda u: sp.Piecewise((1, u > 0), (-1, u < 0), (0, True)))
    g_raw = signs(clean_distributions(sp.diff(elem, a)))
    h_raw = signs(clean_distributions(sp.diff(g_raw, a)))

    def pick(raw):
        cands = [c for c in (_try(lambda: sp.factor(raw)), _try(lambda: sp.simplify(raw))) if c is not None]
        return choose_form(raw, cands, a, None, None, params).chosen
    return PointwiseLossDerivation(name=name, elem=pick(elem), grad_elem=pick(g_raw), hess_elem=pick(h_raw),
                                   scalars=tuple(str(s) for s in (scalars or {})))


#: names a pointwise loss kernel uses itself (prediction, target, locals, arguments)
RESERVED_SCALARS = frozenset({"a", "t", "e", "scale", "total", "size", "grad", "dt", "want_grad"})


@dataclass(frozen=True)
class PointwiseLossSpec:
    """A user's elementwise loss ``ℓ(z, t)`` (prediction ``z``, target ``t``), averaged over
    all elements; its gradient and Hessian term are derived like the built-ins'. ``scalars``:
    ``(name, default)`` pairs of symbols in ``expr`` that are arguments of the loss (Huber's
    ``delta``), given when the loss is made (``losses.get_loss("huber", delta=2.0)``)."""
    name: str
    expr: sp.Expr
    z: sp.Symbol
    t: sp.Symbol
    doc: str = ""
    scalars: tuple = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise SpecError(f"loss spec name {self.name!r} must be a Python identifier")
        if not isinstance(self.expr, sp.Expr):
            raise SpecError(f"loss {self.name!r}: expr must be a SymPy expression, got {type(self.expr).__name__}")
        for role, s in (("z (the prediction)", self.z), ("t (the target)", self.t)):
            if not isinstance(s, sp.Symbol):
                raise SpecError(f"loss {self.name!r}: {role} must be a sympy.Symbol, got {s!r}")
        if self.z == self.t:
            raise SpecError(f"loss {self.name!r}: the prediction and the target must be different symbols")
        names = []
        for pair in self.scalars:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and pair[0].isidentifier()
                    and isinstance(pair[1], (int, float)) and not isinstance(pair[1], bool)):
                raise SpecError(f"loss {self.name!r}: scalars must be (name, default number) pairs, got {pair!r}")
            names.append(pair[0])
        if len(set(names)) != len(names) or {str(self.z), str(self.t)} & set(names):
            raise SpecError(f"loss {self.name!r}: scalar names {names} must be distinct and differ from "
                            f"{self.z} and {self.t}")
        taken = sorted(n for n in names if n in RESERVED_SCALARS or n.endswith("_p") or n.startswith("_"))
        if taken:   # the kernel's own names: its prediction a, target t and locals
            raise SpecError(f"loss {self.name!r}: scalar name(s) {taken} are the kernels' own "
                            f"({', '.join(sorted(RESERVED_SCALARS))}, …_p, _…); rename them")
        extra = {s for s in self.expr.free_symbols - {self.z, self.t} if s.name not in names}
        if extra:
            raise SpecError(f"loss {self.name!r}: unbound symbol(s) {sorted(map(str, extra))} in {self.expr}; "
                            f"the loss may use only {self.z}, {self.t}"
                            + "".join(f", {n}" for n in names) + " (write constants as numbers)")
        if not self.expr.has(self.z):
            raise SpecError(f"loss {self.name!r}: {self.expr} does not depend on the prediction {self.z}")

    @property
    def scalar_symbols(self) -> dict:
        """The scalars as the kernel's real symbols -> their defaults."""
        return {sp.Symbol(n, real=True): float(v) for n, v in self.scalars}

    def defaults(self) -> dict:
        """Scalar name -> default value."""
        return {n: float(v) for n, v in self.scalars}

    @property
    def canonical(self) -> sp.Expr:
        """The expression in the kernel's own symbols (prediction ``a``, target ``t``, real scalars)."""
        a, tt = sp.symbols("a t", real=True)
        own = {s: sp.Symbol(s.name, real=True) for s in self.expr.free_symbols
               if s.name in dict(self.scalars)}
        return self.expr.xreplace({self.z: a, self.t: tt, **own})

    @property
    def hash(self) -> str:
        extra = "".join(f"|{n}" for n, _ in self.scalars)   # none: a loss without scalars keeps its hash
        return hashlib.sha256((self.name + sp.srepr(self.canonical) + extra).encode()).hexdigest()[:16]


#: spec -> its derivation, once per process (the document derives the built-in ones for every
#: page it writes: several seconds each)
_DERIVED: dict = {}


def derive_user_loss(spec: PointwiseLossSpec) -> PointwiseLossDerivation:
    """Derive a pointwise loss spec (a user's, or a built-in written as one); a loss SymPy cannot
    differentiate twice is refused by name."""
    if spec not in _DERIVED:
        _DERIVED[spec] = _derive_user_loss(spec)
    return _DERIVED[spec]


def _derive_user_loss(spec: PointwiseLossSpec) -> PointwiseLossDerivation:
    try:
        d = derive_pointwise_loss(spec.name, spec.canonical, real=True, scalars=spec.scalar_symbols)
    except SpecError:
        raise
    except Exception as exc:  # noqa: BLE001 - SymPy's errors name no spec
        raise SpecError(f"loss {spec.name!r}: cannot derive {spec.expr}: {type(exc).__name__}: {exc}") from exc
    for what, e in (("gradient", d.grad_elem), ("Hessian", d.hess_elem)):
        if e.has(sp.Derivative, sp.Subs):
            raise SpecError(f"loss {spec.name!r}: its {what} {e} is not in closed form")
    return d


def mse() -> PointwiseLossDerivation:
    a, tt = sp.symbols("a t")
    return derive_pointwise_loss("mse", (a - tt) ** 2)


def sigmoid_cross_entropy() -> PointwiseLossDerivation:
    """Binary cross-entropy of logits ``a`` against targets ``t`` ∈ [0, 1], per element:
    −t·log σ(a) − (1 − t)·log(1 − σ(a)) = log(1 + eᵃ) − t·a (PyTorch's
    ``binary_cross_entropy_with_logits``), mean over all elements."""
    a, tt = sp.symbols("a t")
    return derive_pointwise_loss("sigmoid_cross_entropy", sp.log(1 + sp.exp(a)) - tt * a)


# ---------------------------------------------------------------- built-in pointwise losses
# Written exactly as a user writes a loss for ``losses.from_sympy``; ``symprop generate`` emits
# their kernels into the built-in losses module (``codegen/losses.py``).
_zs, _ts, _delta = sp.symbols("z t delta")
_d = _zs - _ts

#: name -> spec of every built-in loss written as a :class:`PointwiseLossSpec`
POINTWISE_LOSSES = {spec.name: spec for spec in (
    PointwiseLossSpec(
        "huber", sp.Piecewise((_d ** 2 / 2, sp.Abs(_d) <= _delta), (_delta * (sp.Abs(_d) - _delta / 2), True)),
        _zs, _ts, scalars=(("delta", 1.0),),
        doc="Quadratic within δ of the target, linear beyond: PyTorch's HuberLoss."),
    PointwiseLossSpec(
        "log_cosh", sp.log(sp.cosh(_d)), _zs, _ts,
        doc="About (a - t)²/2 near the target and |a - t| - log 2 far from it; the kernel computes "
            "the form that cannot overflow."),
)}
