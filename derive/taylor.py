"""Taylor mode for elementwise specs: derivatives with respect to a layer's *input*, derived.

For ``y = f(x)`` applied elementwise and an input moving along a curve ``x(t)`` with
derivative coefficients ``x₁ … x_K`` (``x_k = dᵏx/dtᵏ``), the output's coefficients
``y_k = dᵏ f(x(t))/dtᵏ`` are Faà di Bruno's combinations of ``f′ … f⁽ᵏ⁾``. They are found
here by SymPy from a truncated Taylor series, not written down:

=================  ===========================================================
``taylor:K``       y, y₁ … y_K from x, x₁ … x_K (K = 1 … 4), one set of x_k per direction
``laplacian``      the collapsed second-order sweep (the forward Laplacian): from z, the d
                   first-order coefficients J and the summed second-order coefficient L,
                   y = f(z), J_y = f′(z)·J, L_y = f′(z)·L + f″(z)·Σ_k J_k²
``vjp:<role>``     the pullback of a role to each of its inputs (a role too: the VJP of a
                   role is derived from the role's expressions by SymPy)
=================  ===========================================================

A role is written with abstract derivative symbols ``F1 … F5`` (f′ … f⁽⁵⁾, ``F0`` = y) so
differentiating a role with respect to x is the chain rule ``dF_j/dx = F_{j+1}``; only at the
end are the F_j replaced by their chosen forms (the same cost- and stability-checked choice
as f′ and f″ of :mod:`derive.elementwise`, often written with the output y: tanh⁽ᵏ⁾ is a
polynomial in y).

Per-direction arrays (``J``, ``x_k``) have an extra leading axis of length d (the directions);
``dsum(e)`` is the sum over that axis of a per-direction expression ``e``. A role's outputs are
*point* outputs (one value per element) and *direction* outputs (one per element and
direction); :func:`vjp_role` handles both, including the sums.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import sympy as sp

from .elementwise import X, Y, DerivedElementwise, ElementwiseSpec, SpecError, derive_elementwise
from .rewrite import Choice, choose_form, clean_distributions, finite_or

#: highest Taylor order of the roles (order-K VJPs need f^(K+1))
MAX_ORDER = 4
#: candidate forms larger than this (SymPy operation count) are not factored
FACTOR_MAX_OPS = 120
#: f', f'', …, f^(MAX_ORDER + 1) as abstract symbols; F0 is the output y
F = [Y] + [sp.Symbol(f"F{j}") for j in range(1, MAX_ORDER + 2)]
#: ∂f^(j)/∂p for a learnable parameter p (P0 = ∂y/∂p), abstract like F
P = [sp.Symbol(f"P{j}") for j in range(MAX_ORDER + 2)]


class dsum(sp.Function):
    """``dsum(e)``: Σ over the direction axis of the per-direction expression ``e``."""
    nargs = 1


@dataclass
class TaylorRole:
    """One Taylor-mode kernel: point and per-direction inputs and outputs (expressions in
    ``F`` symbols until :func:`realize` substitutes the spec's chosen forms)."""
    role: str
    point_inputs: list[str]
    dir_inputs: list[str]
    point_outputs: list[tuple[str, sp.Basic]]
    dir_outputs: list[tuple[str, sp.Basic]]
    scalars: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> list[str]:
        return self.point_inputs + self.dir_inputs

    @property
    def outputs(self) -> list[str]:
        return [o for o, _ in self.point_outputs] + [o for o, _ in self.dir_outputs]


# ---------------------------------------------------------------- the rules, in F symbols

@lru_cache(maxsize=None)
def faa_di_bruno(K: int) -> tuple:
    """``(y₁, …, y_K)`` in F₁…F_K and x₁…x_K: the coefficients of f(x(t)) at t = 0, from
    the truncated series Σ_j F_j h^j/j! with h = Σ_i x_i tⁱ/i!."""
    if not 1 <= K <= MAX_ORDER:
        raise SpecError(f"Taylor order {K} is not supported (1 … {MAX_ORDER})")
    t = sp.Dummy("t")
    xs = sp.symbols(f"x1:{K + 1}")
    h = sum(xs[i - 1] * t ** i / sp.factorial(i) for i in range(1, K + 1))
    series = sum(F[j] * h ** j / sp.factorial(j) for j in range(1, K + 1))
    return tuple(sp.expand(sp.diff(series, t, m).subs(t, 0)) for m in range(1, K + 1))


def taylor_role(K: int) -> TaylorRole:
    """``taylor:K``: y = f(x) and y_k (k = 1 … K) along every direction."""
    ys = faa_di_bruno(K)
    return TaylorRole(f"taylor:{K}", ["x"], [f"x{k}" for k in range(1, K + 1)],
                      [("y", Y)], [(f"y{k}", e) for k, e in enumerate(ys, 1)])


def laplacian_role() -> TaylorRole:
    """The forward Laplacian, collapsed from ``taylor:2`` by summing over the directions:
    Σ_k y₂ = Σ_k (F₂ x₁² + F₁ x₂) = F₂ Σ_k x₁² + F₁ L with x₁ → J, Σ_k x₂ → L."""
    y1, y2 = faa_di_bruno(2)
    x1, x2 = sp.symbols("x1 x2")
    J, Lsym = sp.Symbol("J"), sp.Symbol("L")
    collapsed = sp.S.Zero
    for term in sp.Add.make_args(sp.expand(y2)):
        point = sp.Mul(*[f for f in sp.Mul.make_args(term) if not f.has(x1, x2)])
        per_dir = sp.Mul(*[f for f in sp.Mul.make_args(term) if f.has(x1, x2)])
        if per_dir == x2:            # Σ_k x₂ is the incoming summed coefficient
            collapsed += point * Lsym
        else:
            collapsed += point * dsum(per_dir.subs(x1, J))
    return TaylorRole("laplacian", ["x", "L"], ["J"], [("y", Y), ("Ly", collapsed)], [("Jy", y1.subs(x1, J))])


def collapsed_role(K: int) -> TaylorRole:
    """``collapsed:K``: ``taylor:K`` with the order-K coefficient summed over the directions
    with constant weights c_j (collapsed Taylor mode): from x, the per-direction x₁ … x_{K−1}
    and T = Σ_j c_j x_K⁽ʲ⁾, the outputs y, y₁ … y_{K−1} per direction and
    T_y = Σ_j c_j y_K⁽ʲ⁾ = F₁ T + Σ_j c_j (y_K⁽ʲ⁾ − F₁ x_K⁽ʲ⁾) (y_K is linear in x_K with
    coefficient F₁). A combination Σ_j c_j D^K_{w_j} u (Δ²u from jets along a few directions)
    then travels as one block instead of m."""
    if not 2 <= K <= MAX_ORDER:
        raise SpecError(f"collapsed Taylor order {K} is not supported (2 … {MAX_ORDER})")
    ys = faa_di_bruno(K)
    xK, c, T = sp.Symbol(f"x{K}"), sp.Symbol("c"), sp.Symbol("T")
    rest = sp.expand(ys[-1] - F[1] * xK)
    assert not rest.has(xK), rest
    Ty = F[1] * T + dsum(sp.expand(c * rest))
    return TaylorRole(f"collapsed:{K}", ["x", "T"], ["c"] + [f"x{k}" for k in range(1, K)],
                      [("y", Y), ("Ty", Ty)], [(f"y{k}", e) for k, e in enumerate(ys[:-1], 1)])


def role_vjp(r: TaylorRole) -> TaylorRole:
    """The pullback of a forward role to the inputs that carry coefficients (not a collapsed
    role's weights c, which are constants), named ``vjp:<role>``."""
    wrt = [a for a in r.inputs if a != "c"]
    v = vjp_role(r, wrt)
    return TaylorRole(f"vjp:{r.role}", v.point_inputs, v.dir_inputs, v.point_outputs, v.dir_outputs, v.scalars)


# ---------------------------------------------------------------- differentiation of roles

def _d_point(expr: sp.Basic, a: sp.Symbol) -> sp.Basic:
    """∂expr/∂a for a point symbol a (``x`` differentiates through the F chain)."""
    sums = sorted(expr.atoms(dsum), key=sp.default_sort_key)
    S = sp.symbols(f"_S0:{len(sums)}")
    e = expr.xreplace(dict(zip(sums, S)))
    if a == X:
        out = sp.diff(e, X) + sum(sp.diff(e, F[j]) * F[j + 1] for j in range(len(F) - 1))
    else:
        out = sp.diff(e, a)
    for s, sm in zip(S, sums):
        inner = _d_point(sm.args[0], a)
        if inner != 0:
            out += sp.diff(e, s) * dsum(inner)
    return out.xreplace(dict(zip(S, sums)))


def _d_dir(expr: sp.Basic, b: sp.Symbol) -> sp.Basic:
    """∂expr/∂b_k for a per-direction symbol b at one direction k: a point expression
    depends on b_k only through its sums (∂ dsum(e)/∂b_k = ∂e/∂b at k)."""
    sums = sorted(expr.atoms(dsum), key=sp.default_sort_key)
    S = sp.symbols(f"_S0:{len(sums)}")
    e = expr.xreplace(dict(zip(sums, S)))
    out = sp.diff(e, b)
    for s, sm in zip(S, sums):
        out += sp.diff(e, s) * sp.diff(sm.args[0], b)
    return out.xreplace(dict(zip(S, sums)))


def cotangent(name: str) -> str:
    return "g" + name


def vjp_role(r: TaylorRole, wrt: list[str] | None = None) -> TaylorRole:
    """The pullback of role ``r`` to its inputs ``wrt`` (default: all): with cotangents
    ``g<out>`` of every output, ℓ = Σ_o g_o·P_o + Σ_k Σ_q g_q·Q_q and each output is
    ``g<input>`` = ∂ℓ/∂input (a point or per-direction array, like the input)."""
    wrt = list(r.inputs) if wrt is None else list(wrt)
    unknown = [a for a in wrt if a not in r.inputs]
    if unknown:
        raise SpecError(f"role {r.role!r} has no input(s) {unknown}; it has {r.inputs}")
    gp = [(sp.Symbol(cotangent(o)), e) for o, e in r.point_outputs]
    gd = [(sp.Symbol(cotangent(o)), e) for o, e in r.dir_outputs]
    point_out, dir_out = [], []
    for a in wrt:
        s = sp.Symbol(a)
        if a in r.point_inputs:
            total = sum((g * _d_point(e, s) for g, e in gp), sp.S.Zero)
            per_dir = sum((g * _d_point(e, s) for g, e in gd), sp.S.Zero)
            if per_dir != 0:
                total += dsum(sp.expand(per_dir))
            point_out.append((cotangent(a), total))
        else:
            total = sum((g * _d_dir(e, s) for g, e in gp), sp.S.Zero)
            total += sum((g * sp.diff(e, s) for g, e in gd), sp.S.Zero)
            dir_out.append((cotangent(a), total))
    return TaylorRole(f"vjp:{r.role}" + ("" if wrt == r.inputs else ":" + ",".join(wrt)),
                      r.point_inputs + [cotangent(o) for o, _ in r.point_outputs],
                      r.dir_inputs + [cotangent(o) for o, _ in r.dir_outputs],
                      point_out, dir_out)


def _d_param(expr: sp.Basic) -> sp.Basic:
    """∂expr/∂p for a parameter p of f: every F_j (and y = F0) depends on p, ∂F_j/∂p = P_j;
    the direction inputs do not."""
    sums = sorted(expr.atoms(dsum), key=sp.default_sort_key)
    S = sp.symbols(f"_S0:{len(sums)}")
    e = expr.xreplace(dict(zip(sums, S)))
    out = sum((sp.diff(e, F[j]) * P[j] for j in range(len(F))), sp.S.Zero)
    for s, sm in zip(S, sums):
        inner = _d_param(sm.args[0])
        if inner != 0:
            out += sp.diff(e, s) * dsum(inner)
    return out.xreplace(dict(zip(S, sums)))


def param_pullback(r: TaylorRole, p: str) -> tuple[str, sp.Basic]:
    """The pullback of role ``r`` to a parameter p of f, per element (the runtime sums it over
    the elements p is shared by): Σ_o g_o·∂P_o/∂p + Σ_k Σ_q g_q·∂Q_q/∂p."""
    total = sum((sp.Symbol(cotangent(o)) * _d_param(e) for o, e in r.point_outputs), sp.S.Zero)
    per_dir = sum((sp.Symbol(cotangent(o)) * _d_param(e) for o, e in r.dir_outputs), sp.S.Zero)
    if per_dir != 0:
        total += dsum(sp.expand(per_dir))
    return cotangent(p), total


def base_roles(max_order: int = MAX_ORDER) -> list[TaylorRole]:
    """Every forward role (``taylor:1`` … ``taylor:max_order``, ``laplacian``, ``collapsed:3``
    … ``collapsed:max_order``)."""
    return ([taylor_role(k) for k in range(1, max_order + 1)] + [laplacian_role()]
            + [collapsed_role(k) for k in range(3, max_order + 1)])


# ---------------------------------------------------------------- the spec's f', …, f^(5)

def _unguard(e: sp.Basic) -> sp.Basic:
    """The function a chosen form computes, without its floating-point guards (overflow
    fallbacks, NaN carriers, limits at ±∞): what is differentiated for the next order."""
    from .rewrite import at_infinity, nan_through
    return e.replace(lambda a: isinstance(a, (finite_or, nan_through, at_infinity)), lambda a: a.args[0])


def _total_dx(c: sp.Basic, d1: sp.Basic) -> sp.Basic:
    """d/dx of a form in x and the output y (dy/dx = f′, in its chosen form ``d1``)."""
    c = _unguard(c)
    return clean_distributions(sp.diff(c, X) + sp.diff(c, Y) * _unguard(d1))


@dataclass
class DerivedTaylor:
    """The Taylor roles of one elementwise spec, with the chosen f^(j) forms they use."""
    spec: ElementwiseSpec
    base: DerivedElementwise
    derivatives: list[Choice]          # f', f'', …, f^(MAX_ORDER+1)
    roles: list[TaylorRole]            # realized: F_j replaced, forward and vjp roles
    param_derivatives: list = field(default_factory=list)   # ∂f/∂p, ∂f'/∂p, … (learnable p)

    @property
    def name(self):
        return self.spec.name

    @property
    def hash(self) -> str:
        text = self.spec.hash + "|taylor|" + "|".join(
            f"{r.role}:" + ";".join(f"{o}={sp.srepr(e)}" for o, e in r.point_outputs + r.dir_outputs)
            for r in self.roles)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _rewritten(chained) -> list:
    """``chained`` and its expanded and factored forms: the candidates a next derivative is
    chosen from (factoring a large expression, Mish's f⁽⁵⁾, costs minutes and never wins:
    skipped; a failed rewrite is a missing candidate)."""
    cands = [chained]
    rewrites = (sp.expand, sp.factor) if sp.count_ops(chained) <= FACTOR_MAX_OPS else (sp.expand,)
    for fn in rewrites:
        try:
            cands.append(fn(chained))
        except Exception:  # noqa: BLE001
            pass
    return cands


def derivative_forms(spec: ElementwiseSpec, base: DerivedElementwise | None = None,
                     upto: int = MAX_ORDER + 1) -> tuple[DerivedElementwise, list[Choice]]:
    """f′ … f^(upto) in cheapest stable forms: f′ and f″ as :func:`derive_elementwise` chose
    them, each higher one chosen among the textbook derivative and the total derivative of
    the previous chosen form (which keeps forms in y: tanh‴ = −2(1−y²)(1−3y²)), expanded and
    factored, checked numerically against 50-digit values by :func:`choose_form`."""
    base = base or derive_elementwise(spec)
    params = {sp.Symbol(p): float(v) for p, v in spec.params}
    f = spec.canonical
    fwd = base.forward.chosen
    forms = [base.d1, base.d2]
    raw = base.d2.textbook
    for j in range(3, upto + 1):
        raw = clean_distributions(sp.diff(raw, X))
        if raw.has(sp.Derivative):
            raise SpecError(f"spec {spec.name!r}: derivative {j} of {f} is not in closed form")
        chained = _total_dx(forms[-1].chosen, forms[0].chosen)
        cands = _rewritten(chained)
        direct = raw.subs(f, Y)
        if direct != raw:
            cands.append(direct)
        # f^(j-1) has finite limits at ±∞ for the activations, so f^(j) tends to 0 there:
        # candidates guarded by 0 where they overflow (checked on the grid like every candidate;
        # when none is exact, choose_form falls back to computing the limits, which for Mish's
        # higher derivatives takes minutes)
        cands += [finite_or(_unguard(c), 0) for c in list(cands)]
        forms.append(choose_form(raw, cands, X, Y, fwd, params))
    return base, forms


def realize(r: TaylorRole, forms: list[sp.Basic], forward: sp.Basic, spec: ElementwiseSpec,
            pforms: list[sp.Basic] = ()) -> TaylorRole:
    """Replace F₁ … (and P₀ …, for a learnable parameter) by the chosen forms; ``y`` stays a
    symbol (an input the kernel reads, or for forward roles the output it computes first); a
    learnable parameter becomes a point input (one value per element)."""
    sub = {F[j]: forms[j - 1] for j in range(1, min(len(F), len(forms) + 1))}   # roles to max_order use ≤ F_{max_order+1}
    sub.update({P[j]: pforms[j] for j in range(len(pforms))})
    pts = [(o, _subs(e, sub)) for o, e in r.point_outputs]
    dirs = [(o, _subs(e, sub)) for o, e in r.dir_outputs]
    if any(o == "y" for o, _ in pts):            # forward role: y computed from x in the kernel
        pts = [(o, forward if o == "y" else e) for o, e in pts]
    used = set().union(*(e.free_symbols for _, e in pts + dirs))
    used |= set().union(*(s.args[0].free_symbols for _, e in pts + dirs for s in e.atoms(dsum)))
    scalars = [p for p, _ in spec.params if sp.Symbol(p) in used and p not in spec.learnable]
    point_inputs = r.point_inputs + [p for p in spec.learnable if sp.Symbol(p) in used and p not in r.point_inputs]
    return TaylorRole(r.role, point_inputs, r.dir_inputs, pts, dirs, scalars)


def _subs(e: sp.Basic, sub: dict) -> sp.Basic:
    out = e.xreplace(sub)
    # drop sums that became zero (ReLU: F₂ = 0)
    return out.replace(lambda a: isinstance(a, dsum) and a.args[0] == 0, lambda a: sp.S.Zero)


def derive_taylor(spec: ElementwiseSpec, max_order: int = MAX_ORDER,
                  base: DerivedElementwise | None = None) -> DerivedTaylor:
    """Every Taylor role of ``spec``: ``taylor:1..max_order``, ``laplacian``,
    ``collapsed:3..max_order`` and the VJP of each (all coefficient inputs at once, one pass),
    realized with the spec's chosen derivative forms.
    ``base``: the spec's :func:`derive_elementwise` result when already derived."""
    if spec.arrays:
        raise SpecError(f"spec {spec.name!r}: Taylor roles are derived for elementwise maps without "
                        f"mask arrays")
    if len(spec.learnable) > 1:
        raise SpecError(f"spec {spec.name!r}: Taylor roles are derived for at most one learnable parameter, "
                        f"it has {list(spec.learnable)}")
    base, forms = derivative_forms(spec, base, upto=max_order + 1)
    chosen = [c.chosen for c in forms]
    pforms = param_derivative_forms(spec, base, forms, upto=max_order) if spec.learnable else []
    pchosen = [c.chosen for c in pforms]
    roles = []
    for r in base_roles(max_order):
        roles.append(realize(r, chosen, base.forward.chosen, spec, pchosen))
        v = role_vjp(r)
        if spec.learnable:      # the parameter's per-element pullback, one more point output
            v = TaylorRole(v.role, v.point_inputs, v.dir_inputs,
                           v.point_outputs + [param_pullback(r, spec.learnable[0])], v.dir_outputs)
        roles.append(realize(v, chosen, base.forward.chosen, spec, pchosen))
    return DerivedTaylor(spec=spec, base=base, derivatives=forms, roles=roles, param_derivatives=pforms)


def param_derivative_forms(spec: ElementwiseSpec, base: DerivedElementwise, forms: list[Choice],
                           upto: int) -> list[Choice]:
    """∂f/∂p, ∂f′/∂p, …, ∂f^(upto)/∂p for the learnable p: ∂f/∂p and ∂f′/∂p as
    :func:`derive_elementwise` chose them, each next one the total x-derivative of the previous
    chosen form (or the textbook one), checked by :func:`choose_form` like f^(j)."""
    p = sp.Symbol(spec.learnable[0])
    params = {sp.Symbol(q): float(v) for q, v in spec.params}
    f = spec.canonical
    fwd = base.forward.chosen
    ch = base.param_derivatives
    out = [ch[f"f_p:{p}"], ch[f"f_xp:{p}"]]
    raw = clean_distributions(sp.diff(f, p, 1, X, 1))
    for j in range(2, upto + 1):
        raw = clean_distributions(sp.diff(raw, X))
        chained = _total_dx(out[-1].chosen, forms[0].chosen)
        cands = _rewritten(chained)
        cands += [finite_or(_unguard(c), 0) for c in list(cands)]
        out.append(choose_form(raw, cands, X, Y, fwd, params))
    return out[:upto + 1]


# ---------------------------------------------------------------- PDE operators along directions
#
# A Taylor sweep along a direction w gives D^k_w u = dᵏ/dtᵏ u(x + t·w) at t = 0 for k ≤ K; by the
# multinomial theorem D^k_w u = Σ_{|α|=k} (k!/α!)·w^α·∂^α u. A linear combination Σ_α c_α ∂^α u
# of order-k partials (a mixed partial u_xy, the biharmonic Δ²u, Σ A_ij ∂²u/∂x_i∂x_j) is then
# Σ_w λ_w D^k_w u for weights λ solving Σ_w λ_w (k!/α!) w^α = c_α — found here exactly by SymPy,
# with a smallest set of integer directions w (entries in {−1, 0, 1} where they suffice).

def multi_indices(k: int, d: int) -> list[tuple]:
    """Every α = (α_1 … α_d) with |α| = k, in a fixed order."""
    if d == 1:
        return [(k,)]
    return [(a,) + rest for a in range(k, -1, -1) for rest in multi_indices(k - a, d - 1)]


def jet_matrix(k: int, d: int, directions) -> sp.Matrix:
    """M with M[α, w] = (k!/α!)·w^α: the order-k jet coefficients along ``directions`` are
    Mᵀ·(∂^α u)_α."""
    rows = []
    for a in multi_indices(k, d):
        c = sp.factorial(k) / sp.prod([sp.factorial(i) for i in a])
        rows.append([c * sp.prod([sp.sympify(w[i]) ** a[i] for i in range(d)]) for w in directions])
    return sp.Matrix(rows)


def _target_vector(k: int, d: int, coeffs: dict) -> sp.Matrix:
    return sp.Matrix([sp.sympify(coeffs.get(a, 0)) for a in multi_indices(k, d)])


def candidate_directions(d: int, coords, max_entry: int = 1) -> list[tuple]:
    """Integer directions on ``coords`` with entries in [−max_entry, max_entry], primitive
    (gcd 1) and with a positive first nonzero entry, fewest nonzeros and smallest entries
    first: the axes, then e_i ± e_j, … ."""
    from itertools import product
    from math import gcd
    coords = sorted(coords)
    out = []
    for v in product(range(-max_entry, max_entry + 1), repeat=len(coords)):
        nz = [a for a in v if a]
        if not nz or nz[0] < 0 or gcd(*map(abs, nz)) != 1:
            continue
        w = [0] * d
        for i, a in zip(coords, v):
            w[i] = a
        out.append(tuple(w))
    return sorted(out, key=lambda w: (sum(1 for a in w if a), max(map(abs, w)), [-a for a in w]))


def _numeric_targets(targets: list, d: int) -> list:
    """(k, multi-indices, k!/α!, target vector) per target, in floats, for the subset search."""
    import numpy as np
    out = []
    for k, coeffs in targets:
        al = multi_indices(k, d)
        fac = np.array([float(sp.factorial(k) / sp.prod([sp.factorial(i) for i in a])) for a in al])
        c = np.array([float(sp.sympify(coeffs.get(a, 0)).evalf()) for a in al])
        out.append((np.array(al, dtype=float), fac, c))
    return out


def _feasible(numeric: list, directions) -> bool:
    import numpy as np
    Wd = np.array(directions, dtype=float)
    for al, fac, c in numeric:
        M = fac[:, None] * np.prod(Wd[None, :, :] ** al[:, None, :], axis=2)
        lam, *_ = np.linalg.lstsq(M, c, rcond=None)
        if np.linalg.norm(M @ lam - c) > 1e-9 * max(1.0, np.linalg.norm(c)):
            return False
    return True


def _smallest_subset(numeric, cands, max_subsets):
    """The first feasible subset of ``cands`` by increasing size (when there are too many,
    the candidates added in order until feasible, then pruned); None if none is."""
    from itertools import combinations
    from math import comb
    for size in range(1, len(cands) + 1):
        if comb(len(cands), size) > max_subsets:
            break
        for sub in combinations(cands, size):
            if _feasible(numeric, sub):
                return list(sub)
    W = []
    for w in cands:
        W.append(w)
        if _feasible(numeric, W):
            break
    else:
        return None
    for w in list(reversed(W)):
        rest = [v for v in W if v != w]
        if rest and _feasible(numeric, rest):
            W = rest
    return W


def directions_for(targets: list, d: int, max_subsets: int = 20000):
    """A smallest set of directions W and exact weights such that every target (k, {α: c_α})
    is Σ_w λ_w D^k_w u; returns ``(W, [λ per target])`` (λ aligned with W, SymPy numbers).
    Subsets of the candidates (entries in {−1, 0, 1}, else up to ±2, ±3) are tried by
    increasing size."""
    coords = sorted({i for _, c in targets for a in c for i in range(d) if a[i]})
    numeric = _numeric_targets(targets, d)
    W = None
    for max_entry in (1, 2, 3):
        cands = candidate_directions(d, coords, max_entry) if coords else [tuple(int(i == 0) for i in range(d))]
        W = _smallest_subset(numeric, cands, max_subsets)
        if W is not None:
            break
    if W is None:
        raise SpecError(f"no directions with integer entries up to 3 give {targets}")
    weights = []
    for k, coeffs in targets:
        M, c = jet_matrix(k, d, W), _target_vector(k, d, coeffs)
        sol, params = M.gauss_jordan_solve(c)
        sol = sol.subs({p: 0 for p in params})
        weights.append([sp.nsimplify(s) if s.is_Rational else sp.simplify(s) for s in sol])
    return W, weights


def factor_quadratic(A: sp.Matrix) -> list[tuple[int, sp.Matrix]]:
    """Σ_ij A_ij ξ_i ξ_j = Σ_k s_k (v_k·ξ)² with signs s_k = ±1 (Lagrange's completion of
    squares, exact): the collapsed second-order sweep along the v_k gives Σ_ij A_ij ∂²u/∂x_i∂x_j
    as Σ_k s_k D²_{v_k} u — one forward-Laplacian sum per sign."""
    A = sp.Matrix(A)
    if A.shape[0] != A.shape[1] or A != A.T:
        raise SpecError(f"factor_quadratic: A must be square and symmetric, got {A}")
    d = A.shape[0]
    out = []
    while any(sp.simplify(e) != 0 for e in A):
        tries = [sp.Matrix([1 if j == i else 0 for j in range(d)]) for i in range(d)]
        tries += [sp.Matrix([1 if j in (i, l) else 0 for j in range(d)]) for i in range(d) for l in range(i + 1, d)]
        for w in tries:
            q = sp.simplify((w.T * A * w)[0])
            if q != 0:
                break
        Aw = A * w
        v = (Aw / sp.sqrt(sp.Abs(q))).applyfunc(sp.simplify)
        out.append((1 if q.is_positive else -1, v))
        A = (A - Aw * Aw.T / q).applyfunc(sp.simplify)
    return out
