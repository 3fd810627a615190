"""Physics-informed training from a PDE written in SymPy.

::

    import sympy as sp
    from symprop import Sequential, layers as L, optimizers as O, pinn
    x, y = sp.symbols("x y"); u = sp.Function("u")(x, y)
    f = 2 * sp.pi**2 * sp.sin(sp.pi * x) * sp.sin(sp.pi * y)
    problem = pinn.Problem(residual=-(u.diff(x, 2) + u.diff(y, 2)) - f,
                           domain={x: (0, 1), y: (0, 1)}, hard=x * (1 - x) * y * (1 - y),
                           reference=sp.sin(sp.pi * x) * sp.sin(sp.pi * y))
    model = Sequential([L.Dense(2, 32), L.Tanh(), L.Dense(32, 32), L.Tanh(), L.Dense(32, 1)], loss="mse")
    problem.fit(model, epochs=1000, optimizer=O.Adam(lr=3e-3))

What is derived (SymPy): with u = hard·N (N the network, u = N without ``hard``) the residual
is rewritten in N's derivatives by the product rule; symprop finds which derivatives it needs
(N, ∂N/∂x_i, ∂ᵏN/∂x_iᵏ for k ≤ 4), picks the forward Laplacian when the second derivatives
enter only through ΔN (the sweep then carries d + 2 arrays, not a Hessian), else Taylor jets
along the coordinates that appear; and derives ∂(r²)/∂q for every needed quantity q — the
cotangents the backward sweep starts from. The network's derivatives and their parameter
gradient come from the derived Taylor-mode kernels (``runtime/taylor.py``). The residual and
its partials are evaluated on the points by NumPy functions SymPy generates (``lambdify``);
they are cheap beside the network sweeps (no kernel is generated for them yet).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

MAX_ORDER = 4
_SUP = {1: "", 2: "²", 3: "³", 4: "⁴"}


def _lambdify(args, expr, cse=False):
    return sp.lambdify(args, expr, modules="numpy", cse=cse)


def _partial_name(alpha, coords) -> str:
    k = sum(alpha)
    den = "".join(f"∂{c}{_SUP[n]}" for c, n in zip(coords, alpha) if n)
    return f"∂{_SUP[k]}N/{den}"


def _combination(r, syms: list):
    """When r depends on the symbols ``syms`` only through one constant-coefficient linear
    combination T = Σ c_s·s (its gradient in them is everywhere a constant vector times one
    factor), ``(T, {s: c_s}, r written with T)``; else None."""
    grads = [sp.diff(r, s) for s in syms]
    ref = next((i for i, g in enumerate(grads) if g != 0), None)
    if ref is None:
        return None
    ratios = [sp.simplify(g / grads[ref]) for g in grads]
    if any(q.free_symbols for q in ratios):
        return None
    T = sp.Dummy("T")
    others = [s for i, s in enumerate(syms) if i != ref]
    r2 = sp.expand(r.subs(syms[ref], T - sum(q * s for q, s in zip(ratios, syms) if s is not syms[ref])))
    if r2.has(*others):
        return None
    return T, dict(zip(syms, ratios)), r2


class _Term:
    """One residual r(X; u, its derivatives) that must vanish on a set of points: the
    derivatives of the network it needs, the sweep that computes exactly those, r and
    ∂(r²)/∂q for every needed quantity q.

    The needed quantities are the value N and, per order k, either one constant-coefficient
    combination Σ_α c_α ∂^α N (when r depends on the order-k partials only through it: ΔN,
    Σ A_ij ∂²N/∂x_i∂x_j, Δ²N) or the partials one by one. Two sweeps can compute them, and the
    cheaper (fewer coefficient blocks through the network) is used:

    - ``laplacian``: order ≤ 2 with one second-order combination x ↦ xᵀAx: A = Σ_k s_k v_k v_kᵀ
      (:func:`derive.taylor.factor_quadratic`), one forward-Laplacian sum per sign, the first
      derivatives from the directions v_k (or an extra group along them);
    - ``jet``: Taylor jets of order K along a smallest set of integer directions w (entries in
      {−1, 0, 1} where they suffice) that gives every quantity as Σ_w λ_w D^k_w N
      (:func:`derive.taylor.directions_for`).
    """

    def __init__(self, expr, coords: list, u, hard, what: str, lift=None, propagation=None):
        from .derive.elementwise import SpecError
        from .derive.taylor import directions_for, factor_quadratic
        expr = sp.sympify(expr)
        self.what, self.coords, self.expr = what, coords, expr
        free = sorted(map(str, expr.free_symbols - set(coords)))
        if free:
            raise ValueError(f"{what}: undefined symbol(s) {free} in {expr}; the coordinates are "
                             f"{[str(c) for c in coords]} (write constants as numbers)")
        others = sorted({str(f.func) for f in expr.atoms(AppliedUndef)} - {str(u.func)})
        if others:
            raise ValueError(f"{what}: unknown function(s) {others} in {expr}; the unknown is {u}")
        for D in expr.atoms(sp.Derivative):
            order = sum(int(n) for _, n in D.variable_count)
            if order > MAX_ORDER:
                raise ValueError(f"{what}: {D} has order {order}; at most {MAX_ORDER} is supported")
        N = sp.Function("N")(*coords)
        Nu = (hard * N) if hard is not None else N
        e = expr.subs(u, Nu + lift if lift is not None else Nu).doit()
        d = len(coords)
        syms, alpha = {}, {}
        for D in sorted(e.atoms(sp.Derivative), key=sp.default_sort_key):
            a = [0] * d
            for v, n in D.variable_count:
                a[coords.index(v)] += int(n)
            if sum(a) > MAX_ORDER:
                raise ValueError(f"{what}: {D} has order {sum(a)}; at most {MAX_ORDER} is supported")
            s = sp.Symbol("N_" + "".join(str(c) * n for c, n in zip(coords, a)))
            syms[D], alpha[s] = s, tuple(a)
        u0 = sp.Symbol("N_")
        r = e.xreplace(syms).xreplace({N: u0})
        if r.has(sp.Derivative, AppliedUndef):
            raise ValueError(f"{what}: could not express {expr} in derivatives of the network")
        # the quantities: N, then per order one combination or the partials
        items = []                      # (symbol, order, {α: c}, label)
        self.combinations = {}          # N_op<k> -> {α: c}: the combination it stands for
        for k in sorted({sum(a) for a in alpha.values()}):
            ss = sorted([s for s in alpha if sum(alpha[s]) == k], key=lambda s: s.name)
            comb = _combination(r, ss) if len(ss) > 1 else None
            if comb is None:
                items += [(s, k, {alpha[s]: sp.S.One}, _partial_name(alpha[s], coords)) for s in ss]
                continue
            T, coef, r = comb
            Tsym = sp.Symbol(f"N_op{k}")
            r = r.xreplace({T: Tsym})
            cmap = {alpha[s]: c for s, c in coef.items()}
            eye = {tuple(2 * (j == i) for j in range(d)): 1 for i in range(d)}
            bih = {a: sp.Integer(2) if max(a) < 4 else sp.S.One for a in
                   [tuple(2 * (j in (i, l)) if i != l else 4 * (j == i) for j in range(d))
                    for i in range(d) for l in range(i, d)]}
            label = ("ΔN" if cmap == eye else "Δ²N" if cmap == bih else
                     "(" + sp.sstr(sum(c * sp.Symbol(_partial_name(a, coords)) for a, c in cmap.items())) + ")")
            items.append((Tsym, k, cmap, label))
            self.combinations[Tsym] = cmap
        self.r = r
        self.qsyms = [u0] + [it[0] for it in items]
        self.needs = ["N"] + [it[3] for it in items]
        K = max([it[1] for it in items] or [0])
        self.order = K
        # the two sweeps, their costs (blocks through the network) and weight matrices
        plans = {}
        if K >= 1:
            try:
                W, lams = directions_for([(k, c) for _, k, c, _ in items], d)
            except SpecError as e:
                raise ValueError(f"{what}: {e}") from None
            m = len(W)
            Wm = np.zeros((len(self.qsyms), 1 + K * m))
            Wm[0, 0] = 1
            for row, ((_, k, _, _), lam) in enumerate(zip(items, lams), 1):
                for j, l in enumerate(lam):
                    Wm[row, 1 + (k - 1) * m + j] = float(l)
            plans["jet"] = (1 + K * m, ("jet", np.array(W, dtype=float), K), Wm)
            top = [lam for (_, k, _, _), lam in zip(items, lams) if k == K]
            if K >= 3 and m > 1 and len(top) == 1:   # one order-K quantity: its coefficient collapsed
                B = 2 + (K - 1) * m                   # the jets' blocks to order K − 1, then the sum
                Wc = np.zeros((len(self.qsyms), B))
                Wc[:, :B - 1] = Wm[:, :B - 1]
                Wc[[row for row, it in enumerate(items, 1) if it[1] == K], B - 1] = 1
                plans["collapsed"] = (B, ("collapsed", np.array(W, dtype=float), K,
                                          np.array([float(l) for l in top[0]])), Wc)
        second = [it for it in items if it[1] == 2]
        if K == 2 and len(second) == 1:
            plans["laplacian"] = self._collapsed_plan(items, second[0][2], d, factor_quadratic)
        elif K == 0:
            plans["jet"] = (1, ("jet", np.eye(1, d), 1), np.eye(1, 2))
        if propagation is not None:
            if propagation not in ("laplacian", "jet", "collapsed"):
                raise ValueError(f"{what}: propagation must be 'laplacian', 'jet', 'collapsed' or None, "
                                 f"got {propagation!r}")
            if propagation not in plans:
                raise ValueError(f"{what}: the collapsed second-order sweep ('laplacian') needs one second-order "
                                 f"combination and no higher order; the collapsed jets ('collapsed') one "
                                 f"quantity of order 3 or 4 (the highest) along several directions; "
                                 f"needs {self.needs}")
            self.mode = propagation
        else:   # the fewest blocks; on a tie the forward Laplacian, then plain jets
            self.mode = min(plans, key=lambda p: (plans[p][0], ("laplacian", "jet", "collapsed").index(p)))
        self.cost, self.plan, self.weights = plans[self.mode]
        self._sweeps = {}
        # the residual and ∂r/∂q, derived; factors that depend only on X are computed once per point set
        self._coef_fn, self._step = self._compile(r, coords, self.qsyms)
        self._cache = (None, None)
        self.hard, self.lift = hard, lift

    @staticmethod
    def _collapsed_plan(items, coeffs, d, factor_quadratic):
        """The collapsed sweep for the order-2 combination ``coeffs`` (A_ii = c_{2e_i},
        A_ij = c_{e_i+e_j}/2): groups of directions per sign, first-order quantities from the
        directions' first coefficients (or an extra group along them)."""
        A = sp.zeros(d, d)
        for a, c in coeffs.items():
            idx = [i for i in range(d) for _ in range(a[i])]
            if idx[0] == idx[1]:
                A[idx[0], idx[0]] = c
            else:
                A[idx[0], idx[1]] = A[idx[1], idx[0]] = c / 2
        fac = factor_quadratic(A)
        groups, signs = [], []
        for sign in (1, -1):
            V = [np.array([float(x) for x in v]) for s, v in fac if s == sign]
            if V:
                groups.append(np.array(V))
                signs.append(sign)
        cols = np.concatenate(groups)
        firsts = [it for it in items if it[1] == 1]
        extra, fw = [], {}
        for it in firsts:
            b = np.array([float(it[2].get(tuple(int(j == i) for j in range(d)), 0)) for i in range(d)])
            lam, *_ = np.linalg.lstsq(cols.T, b, rcond=None)
            if np.linalg.norm(cols.T @ lam - b) <= 1e-12 * max(1.0, np.linalg.norm(b)):
                fw[it[0]] = lam
            else:
                extra.append((it[0], b))
        if extra:
            groups.append(np.array([b for _, b in extra]))
            signs.append(0)
        G, rmax = len(groups), max(len(V) for V in groups)
        R = 1 + sum(len(V) for V in groups) + G
        Wm = np.zeros((1 + len(items), R))
        Wm[0, 0] = 1
        offsets = np.cumsum([1] + [len(V) for V in groups])
        for row, it in enumerate(items, 1):
            if it[1] == 2:
                for g, sgn in enumerate(signs):
                    Wm[row, 1 + sum(len(V) for V in groups) + g] = sgn
            elif it[0] in fw:
                Wm[row, 1:1 + len(cols)] = fw[it[0]]
            else:
                Wm[row, offsets[-2] + [s for s, _ in extra].index(it[0])] = 1
        return G * (rmax + 2), ("laplacian", groups), Wm

    @staticmethod
    def _compile(r, coords, qsyms):
        """NumPy functions SymPy generates: the factors of r's monomials in the quantities
        (functions of X only, cached per point set) and, from them and the quantities, r and
        ∂r/∂q (one function, common subexpressions shared)."""
        coefs, rc = [], r
        if r.is_polynomial(*qsyms):
            P = sp.Poly(r, *qsyms)
            rc = sp.S.Zero
            for mon, c in P.terms():
                term = sp.prod([q ** e for q, e in zip(qsyms, mon)])
                if c.free_symbols:
                    cs = sp.Symbol(f"_c{len(coefs)}")
                    coefs.append(c)
                    term = cs * term
                else:
                    term = c * term
                rc += term
            cargs = [sp.Symbol(f"_c{i}") for i in range(len(coefs))]
        else:
            coefs, cargs = list(coords), list(coords)
        coef_fn = _lambdify(list(coords), coefs) if coefs else None
        step = _lambdify(cargs + list(qsyms), [rc] + [sp.diff(rc, q) for q in qsyms], cse=True)
        return coef_fn, step

    def describe(self) -> str:
        if self.mode == "laplacian":
            groups = self.plan[1]
            return f"forward Laplacian along {sum(len(V) for V in groups)} direction(s) in {len(groups)} group(s)"
        W, K = self.plan[1], self.plan[2]
        dirs = ", ".join("(" + ",".join(f"{v:g}" for v in w) + ")" for w in W)
        if self.mode == "collapsed":
            return (f"Taylor jets of order {K} along {dirs}, the order-{K} coefficient collapsed "
                    f"(weights " + ", ".join(f"{c:g}" for c in self.plan[3]) + ")")
        return f"Taylor jets of order {K} along {dirs}"

    def sweep(self, model):
        from .runtime.taylor import CollapsedJets, CollapsedSecondOrder, DirectionalJets
        key = id(model)
        sw = self._sweeps.get(key)
        if sw is None or sw.model is not model:
            if self.mode == "laplacian":
                sw = CollapsedSecondOrder(model, self.plan[1])
            elif self.mode == "collapsed":
                sw = CollapsedJets(model, self.plan[1], self.plan[2], self.plan[3])
            else:
                sw = DirectionalJets(model, self.plan[1], self.plan[2])
            self._sweeps = {key: sw}
        return sw

    def _coefficients(self, X):
        if self._cache[0] is X:
            return self._cache[1]
        n = X.shape[0]
        if self._coef_fn is None:
            cs = []
        else:
            cs = [np.broadcast_to(np.asarray(c, dtype=np.float64), (n,))
                  for c in self._coef_fn(*[X[:, j].astype(np.float64) for j in range(len(self.coords))])]
        self._cache = (X, cs)
        return cs

    def quantities(self, model, X):
        """(the sweep's tape, the quantities N, … (one row each, float64))."""
        sw = self.sweep(model)
        if sw.d != len(self.coords):
            raise ValueError(f"{self.what}: the network takes {sw.d} inputs, the problem has "
                             f"{len(self.coords)} coordinates {[str(c) for c in self.coords]}")
        C, tape = sw.forward(X)
        if C.ndim != 2:
            raise ValueError(f"{self.what}: the network must have one output (a scalar u), it has {C.shape[2:]}")
        return tape, self.weights @ C.astype(np.float64)

    def evaluate(self, X, Q):
        """r and ∂r/∂q on the points from the quantities Q."""
        n = X.shape[0]
        out = self._step(*self._coefficients(X), *Q)
        return [np.broadcast_to(np.asarray(o, dtype=np.float64), (n,)) for o in out]

    def residual(self, model, X) -> np.ndarray:
        _, Q = self.quantities(model, X)
        return self.evaluate(X, Q)[0]

    def loss_and_grad(self, model, X, weight: float = 1.0, point_weights=None):
        """weight·mean(w·r²) and its parameter gradient; ``point_weights``: per-point w, or a
        function (X, r) → w (held constant in the gradient: causal weights)."""
        tape, Q = self.quantities(model, X)
        r, *dr = self.evaluate(X, Q)
        n = X.shape[0]
        if callable(point_weights):
            point_weights = point_weights(X, r)
        w = (weight / n) if point_weights is None else weight * point_weights / n
        cotQ = np.stack(dr) * (2 * r * w)
        grads = self.sweep(model).backward(tape, self.weights.T @ cotQ)
        rr = r * r
        return weight * float(np.mean(rr if point_weights is None else point_weights * rr)), grads


@dataclass
class Condition:
    """A boundary or initial condition: ``expr`` (in u and its derivatives) = 0 on the faces
    ``on`` = {coordinate: value or (value, value, …)}, enforced softly as
    ``weight``·mean(expr²) over ``points`` sampled on those faces."""
    expr: sp.Basic
    on: dict
    weight: float = 1.0
    points: int = 256


@dataclass
class History:
    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    error: list = field(default_factory=list)
    seconds: list = field(default_factory=list)


class Problem:
    """A PDE residual = 0 on a box ``domain`` ({symbol: (lo, hi)}: X's columns in this order),
    built-in conditions (u = lift(X) + hard(X)·N(X); either may be omitted), soft conditions and
    an optional reference solution (a SymPy expression in the coordinates, or a callable X → u).
    The residual may use any partial of u up to order 4; ``propagation`` forces the sweep
    (``"laplacian"``: collapsed second order, ``"jet"``: jets along directions; default: the
    cheaper)."""

    def __init__(self, residual, domain: dict, hard=None, conditions=(), reference=None, name: str = "pde",
                 lift=None, propagation=None):
        if not isinstance(domain, dict) or not domain:
            raise ValueError("Problem: domain must be a dict {coordinate symbol: (lo, hi)}")
        self.coords = list(domain)
        for c, b in domain.items():
            if not isinstance(c, sp.Symbol):
                raise TypeError(f"Problem: domain key {c!r} is not a SymPy symbol")
            if not (isinstance(b, (tuple, list)) and len(b) == 2 and float(b[0]) < float(b[1])):
                raise ValueError(f"Problem: domain[{c}] must be (lo, hi) with lo < hi, got {b!r}")
        self.box = np.array([[float(lo), float(hi)] for lo, hi in domain.values()])
        self.name = name
        residual = sp.sympify(residual)
        fns = sorted(residual.atoms(AppliedUndef), key=str)
        if len({f.func for f in fns}) != 1:
            raise ValueError(f"Problem: the residual must contain exactly one unknown function of "
                             f"{tuple(self.coords)}, found {[str(f) for f in fns] or 'none'}")
        self.u = fns[0]
        if tuple(self.u.args) != tuple(self.coords):
            raise ValueError(f"Problem: the unknown {self.u} must take the domain's coordinates "
                             f"{tuple(self.coords)} in that order")
        for name_, e in (("hard factor", hard), ("lift", lift)):
            if e is not None:
                e = sp.sympify(e)
                extra = sorted(map(str, e.free_symbols - set(self.coords)))
                if extra or e.has(AppliedUndef):
                    raise ValueError(f"Problem: {name_} {e} may use only the coordinates, it has {extra}")
        self.hard = None if hard is None else sp.sympify(hard)
        self.lift = None if lift is None else sp.sympify(lift)
        self.interior = _Term(residual, self.coords, self.u, self.hard, "residual", self.lift, propagation)
        self.conditions = list(conditions)
        self._cond_terms = [_Term(c.expr, self.coords, self.u, self.hard, f"condition {c.expr} on {c.on}", self.lift)
                            for c in self.conditions]
        self._hard = None if self.hard is None else _lambdify(self.coords, self.hard)
        self._lift = None if self.lift is None else _lambdify(self.coords, self.lift)
        for c in self.conditions:
            for s in c.on:
                if s not in self.coords:
                    raise ValueError(f"Problem: condition {c.expr} is on {s}, not a coordinate")
        if reference is not None and not callable(reference):
            ref = sp.sympify(reference)
            extra = sorted(map(str, ref.free_symbols - set(self.coords)))
            if extra:
                raise ValueError(f"Problem: reference {ref} uses undefined symbol(s) {extra}")
            fn = _lambdify(self.coords, ref)
            reference = lambda X: np.broadcast_to(  # noqa: E731
                np.asarray(fn(*[X[:, j].astype(np.float64) for j in range(X.shape[1])]), float), (X.shape[0],))
        self.reference = reference

    # ---------------------------------------------------------------- the API of DESIGN.md
    def loss_and_grad(self, model, X):
        """Mean squared residual over the points X (N, d) and its gradient, aligned with
        ``model.parameters()``."""
        return self.interior.loss_and_grad(model, self._check(model, X))

    def residual(self, model, X) -> np.ndarray:
        """The residual at the points X (N, d), through the sweep the problem chose: with a
        residual such as ``u.diff(x, y)`` this is the network's mixed partial itself."""
        return self.interior.residual(model, self._check(model, X))

    def solution(self, model, X) -> np.ndarray:
        """u at X: lift(X) + hard(X)·N(X) (without ``lift``/``hard``: 0 and 1)."""
        X = self._check(model, X)
        out = model.outputs(X)
        if out.ndim != 2 or out.shape[1] != 1:
            raise ValueError(f"Problem: the network must have one output (a scalar u), it has {out.shape[1:]}")
        u = out[:, 0].astype(np.float64)
        cols = [X[:, j].astype(np.float64) for j in range(X.shape[1])]
        if self._hard is not None:
            u = u * np.broadcast_to(self._hard(*cols), u.shape)
        if self._lift is not None:
            u = u + np.broadcast_to(self._lift(*cols), u.shape)
        return u

    def _check(self, model, X):
        X = np.ascontiguousarray(X, dtype=model.dtype)
        if X.ndim != 2 or X.shape[1] != len(self.coords):
            raise ValueError(f"Problem: X must be (N, {len(self.coords)}) with columns "
                             f"{[str(c) for c in self.coords]}, got {X.shape}")
        return X

    def latex(self, path=None, model=None) -> str:
        """A LaTeX document of this problem: the residual, the derivatives it needs and
        ∂(r²)/∂q, after the Taylor-mode rules; with ``model`` (built) also its activations'
        rules and its forward-Laplacian sweep (``path``: also write it)."""
        from .document import problem_document
        return problem_document(self, model, path)

    # ---------------------------------------------------------------- samplers
    def sample_interior(self, n: int, rng) -> np.ndarray:
        lo, hi = self.box[:, 0], self.box[:, 1]
        return lo + (hi - lo) * rng.random((n, len(self.coords)))

    def sample_condition(self, c: Condition, n: int, rng) -> np.ndarray:
        X = self.sample_interior(n, rng)
        faces = [(self.coords.index(s), v) for s, vals in c.on.items()
                 for v in (vals if isinstance(vals, (tuple, list)) else (vals,))]
        which = rng.integers(0, len(faces), n)
        for f, (j, v) in enumerate(faces):
            X[which == f, j] = float(v)
        return X

    def sample_by_residual(self, model, n: int, rng, pool: int = 4, k: float = 2.0, c: float = 1.0) -> np.ndarray:
        """``n`` interior points drawn from ``pool``·n uniform ones with probability ∝
        |r|^k / mean(|r|^k) + c (residual-based adaptive distribution, Wu et al. 2023): more
        points where the residual is large (Burgers' shock), some everywhere."""
        P = self._check(model, self.sample_interior(pool * n, rng))
        rk = np.abs(self.interior.residual(model, P)) ** k
        w = rk / max(float(rk.mean()), 1e-300) + c
        return P[np.sort(rng.choice(len(P), n, replace=False, p=w / w.sum()))]

    def grid(self, n: int = 101) -> np.ndarray:
        axes = [np.linspace(lo, hi, n) for lo, hi in self.box]
        return np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)

    def error(self, model, X=None) -> float:
        """Relative L2 error against the reference on X (default: the 101^d grid)."""
        if self.reference is None:
            return float("nan")
        if X is None:   # the default grid's reference values are computed once
            if getattr(self, "_grid_ref", None) is None:
                X = self.grid(101 if len(self.coords) <= 2 else 21)
                self._grid_ref = (X, self.reference(X))
            X, ref = self._grid_ref
        else:
            ref = self.reference(np.asarray(X, float))
        u = self.solution(model, X)
        return float(np.linalg.norm(u - ref) / max(np.linalg.norm(ref), 1e-300))

    # ---------------------------------------------------------------- training
    def causal_weights(self, coordinate, eps: float = 1.0, bins: int = 32):
        """Causal training (Wang, Sankaran & Perdikaris 2022): the points binned along the time
        ``coordinate``, bin i weighted by exp(−eps·Σ_{j<i} L_j), L_j the mean squared residual of
        bin j — later times count once earlier ones are resolved. A function (X, r) → weights
        for ``fit(point_weights=...)``; the weights are constants in the gradient."""
        if coordinate not in self.coords:
            raise ValueError(f"Problem.causal_weights: {coordinate} is not a coordinate of {self.coords}")
        j = self.coords.index(coordinate)
        lo, hi = self.box[j]

        def weights(X, r):
            b = np.minimum(((X[:, j] - lo) / (hi - lo) * bins).astype(int), bins - 1)
            cnt = np.bincount(b, minlength=bins)
            L = np.bincount(b, weights=r * r, minlength=bins) / np.maximum(cnt, 1)
            w = np.exp(-eps * (np.cumsum(L) - L))
            self.last_causal_min = float(w[cnt > 0].min())
            return w[b] * (bins / max(1, int((cnt > 0).sum())))
        return weights

    def total_loss_and_grad(self, model, X, cond_X, point_weights=None):
        loss, grads = self.interior.loss_and_grad(model, X, point_weights=point_weights)
        for c, term, Xc in zip(self.conditions, self._cond_terms, cond_X):
            lc, gc = term.loss_and_grad(model, Xc, c.weight)
            loss += lc
            grads = [a + b for a, b in zip(grads, gc)]
        return loss, grads

    def fit(self, model, epochs: int = 1000, points: int = 1024, optimizer=None, schedule=None,
            seed: int = 0, resample: int = 0, log_every: int = 100, verbose: int = 1,
            print_fn=print, lbfgs: int = 0, lbfgs_points: int | None = None, adaptive: bool = False,
            point_weights=None) -> History:
        """Train ``model`` on ``points`` collocation points (redrawn every ``resample``
        epochs; 0: fixed), one optimizer step per epoch (full batch), printing the loss and
        the error against the reference every ``log_every`` epochs. ``schedule``: a
        ``symprop`` learning-rate schedule (``lr_at(epoch, base)``). ``lbfgs``: then that many
        L-BFGS iterations (SciPy's L-BFGS-B, full batch on ``lbfgs_points`` fresh points,
        default ``points``), counted on as epochs in the history. ``adaptive``: redraws (and
        the L-BFGS points) by the residual (:meth:`sample_by_residual`), not uniformly.
        ``point_weights``: weights of the interior points' squared residuals in the Adam steps,
        e.g. :meth:`causal_weights`."""
        from .runtime.optimizers import Adam
        opt = optimizer if optimizer is not None else Adam(lr=1e-3)
        base = opt.lr
        rng = np.random.default_rng(seed)
        def draw(first=False):
            X = (self.sample_by_residual(model, points, rng) if adaptive and not first
                 else self._check(model, self.sample_interior(points, rng)))
            return X, [self._check(model, self.sample_condition(c, c.points, rng)) for c in self.conditions]
        X, cond_X = draw(first=True)
        hist = History()
        params = model.parameters()
        t0 = time.perf_counter()
        for epoch in range(epochs):
            if resample and epoch and epoch % resample == 0:
                X, cond_X = draw()
            if schedule is not None:
                opt.lr = schedule.lr_at(epoch, base)
            loss, grads = self.total_loss_and_grad(model, X, cond_X, point_weights)
            if not np.isfinite(loss):
                raise FloatingPointError(f"{self.name}: the loss became {loss} at epoch {epoch + 1}")
            opt.step(params, grads)
            if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
                hist.epoch.append(epoch + 1)
                hist.loss.append(loss)
                hist.seconds.append(time.perf_counter() - t0)
                hist.error.append(self.error(model))
                if verbose:
                    print_fn(f"epoch {epoch + 1:5d}  loss {loss:.3e}  rel. L2 error {hist.error[-1]:.3e}  "
                             f"{hist.seconds[-1]:.1f} s")
        if lbfgs:
            if lbfgs_points:
                points = lbfgs_points
            X, cond_X = draw()
            self._lbfgs(model, X, cond_X, lbfgs, epochs, hist, t0, log_every, verbose, print_fn)
        return hist

    def _lbfgs(self, model, X, cond_X, iterations, start, hist, t0, log_every, verbose, print_fn):
        """L-BFGS (SciPy's L-BFGS-B, no bounds) on the parameters, full batch."""
        from scipy.optimize import minimize
        params = model.parameters()
        sizes = [p.size for p in params]
        state = {"it": start, "loss": float("nan")}

        def put(v):
            for p, a in zip(params, np.split(v, np.cumsum(sizes)[:-1])):
                p[...] = a.reshape(p.shape)

        def fun(v):
            put(v)
            loss, grads = self.total_loss_and_grad(model, X, cond_X)
            state["loss"] = loss
            if not np.isfinite(loss):
                raise FloatingPointError(f"{self.name}: the loss became {loss} in L-BFGS iteration {state['it'] + 1}")
            return loss, np.concatenate([g.ravel() for g in grads]).astype(np.float64)

        def callback(intermediate_result=None):
            state["it"] += 1
            it = state["it"]
            if (it - start) % log_every == 0 or it - start == iterations:
                hist.epoch.append(it)
                hist.loss.append(state["loss"])
                hist.seconds.append(time.perf_counter() - t0)
                hist.error.append(self.error(model))
                if verbose:
                    print_fn(f"L-BFGS {it:5d}  loss {state['loss']:.3e}  rel. L2 error {hist.error[-1]:.3e}  "
                             f"{hist.seconds[-1]:.1f} s")

        v0 = np.concatenate([p.ravel() for p in params]).astype(np.float64)
        res = minimize(fun, v0, jac=True, method="L-BFGS-B", callback=callback,
                       options={"maxiter": iterations, "maxfun": 2 * iterations, "maxcor": 50,
                                "ftol": 0.0, "gtol": 0.0})
        put(res.x)
        if hist.epoch and hist.epoch[-1] != state["it"]:
            loss, _ = self.total_loss_and_grad(model, X, cond_X)
            hist.epoch.append(state["it"])
            hist.loss.append(loss)
            hist.seconds.append(time.perf_counter() - t0)
            hist.error.append(self.error(model))
            if verbose:
                print_fn(f"L-BFGS {state['it']:5d}  loss {loss:.3e}  rel. L2 error {hist.error[-1]:.3e}  "
                         f"{hist.seconds[-1]:.1f} s  (stopped: {res.message})")

    def plot(self, model, path: str, n: int = 101) -> None:
        """Solution, reference and error on the grid (2-D problems), written to ``path``."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        if len(self.coords) != 2:
            raise ValueError(f"Problem.plot: draws 2-D domains (space-time counts), this one has {len(self.coords)}")
        X = self.grid(n)
        u = self.solution(model, X).reshape(n, n)
        panels = [("symprop PINN u", u)]
        if self.reference is not None:
            ref = self.reference(X).reshape(n, n)
            panels += [("reference", ref), ("|u − reference|", np.abs(u - ref))]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
        axes = np.atleast_1d(axes)
        ext = [self.box[1, 0], self.box[1, 1], self.box[0, 0], self.box[0, 1]]
        for ax, (title, v) in zip(axes, panels):
            im = ax.imshow(v, origin="lower", extent=ext, aspect="auto", cmap="viridis")
            ax.set_title(title)
            ax.set_xlabel(str(self.coords[1]))
            ax.set_ylabel(str(self.coords[0]))
            fig.colorbar(im, ax=ax)
        fig.suptitle(f"{self.name}: relative L2 error {self.error(model, X):.2e}")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


# ---------------------------------------------------------------- named problems

def mlp(d: int, width: int = 32, depth: int = 2, activation: str = "tanh", dtype="float32", seed: int = 0):
    """A d-width×depth-1 MLP with the given activation (the usual PINN network)."""
    from .runtime import layers as L
    from .runtime.model import Sequential
    layers, n = [], d
    for _ in range(depth):
        layers += [L.Dense(n, width), L.Activation(activation)]
        n = width
    layers.append(L.Dense(n, 1))
    return Sequential(layers, loss="mse", dtype=dtype, seed=seed)


def poisson2d() -> Problem:
    """−Δu = 2π² sin πx sin πy on [0,1]², u = 0 on the boundary (hard factor x(1−x)y(1−y));
    exact solution sin πx sin πy."""
    x, y = sp.symbols("x y")
    u = sp.Function("u")(x, y)
    f = 2 * sp.pi ** 2 * sp.sin(sp.pi * x) * sp.sin(sp.pi * y)
    return Problem(residual=-(u.diff(x, 2) + u.diff(y, 2)) - f, domain={x: (0, 1), y: (0, 1)},
                   hard=x * (1 - x) * y * (1 - y), reference=sp.sin(sp.pi * x) * sp.sin(sp.pi * y), name="poisson2d")


def heat1d() -> Problem:
    """u_t = u_xx/π² on x ∈ [0,1], t ∈ [0,1], u(x,0) = sin πx, u(0,t) = u(1,t) = 0 (soft
    conditions); exact solution e^{−t} sin πx."""
    x, t = sp.symbols("x t")
    u = sp.Function("u")(x, t)
    return Problem(residual=u.diff(t) - u.diff(x, 2) / sp.pi ** 2, domain={x: (0, 1), t: (0, 1)},
                   conditions=[Condition(u - sp.sin(sp.pi * x), {t: 0}, weight=1.0, points=256),
                               Condition(u, {x: (0, 1)}, weight=1.0, points=256)],
                   reference=sp.exp(-t) * sp.sin(sp.pi * x), name="heat1d")


def heat1d_hard() -> Problem:
    """:func:`heat1d` with the conditions built in: u = sin πx + t·x(1 − x)·N."""
    x, t = sp.symbols("x t")
    u = sp.Function("u")(x, t)
    return Problem(residual=u.diff(t) - u.diff(x, 2) / sp.pi ** 2, domain={x: (0, 1), t: (0, 1)},
                   lift=sp.sin(sp.pi * x), hard=t * x * (1 - x), reference=sp.exp(-t) * sp.sin(sp.pi * x),
                   name="heat1d")


def burgers_cole_hopf(X: np.ndarray, nu: float = 0.01 / np.pi, nodes: int = 250) -> np.ndarray:
    """The exact solution of u_t + u·u_x = ν·u_xx, u(x, 0) = −sin πx, u(±1, t) = 0, by the
    Cole–Hopf transform: u = −∫ sin π(x−η)·e^{−cos π(x−η)/(2πν)}·e^{−η²/(4νt)} dη / ∫ (the same
    without the sine), with η = √(4νt)·z and Gauss–Hermite quadrature in z."""
    z, w = np.polynomial.hermite.hermgauss(nodes)
    x, tt = X[:, 0:1].astype(np.float64), X[:, 1:2].astype(np.float64)
    s = x - np.sqrt(4 * nu * tt) * z[None, :]
    e = -np.cos(np.pi * s) / (2 * np.pi * nu)
    e = np.exp(e - e.max(axis=1, keepdims=True))
    return -(w * np.sin(np.pi * s) * e).sum(1) / (w * e).sum(1)


def burgers1d() -> Problem:
    """u_t + u·u_x − (0.01/π)·u_xx = 0 on x ∈ [−1,1], t ∈ [0,1], u(x,0) = −sin πx,
    u(±1,t) = 0 (soft conditions); reference: the Cole–Hopf solution (quadrature)."""
    x, t = sp.symbols("x t")
    u = sp.Function("u")(x, t)
    nu = sp.Rational(1, 100) / sp.pi
    return Problem(residual=u.diff(t) + u * u.diff(x) - nu * u.diff(x, 2), domain={x: (-1, 1), t: (0, 1)},
                   conditions=[Condition(u + sp.sin(sp.pi * x), {t: 0}, weight=1.0, points=512),
                               Condition(u, {x: (-1, 1)}, weight=1.0, points=256)],
                   reference=burgers_cole_hopf, name="burgers1d")


def burgers1d_hard() -> Problem:
    """Burgers as :func:`burgers1d` with the initial and boundary conditions built in:
    u = −sin πx + t·(1 − x²)·N (the lift satisfies both, the factor vanishes on them)."""
    x, t = sp.symbols("x t")
    u = sp.Function("u")(x, t)
    nu = sp.Rational(1, 100) / sp.pi
    return Problem(residual=u.diff(t) + u * u.diff(x) - nu * u.diff(x, 2), domain={x: (-1, 1), t: (0, 1)},
                   lift=-sp.sin(sp.pi * x), hard=t * (1 - x ** 2), reference=burgers_cole_hopf, name="burgers1d")


def helmholtz2d() -> Problem:
    """Δu + k²u = q on [−1,1]², u = 0 on the boundary (hard factor (1−x²)(1−y²)), k = 1,
    q = (k² − π² − (4π)²)·sin πx·sin 4πy: exact solution sin πx·sin 4πy (a₁ = 1, a₂ = 4 of
    Wang, Teng & Perdikaris 2021, the Helmholtz case PINN benchmarks use)."""
    x, y = sp.symbols("x y")
    u = sp.Function("u")(x, y)
    exact = sp.sin(sp.pi * x) * sp.sin(4 * sp.pi * y)
    q = (1 - sp.pi ** 2 - 16 * sp.pi ** 2) * exact
    return Problem(residual=u.diff(x, 2) + u.diff(y, 2) + u - q, domain={x: (-1, 1), y: (-1, 1)},
                   hard=(1 - x ** 2) * (1 - y ** 2), reference=exact, name="helmholtz2d")


def allen_cahn_fd(nx: int = 2049, nt: int = 201, eps: float = 1e-4, gamma: float = 5.0):
    """The Allen–Cahn reference by finite differences: u_t = eps·u_xx + gamma·(u − u³) on
    x ∈ [−1,1], u(x,0) = x² cos πx, u(±1,t) = −1; second-order differences on ``nx`` points,
    SciPy's BDF in time (rtol 1e-9); returns (x, t, U) with U[i, j] = u(x_j, t_i) on ``nt``
    equally spaced times in [0, 1]."""
    from scipy.integrate import solve_ivp
    from scipy.sparse import diags
    x = np.linspace(-1, 1, nx)
    h = x[1] - x[0]
    n = nx - 2
    D = diags([np.ones(n - 1), -2 * np.ones(n), np.ones(n - 1)], [-1, 0, 1]) * (eps / h ** 2)
    bc = np.zeros(n)
    bc[0] = bc[-1] = -eps / h ** 2                 # u = −1 at both ends

    def rhs(_, v):
        return D @ v + bc + gamma * (v - v ** 3)

    def jac(_, v):
        return D + diags(gamma * (1 - 3 * v ** 2))

    t = np.linspace(0, 1, nt)
    sol = solve_ivp(rhs, (0, 1), (x ** 2 * np.cos(np.pi * x))[1:-1], method="BDF", t_eval=t, jac=jac,
                    rtol=1e-9, atol=1e-11)
    if not sol.success:
        raise RuntimeError(f"allen_cahn_fd: the time integration failed: {sol.message}")
    U = np.full((nt, nx), -1.0)
    U[:, 1:-1] = sol.y.T
    return x, t, U


class AllenCahnReference:
    """Callable X → u (X's columns x, t) interpolating :func:`allen_cahn_fd` (computed once)."""

    def __init__(self, **fd):
        self.fd, self._table = fd, None

    def __call__(self, X):
        from scipy.interpolate import RegularGridInterpolator
        if self._table is None:
            x, t, U = allen_cahn_fd(**self.fd)
            self._table = RegularGridInterpolator((t, x), U, method="cubic")
        X = np.asarray(X, dtype=np.float64)
        return self._table(np.c_[X[:, 1], X[:, 0]])


def allen_cahn1d() -> Problem:
    """u_t − 10⁻⁴·u_xx + 5u³ − 5u = 0 on x ∈ [−1,1], t ∈ [0,1], u(x,0) = x² cos πx,
    u(±1,t) = −1 (the Allen–Cahn case of Raissi et al. 2019, with Dirichlet ends), built in:
    u = x² cos πx + t·(1 − x²)·N; reference by finite differences (:func:`allen_cahn_fd`)."""
    x, t = sp.symbols("x t")
    u = sp.Function("u")(x, t)
    return Problem(residual=u.diff(t) - sp.Rational(1, 10000) * u.diff(x, 2) + 5 * u ** 3 - 5 * u,
                   domain={x: (-1, 1), t: (0, 1)}, lift=x ** 2 * sp.cos(sp.pi * x), hard=t * (1 - x ** 2),
                   reference=AllenCahnReference(), name="allen_cahn1d")


#: name -> (problem factory, network width, depth, fit arguments); ``causal``: (time coordinate,
#: eps) of :meth:`Problem.causal_weights` for the Adam steps
PROBLEMS = {
    "poisson2d": (poisson2d, 32, 2, {"epochs": 1000, "points": 1024, "lr": 5e-3}),
    "heat1d": (heat1d_hard, 32, 3, {"epochs": 1000, "points": 1024, "lr": 3e-3, "lbfgs": 1000}),
    "burgers1d": (burgers1d_hard, 32, 4, {"epochs": 2000, "points": 4096, "lr": 2e-3, "lbfgs": 3000}),
    "allen_cahn1d": (allen_cahn1d, 32, 4, {"epochs": 2000, "points": 4096, "lr": 2e-3, "lbfgs": 5000,
                                           "causal": ("t", 10.0)}),
    "helmholtz2d": (helmholtz2d, 40, 3, {"epochs": 1000, "points": 2048, "lr": 2e-3, "lbfgs": 5000}),
}


def fit_arguments(problem: Problem, kw: dict) -> dict:
    """The keyword arguments of :meth:`Problem.fit` for a recipe of :data:`PROBLEMS`."""
    out = {k: kw[k] for k in ("epochs", "points", "schedule", "resample", "lbfgs", "lbfgs_points") if k in kw}
    if "causal" in kw:
        name, eps = kw["causal"]
        coord = next(c for c in problem.coords if str(c) == name)
        out["point_weights"] = problem.causal_weights(coord, eps)
    return out
