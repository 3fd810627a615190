"""PDE operators beyond pure partials: mixed partials, Σ A_ij ∂²u/∂x_i∂x_j (collapsed along
the factor of A, one forward-Laplacian sum per sign, or jets along {-1,0,1} directions), the
biharmonic and other order-3/4 combinations; each against PyTorch nested autograd in float64
on random MLPs (1e-10), the sweeps seeded with directions also on a small CNN, the parameter
gradient of each new PDE loss against double backward, and bad input refused by name."""
import numpy as np
import pytest
import sympy as sp
import torch

from symprop import layers as L, pinn
from symprop.derive.taylor import directions_for, factor_quadratic, jet_matrix, multi_indices
from symprop.runtime.model import Sequential
from symprop.runtime.taylor import CollapsedJets, CollapsedSecondOrder, DirectionalJets
from support.numeric import rel_err

x, y, z, t = sp.symbols("x y z t")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The oracles on one thread: torch's OpenMP threads spin-wait on a busy machine (a small
    float64 conv double backward took 5 s on two threads against 0.1 s on one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def torch_mlp(model):
    """The symprop MLP (Dense/activation stack) as a torch function of X, and its parameters."""
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    acts = {"tanh": torch.tanh, "softplus": torch.nn.functional.softplus, "sigmoid": torch.sigmoid,
            "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu}
    names = [la.kernel_name for la in model.layers if not hasattr(la, "W")]

    def f(X):
        it, h = iter(params), X
        for i in range(len(names) + 1):
            h = torch.nn.functional.linear(h, next(it), next(it))
            if i < len(names):
                h = acts[names[i]](h)
        return h[:, 0]
    return f, params


def partial(f, X, alpha):
    """∂^α f by nested autograd (create_graph: differentiable again)."""
    v = f(X)
    for i, n in enumerate(alpha):
        for _ in range(n):
            v = torch.autograd.grad(v.sum(), X, create_graph=True)[0][:, i]
    return v


def torch_residual(expr, coords, model, X, lift=None, hard=None):
    """expr (in u(coords) and its derivatives) evaluated with u = lift + hard·N by autograd."""
    f, params = torch_mlp(model)
    tX = torch.tensor(X, requires_grad=True)
    cols = {c: tX[:, i] for i, c in enumerate(coords)}
    u = sp.Function("u")(*coords)
    N = sp.Function("N")(*coords)
    e = sp.sympify(expr).subs(u, (lift or 0) + (hard if hard is not None else 1) * N).doit()
    derivs = sorted(e.atoms(sp.Derivative), key=sp.default_sort_key)
    syms = sp.symbols(f"_q0:{len(derivs) + 1}")
    e = e.xreplace(dict(zip(derivs, syms[1:]))).xreplace({N: syms[0]})
    vals = [f(tX)]
    for D in derivs:
        a = [0] * len(coords)
        for v, n in D.variable_count:
            a[coords.index(v)] += int(n)
        vals.append(partial(f, tX, a))
    fn = sp.lambdify(list(coords) + list(syms), e, modules=[{"sin": torch.sin, "cos": torch.cos, "exp": torch.exp}, "numpy"])
    r = fn(*[cols[c] for c in coords], *vals)
    return r * torch.ones_like(vals[0]), params


def grad(out, params):
    """d out/d params (zeros where a parameter does not enter: the last bias in u_xy)."""
    gs = torch.autograd.grad(out, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


def check_problem(problem, model, X, expr, coords, lift=None, hard=None, tol=1e-10):
    r = problem.residual(model, X)
    tr, params = torch_residual(expr, coords, model, X, lift, hard)
    assert rel_err(r, tr.detach().numpy()) < tol
    loss, grads = problem.loss_and_grad(model, X)
    tl = (tr ** 2).mean()
    want = grad(tl, params)
    assert abs(loss - tl.item()) <= 1e-11 * tl.item()
    for a, b in zip(grads, want):
        assert rel_err(a, b.numpy()) < tol


@pytest.mark.parametrize("propagation", [None, "jet", "laplacian"])
def test_mixed_partial_u_xy(propagation):
    u = sp.Function("u")(x, y, z)
    problem = pinn.Problem(residual=u.diff(x, y), domain={x: (0, 1), y: (0, 1), z: (0, 1)}, propagation=propagation)
    if propagation is None:   # cheapest: jets along (1,1,0) and (1,-1,0), 5 blocks; collapsed ± needs 6
        assert problem.interior.mode == "jet" and problem.interior.cost == 5
        assert sorted(map(tuple, problem.interior.plan[1].astype(int))) == [(1, -1, 0), (1, 1, 0)]
    model = pinn.mlp(3, width=7, depth=2, dtype="float64", seed=11)
    X = np.random.default_rng(0).random((17, 3))
    check_problem(problem, model, X, u.diff(x, y), [x, y, z])


@pytest.mark.parametrize("A,propagation", [
    (((2, 1, 0), (1, 3, 0.5), (0, 0.5, 1)), None),        # positive definite: one collapsed group
    (((2, 1, 0), (1, 3, 0.5), (0, 0.5, 1)), "jet"),
    (((1, 2, 0), (2, -1, 0), (0, 0, 0)), "laplacian"),    # indefinite: a group per sign
    (((1, 2, 0), (2, -1, 0), (0, 0, 0)), None),
])
def test_anisotropic_second_order_operator(A, propagation):
    """Σ A_ij ∂²u/∂x_i∂x_j written term by term, plus a first-order term outside A's range
    (u_z when A's third row is zero) and a nonlinearity in u."""
    A = sp.Matrix(A).applyfunc(sp.nsimplify)
    c = [x, y, z]
    u = sp.Function("u")(*c)
    op = sum(A[i, j] * u.diff(c[i], c[j]) for i in range(3) for j in range(3))
    expr = op + u.diff(z) + u ** 2 - sp.sin(x)
    problem = pinn.Problem(residual=expr, domain={x: (0, 1), y: (0, 1), z: (0, 1)}, propagation=propagation)
    term = problem.interior
    if propagation is None and A.is_positive_definite:
        assert term.mode == "laplacian" and len(term.plan[1]) == 1 and term.cost == 5
    if term.mode == "laplacian" and not A.is_positive_semidefinite:
        assert len(term.plan[1]) == 3   # positive and negative groups, and u_z's direction
    model = pinn.mlp(3, width=6, depth=2, activation="softplus", dtype="float64", seed=4)
    X = np.random.default_rng(1).random((19, 3))
    check_problem(problem, model, X, expr, c)


def test_space_time_derivatives_with_lift_and_hard_factor():
    """u_t, u_x and u_xx together (Burgers) with u = −sin πx + t(1−x²)·N: jets along t and x."""
    u = sp.Function("u")(x, t)
    expr = u.diff(t) + u * u.diff(x) - u.diff(x, 2) / (100 * sp.pi)
    lift, hard = -sp.sin(sp.pi * x), t * (1 - x ** 2)
    problem = pinn.Problem(residual=expr, domain={x: (-1, 1), t: (0, 1)}, lift=lift, hard=hard)
    assert problem.interior.mode == "jet" and problem.interior.cost == 5
    model = pinn.mlp(2, width=8, depth=2, dtype="float64", seed=2)
    X = np.random.default_rng(2).uniform(-1, 1, (23, 2))
    check_problem(problem, model, X, expr, [x, t], lift, hard)
    # the solution satisfies the conditions exactly
    P = np.c_[np.linspace(-1, 1, 7), np.zeros(7)]
    assert np.allclose(problem.solution(model, P), -np.sin(np.pi * P[:, 0]), atol=1e-15)
    assert np.allclose(problem.solution(model, np.c_[[-1.0, 1.0], [0.3, 0.8]]), 0, atol=1e-15)


@pytest.mark.parametrize("propagation", [None, "jet"])
@pytest.mark.parametrize("d", [2, 3])
def test_biharmonic(d, propagation):
    """Δ²u − u: by default the order-4 coefficient collapsed (one weighted sum over the m
    directions: 2 + 3m blocks), or plain jets (1 + 4m)."""
    c = [x, y, z][:d]
    u = sp.Function("u")(*c)
    lap = lambda e: sum(e.diff(v, 2) for v in c)  # noqa: E731
    expr = lap(lap(u)) - u
    problem = pinn.Problem(residual=expr, domain={v: (0, 1) for v in c}, propagation=propagation)
    term = problem.interior
    m = {2: 4, 3: 7}[d]                                     # directions; 3, 6 partials of order 4 otherwise 5, 15
    assert term.needs == ["N", "Δ²N"] and term.mode == (propagation or "collapsed")
    assert term.plan[1].shape[0] == m and term.cost == (1 + 4 * m if propagation else 2 + 3 * m)
    model = pinn.mlp(d, width=5, depth=2, dtype="float64", seed=d)
    X = np.random.default_rng(d).random((9, d))
    check_problem(problem, model, X, expr, c, tol=1e-9 if d == 3 else 1e-10)


def test_collapsed_jets_with_a_zero_weight():
    """KdV-like u_t + u·u_x + u_xxx: jets along t and x, the order-3 sum with weights (0, 1)
    (the t direction is there for u_t only); collapsed (6 blocks) against autograd."""
    u = sp.Function("u")(t, x)
    expr = u.diff(t) + u * u.diff(x) + u.diff(x, 3)
    problem = pinn.Problem(residual=expr, domain={t: (0, 1), x: (-1, 1)})
    term = problem.interior
    assert term.mode == "collapsed" and term.cost == 6 and sorted(term.plan[3]) == [0, 1]
    model = pinn.mlp(2, width=5, depth=2, activation="sigmoid", dtype="float64", seed=3)
    X = np.random.default_rng(3).random((8, 2))
    check_problem(problem, model, X, expr, [t, x])


def test_order_three_and_four_mixed_partials_with_hard_factor():
    """u_xxyy and u_xyy as separate quantities (a product: no combination), u = x·y·N."""
    u = sp.Function("u")(x, y)
    expr = u.diff(x, 2, y, 2) * u.diff(x, y, 2) + u.diff(x, 3) - x * u
    problem = pinn.Problem(residual=expr, domain={x: (0, 1), y: (0, 1)}, hard=x * y)
    model = pinn.mlp(2, width=5, depth=2, activation="gelu", dtype="float64", seed=8)
    X = np.random.default_rng(8).random((11, 2))
    check_problem(problem, model, X, expr, [x, y], hard=x * y, tol=1e-9)


def test_directions_for_weights_are_exact():
    """Σ_w λ_w (k!/α!) w^α = c_α exactly (SymPy), for the operators above."""
    cases = [(2, 2, {(1, 1): 1}), (4, 2, {(4, 0): 1, (2, 2): 2, (0, 4): 1}),
             (2, 3, {(2, 0, 0): 2, (1, 1, 0): 2, (0, 2, 0): 3}), (3, 2, {(2, 1): 1}), (4, 2, {(3, 1): 1})]
    for k, d, coeffs in cases:
        W, (lam,) = directions_for([(k, coeffs)], d)
        got = jet_matrix(k, d, W) * sp.Matrix(lam)
        want = sp.Matrix([coeffs.get(a, 0) for a in multi_indices(k, d)])
        assert (got - want).applyfunc(sp.simplify) == sp.zeros(len(want), 1)
    A = sp.Matrix([[1, 2, 0], [2, -1, 3], [0, 3, sp.pi]])
    back = sum((s * v * v.T for s, v in factor_quadratic(A)), sp.zeros(3, 3))
    assert (back - A).applyfunc(sp.simplify) == sp.zeros(3, 3)


def _cnn(seed):
    return Sequential([L.Conv2D(1, 2, 2), L.Tanh(), L.AvgPool2D(2), L.Flatten(), L.Dense(2 * 2 * 2, 3),
                       L.Activation("softplus"), L.Dense(3, 1)], loss="mse", dtype="float64", seed=seed,
                      input_shape=(1, 5, 5))


def _torch_cnn(model):
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters()]

    def f(X):
        h = torch.tanh(torch.nn.functional.conv2d(X, params[0], params[1]))
        h = torch.nn.functional.avg_pool2d(h, 2).flatten(1)
        h = torch.nn.functional.softplus(torch.nn.functional.linear(h, params[2], params[3]))
        return torch.nn.functional.linear(h, params[4], params[5])[:, 0]
    return f, params


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_direction_seeded_sweeps_and_their_parameter_gradient(kind):
    """DirectionalJets (order 3; 2 on the CNN), CollapsedJets (order 3, random weights) and
    CollapsedSecondOrder (two groups) on random directions:
    coefficients against nested autograd, the parameter gradient of Σ G·C
    against reverse mode over them."""
    rng = np.random.default_rng(5)
    if kind == "mlp":
        model = pinn.mlp(4, width=6, depth=2, dtype="float64", seed=5)
        f, params = torch_mlp(model)
        X = rng.random((7, 4))
    else:
        model = _cnn(5)
        f, params = _torch_cnn(model)
        X = rng.random((3, 1, 5, 5))
    d = int(np.prod(X.shape[1:]))
    W = rng.standard_normal((2, d))
    tX = torch.tensor(X, requires_grad=True)

    def D(k, w):
        """dᵏ/dtᵏ f(X + t·w) by nested reverse mode (the points are independent: grad of the sum)."""
        wt = torch.tensor(w.reshape(X.shape[1:]))
        v = f(tX)
        for _ in range(k):
            v = (torch.autograd.grad(v.sum(), tX, create_graph=True)[0] * wt).flatten(1).sum(1)
        return v
    K = 3 if kind == "mlp" else 2
    check_seeded(DirectionalJets(model, W, K), X, [f(tX)] + [D(k, w) for k in range(1, K + 1) for w in W], params, rng)
    # the order-3 coefficient collapsed with weights c: Σ_j c_j D³_{w_j} (on the CNN the weights
    # are (m, N, C, H, W) arrays with C = m = 2 channels: a broadcast on the wrong axis would pass shapes)
    c = rng.standard_normal(len(W))
    C = check_seeded(CollapsedJets(model, W, 3, c), X,
                     [f(tX)] + [D(k, w) for k in (1, 2) for w in W] + [sum(cw * D(3, w) for cw, w in zip(c, W))],
                     params, rng)
    assert C.shape == (2 + 2 * len(W), X.shape[0])
    groups = [W, rng.standard_normal((1, d))]
    C = check_seeded(CollapsedSecondOrder(model, groups), X,
                     [f(tX)] + [D(1, w) for V in groups for w in V] + [sum(D(2, w) for w in V) for V in groups],
                     params, rng)
    assert C.shape == (1 + 3 + 2, X.shape[0])


def check_seeded(sweep, X, want, params, rng):
    """A direction-seeded sweep's coefficients against ``want`` (nested autograd) and the
    parameter gradient of Σ G·C (random G) against reverse mode over them; returns C."""
    want = torch.stack(want)
    C, tape = sweep.forward(X)
    assert rel_err(C, want.detach().numpy()) < 1e-10
    G = rng.standard_normal(C.shape)
    grads = sweep.backward(tape, G)
    ref = grad((want * torch.tensor(G)).sum(), params)
    for a, b in zip(grads, ref):
        assert rel_err(a, b.numpy()) < 1e-10
    return C


def test_bad_operators_are_refused_naming_the_term():
    u = sp.Function("u")(x, y)
    dom = {x: (0, 1), y: (0, 1)}
    with pytest.raises(ValueError, match=r"undefined symbol\(s\) \['a'\]"):
        pinn.Problem(residual=sp.Symbol("a") * u.diff(x, y), domain=dom)
    with pytest.raises(ValueError, match=r"Derivative\(u\(x, y\), \(x, 2\), \(y, 3\)\) has order 5"):
        pinn.Problem(residual=u.diff(x, 2, y, 3) + u, domain=dom)
    with pytest.raises(ValueError, match=r"condition .*Derivative\(u\(x, y\), x, \(y, 4\)\) has order 5"):
        pinn.Problem(residual=u.diff(x, y), domain=dom, conditions=[pinn.Condition(u.diff(x, y, 4), {x: 0})])
    with pytest.raises(ValueError, match=r"'laplacian'\) needs one second-order combination.*Δ²N"):
        pinn.Problem(residual=u.diff(x, 4) + 2 * u.diff(x, 2, y, 2) + u.diff(y, 4), domain=dom, propagation="laplacian")
    with pytest.raises(ValueError, match="propagation must be"):
        pinn.Problem(residual=u.diff(x, y), domain=dom, propagation="hessian")
    with pytest.raises(ValueError, match="collapsed jets .* one quantity of order 3 or 4"):
        pinn.Problem(residual=u.diff(x, 4) * u.diff(y, 4), domain=dom, propagation="collapsed")
    model = pinn.mlp(2, width=3, depth=1, dtype="float64")
    with pytest.raises(ValueError, match="weights must be 2 finite numbers"):
        CollapsedJets(model, np.eye(2), 4, [1.0])
    with pytest.raises(ValueError, match="order 2 is not supported"):
        CollapsedJets(model, np.eye(2), 2, [1.0, 1.0])
    problem = pinn.Problem(residual=u.diff(x, y), domain=dom)
    two = Sequential([L.Dense(2, 3), L.Tanh(), L.Dense(3, 2)], loss="mse", dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"residual: the network must have one output"):
        problem.loss_and_grad(two, np.random.default_rng(0).random((4, 2)))
    three = pinn.mlp(3, 4, 1, dtype="float64")
    with pytest.raises(ValueError, match=r"X must be \(N, 2\)"):
        problem.residual(three, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"directions must be \(m, 2\)"):
        DirectionalJets(pinn.mlp(2, 4, 1, dtype="float64"), np.ones((2, 3)), 2)
    with pytest.raises(ValueError, match="order 5 is not supported"):
        DirectionalJets(pinn.mlp(2, 4, 1, dtype="float64"), np.ones((2, 2)), 5)
    with pytest.raises(ValueError, match="cotangents must be shaped"):
        jets = DirectionalJets(pinn.mlp(2, 4, 1, dtype="float64"), np.ones((1, 2)), 2)
        C, tape = jets.forward(np.zeros((3, 2)))
        jets.backward(tape, np.zeros((2, 3)))


@pytest.mark.parametrize("expr_fn", [
    lambda u: u.diff(t) + sp.Rational(3, 2) * u.diff(x),           # advection: one first-order combination
    lambda u: u ** 3 - sp.cos(x) * u,                               # no derivative at all
    lambda u: sp.sin(u.diff(x)) + x * u.diff(x, 2) + u.diff(t, 2),  # not polynomial; a variable coefficient
])
def test_first_order_zero_order_and_non_polynomial_residuals(expr_fn):
    u = sp.Function("u")(x, t)
    expr = expr_fn(u)
    problem = pinn.Problem(residual=expr, domain={x: (0, 1), t: (0, 1)})
    model = pinn.mlp(2, width=6, depth=2, dtype="float64", seed=6)
    X = np.random.default_rng(6).random((13, 2))
    check_problem(problem, model, X, expr, [x, t])
