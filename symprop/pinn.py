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


def _lambdify(args, expr):
    fn = sp.lambdify(args, expr, modules="numpy")
    return fn


class _Term:
    """One residual r(X; u, its derivatives) that must vanish on a set of points: the
    derivatives of the network it needs, the sweep that computes them, r and ∂(r²)/∂q."""

    def __init__(self, expr, coords: list, u, hard, what: str):
        expr = sp.sympify(expr)
        self.what, self.coords, self.expr = what, coords, expr
        free = sorted(map(str, expr.free_symbols - set(coords)))
        if free:
            raise ValueError(f"{what}: undefined symbol(s) {free} in {expr}; the coordinates are "
                             f"{[str(c) for c in coords]} (write constants as numbers)")
        others = sorted({str(f.func) for f in expr.atoms(AppliedUndef)} - {str(u.func)})
        if others:
            raise ValueError(f"{what}: unknown function(s) {others} in {expr}; the unknown is {u}")
        N = sp.Function("N")(*coords)
        e = expr.subs(u, (hard * N) if hard is not None else N).doit()
        d = len(coords)
        syms, keys = {}, {}
        for D in sorted(e.atoms(sp.Derivative), key=sp.default_sort_key):
            var = [v for v, n in D.variable_count for _ in range(int(n))]
            orig = D.subs(N, u) if hard is None else D
            if len(set(var)) > 1:
                raise ValueError(f"{what}: the mixed partial {orig} is not supported (pure partials ∂ᵏu/∂x_iᵏ "
                                 f"up to order {MAX_ORDER} and the Laplacian are)")
            if len(var) > MAX_ORDER:
                raise ValueError(f"{what}: {orig} has order {len(var)}; at most {MAX_ORDER} is supported")
            key = (coords.index(var[0]),) * len(var)
            s = sp.Symbol("N_" + "".join(str(coords[i]) for i in key))
            syms[D], keys[s] = s, key
        u0 = sp.Symbol("N_")
        keys[u0] = "u"
        r = e.xreplace(syms).xreplace({N: u0})
        if r.has(sp.Derivative, AppliedUndef):
            raise ValueError(f"{what}: could not express {expr} in derivatives of the network")
        # the forward Laplacian when second derivatives enter only through their sum
        second = [s for s, k in keys.items() if k != "u" and len(k) == 2]
        order = max([len(k) for k in keys.values() if k != "u"] or [0])
        self.mode = "jet"
        if second and order == 2 and len(second) == d:
            Lsym = sp.Symbol("N_lap")
            first_key = (0, 0)
            s00 = next(s for s in second if keys[s] == first_key)
            rL = sp.expand(r.subs(s00, Lsym - sum(s for s in second if s is not s00)))
            if not rL.has(*second):
                self.mode = "laplacian"
                r = rL
                for s in second:
                    keys.pop(s)
                keys[Lsym] = "laplacian"
        if self.mode == "laplacian":
            self.queries = ("u", "grad", "laplacian")
        else:
            self.queries = ("u",) + tuple(k for k in keys.values() if k != "u")
        self.qsyms = sorted(keys, key=lambda s: s.name)
        names, sup = {"u": "N", "laplacian": "ΔN"}, {1: "", 2: "²", 3: "³", 4: "⁴"}
        self.needs = [names[k] if k in names else f"∂{sup[len(k)]}N/∂{coords[k[0]]}{sup[len(k)]}"
                      for k in map(keys.get, self.qsyms)]
        self.keys = keys
        self.r = r
        args = list(coords) + self.qsyms
        self._r = _lambdify(args, r)
        # cotangents of the mean of r²: ∂(r²)/∂q, derived
        self._dr2 = {s: _lambdify(args, sp.diff(r ** 2, s)) for s in self.qsyms}
        self.hard = hard
        self._hard = _lambdify(list(coords), hard) if hard is not None else None

    def _quantity(self, res: dict, s):
        k = self.keys[s]
        if k in ("u", "laplacian"):
            return res[k]
        if self.mode == "laplacian":
            return res["grad"][:, k[0]]
        return res[k]

    def _args(self, X, res):
        return [X[:, j].astype(np.float64) for j in range(len(self.coords))] + \
            [self._quantity(res, s).astype(np.float64) for s in self.qsyms]

    def residual(self, X, res) -> np.ndarray:
        return np.broadcast_to(np.asarray(self._r(*self._args(X, res)), dtype=np.float64), (X.shape[0],))

    def loss_and_grad(self, model, X, weight: float = 1.0):
        from .runtime.taylor import InputDerivatives
        sweep = InputDerivatives(model, self.queries)
        res, tape = sweep.forward(X)
        if res["u"].ndim != 1:
            raise ValueError(f"{self.what}: the network must have one output (a scalar u), it has "
                             f"{res['u'].shape[1:]}")
        args = self._args(X, res)
        r = np.broadcast_to(np.asarray(self._r(*args), dtype=np.float64), (X.shape[0],))
        n = X.shape[0]
        cot = {}
        for s in self.qsyms:
            g = np.broadcast_to(np.asarray(self._dr2[s](*args), dtype=np.float64), (n,)) * (weight / n)
            k = self.keys[s]
            if self.mode == "laplacian" and isinstance(k, tuple):
                cot.setdefault("grad", np.zeros((n, len(self.coords))))[:, k[0]] = g
            else:
                cot[k] = g
        grads = sweep.backward(tape, cot)
        return weight * float(np.mean(r * r)), grads


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
    an optional hard-constraint factor (u = hard·N(X)), soft conditions and an optional
    reference solution (a SymPy expression in the coordinates, or a callable X → u)."""

    def __init__(self, residual, domain: dict, hard=None, conditions=(), reference=None, name: str = "pde"):
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
        if hard is not None:
            hard = sp.sympify(hard)
            extra = sorted(map(str, hard.free_symbols - set(self.coords)))
            if extra or hard.has(AppliedUndef):
                raise ValueError(f"Problem: hard factor {hard} may use only the coordinates, it has {extra}")
        self.hard = hard
        self.interior = _Term(residual, self.coords, self.u, hard, "residual")
        self.conditions = list(conditions)
        self._cond_terms = [_Term(c.expr, self.coords, self.u, hard, f"condition {c.expr} on {c.on}")
                            for c in self.conditions]
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

    def solution(self, model, X) -> np.ndarray:
        """u at X: hard(X)·N(X), or N(X)."""
        X = self._check(model, X)
        out = model.outputs(X)
        if out.ndim != 2 or out.shape[1] != 1:
            raise ValueError(f"Problem: the network must have one output (a scalar u), it has {out.shape[1:]}")
        u = out[:, 0].astype(np.float64)
        if self.hard is not None:
            u = u * np.broadcast_to(self.interior._hard(*[X[:, j].astype(np.float64) for j in range(X.shape[1])]),
                                    u.shape)
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

    def grid(self, n: int = 101) -> np.ndarray:
        axes = [np.linspace(lo, hi, n) for lo, hi in self.box]
        return np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)

    def error(self, model, X=None) -> float:
        """Relative L2 error against the reference on X (default: the 101^d grid)."""
        if self.reference is None:
            return float("nan")
        X = self.grid(101 if len(self.coords) <= 2 else 21) if X is None else X
        ref = self.reference(np.asarray(X, float))
        u = self.solution(model, X)
        return float(np.linalg.norm(u - ref) / max(np.linalg.norm(ref), 1e-300))

    # ---------------------------------------------------------------- training
    def total_loss_and_grad(self, model, X, cond_X):
        loss, grads = self.interior.loss_and_grad(model, X)
        for c, term, Xc in zip(self.conditions, self._cond_terms, cond_X):
            lc, gc = term.loss_and_grad(model, Xc, c.weight)
            loss += lc
            grads = [a + b for a, b in zip(grads, gc)]
        return loss, grads

    def fit(self, model, epochs: int = 1000, points: int = 1024, optimizer=None, schedule=None,
            seed: int = 0, resample: int = 0, log_every: int = 100, verbose: int = 1,
            print_fn=print) -> History:
        """Train ``model`` on ``points`` collocation points (redrawn every ``resample``
        epochs; 0: fixed), one optimizer step per epoch (full batch), printing the loss and
        the error against the reference every ``log_every`` epochs. ``schedule``: a
        ``symprop`` learning-rate schedule (``lr_at(epoch, base)``)."""
        from .runtime.optimizers import Adam
        opt = optimizer if optimizer is not None else Adam(lr=1e-3)
        base = opt.lr
        rng = np.random.default_rng(seed)
        draw = lambda: (self._check(model, self.sample_interior(points, rng)),  # noqa: E731
                        [self._check(model, self.sample_condition(c, c.points, rng)) for c in self.conditions])
        X, cond_X = draw()
        hist = History()
        params = model.parameters()
        t0 = time.perf_counter()
        for epoch in range(epochs):
            if resample and epoch and epoch % resample == 0:
                X, cond_X = draw()
            if schedule is not None:
                opt.lr = schedule.lr_at(epoch, base)
            loss, grads = self.total_loss_and_grad(model, X, cond_X)
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
        return hist

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


#: name -> (problem factory, network width, depth, fit arguments)
PROBLEMS = {
    "poisson2d": (poisson2d, 32, 2, {"epochs": 1000, "points": 1024, "lr": 5e-3}),
    "heat1d": (heat1d, 32, 3, {"epochs": 2000, "points": 1024, "lr": 3e-3}),
    "burgers1d": (burgers1d, 32, 4, {"epochs": 10000, "points": 2048, "lr": 2e-3}),
}
