"""Taylor-mode sweeps through MaxPool2D, BatchNorm1D/2D and Dropout (evaluation mode) and
through user activations (Activation.from_sympy), against PyTorch nested autograd in float64:
orders 1–4 along coordinates, the forward Laplacian, and the parameter gradient of
Σ cotangent·derivative (double backward through the nested input derivatives)."""
import numpy as np
import pytest
import sympy as sp
import torch

from symprop import layers as L
from symprop.runtime.model import Sequential
from symprop.runtime.taylor import InputDerivatives, padding_rows
from support.numeric import rel_err
from support.torch_oracles import nested_input_derivatives as nested, torch_activation

QUERIES = [("u", "grad", "laplacian"), ((0,), (1, 1), (2, 2, 2), (0, 0, 0, 0))]


def check_sweep(model, f, params, X, which, rng, tol=1e-10):
    """Derivatives and the parameter gradient of Σ c·derivative (random c) against torch."""
    d = int(np.prod(X.shape[1:]))
    sweep = InputDerivatives(model, which)
    res, tape = sweep.forward(X)
    want = nested(f, X, which, d)
    for q in which:
        assert rel_err(res[q], want[q].detach().numpy()) < tol, q
    cot = {q: rng.normal(size=np.shape(v)) for q, v in res.items()}
    grads = sweep.backward(tape, cot)
    total = sum((want[q] * torch.tensor(cot[q])).sum() for q in which)
    tgrads = torch.autograd.grad(total, params, allow_unused=True)
    assert len(grads) == len(tgrads)
    for i, (a, b) in enumerate(zip(grads, tgrads)):
        assert rel_err(a, np.zeros_like(a) if b is None else b.numpy()) < tol, (which, i)


def randomize_batchnorm(model, rng):
    for la in model.layers:
        if isinstance(la, (L.BatchNorm1D, L.BatchNorm2D)):
            C = la.num_features
            la.gamma[...] = rng.uniform(0.5, 2, C)
            la.beta[...] = rng.normal(size=C)
            la.running_mean[...] = rng.normal(size=C)
            la.running_var[...] = rng.uniform(0.3, 3, C)


def torch_of(model):
    """The model as a float64 torch.nn.Sequential in eval mode, and its parameters."""
    from symprop.interop import to_torch
    net = to_torch(model).double().eval()
    return (lambda X: net(X)[:, 0]), list(net.parameters())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("which", QUERIES)
def test_cnn_with_batchnorm_maxpool_dropout_matches_nested_autograd(seed, which, rng):
    """Conv2D → BatchNorm2D → tanh → MaxPool2D → Dropout → Flatten → Dense → BatchNorm1D →
    softplus → Dense on image-shaped inputs (one coordinate per pixel), random shapes."""
    r = np.random.default_rng(seed)
    C, H = int(r.integers(1, 3)), 2 * int(r.integers(2, 4))
    F = int(r.integers(2, 4))
    hidden = int(r.integers(2, 6))
    model = Sequential([L.Conv2D(C, F, 3, padding=1), L.BatchNorm2D(F), L.Activation("tanh"), L.MaxPool2D(2),
                        L.Dropout(0.3), L.Flatten(), L.Dense(F * (H // 2) ** 2, hidden), L.BatchNorm1D(hidden),
                        L.Activation("softplus"), L.Dense(hidden, 1)],
                       loss="mse", dtype="float64", seed=seed, input_shape=(C, H, H))
    randomize_batchnorm(model, r)
    X = r.uniform(-1, 1, (int(r.integers(2, 5)), C, H, H))
    f, params = torch_of(model)
    check_sweep(model, f, params, X, which, rng)


@pytest.mark.parametrize("which", QUERIES)
def test_mlp_with_batchnorm1d_on_features_matches_nested_autograd(which, rng):
    model = Sequential([L.Dense(3, 6), L.BatchNorm1D(6), L.Activation("gelu"), L.Dropout(0.5), L.Dense(6, 4),
                        L.Activation("sigmoid"), L.BatchNorm1D(4), L.Dense(4, 1)], loss="mse", dtype="float64", seed=2)
    randomize_batchnorm(model, rng)
    X = rng.uniform(-1, 1, (7, 3))
    f, params = torch_of(model)
    check_sweep(model, f, params, X, which, rng)


@pytest.mark.parametrize("which", QUERIES)
@pytest.mark.parametrize("second", ["tanh", "dense"])
def test_first_dense_feeding_an_activation_is_not_materialized(second, which, rng):
    """After a first Dense on the seed, the blocks other than the value are the same for every
    point: an activation next reads them as row-stride-0 views (SeedStack); any other next
    layer gets them written out. Both paths against nested autograd."""
    from symprop.runtime.taylor import SeedStack
    nxt = L.Activation("tanh") if second == "tanh" else L.Dense(5, 5)
    model = Sequential([L.Dense(3, 5), nxt, L.Activation("softplus"), L.Dense(5, 1)], loss="mse",
                       dtype="float64", seed=4)
    X = rng.uniform(-1, 1, (9, 3))
    f, params = torch_of(model)
    check_sweep(model, f, params, X, which, rng)
    _, tape = InputDerivatives(model, which).forward(X)
    assert isinstance(tape[0][2], SeedStack) == (second == "tanh")


def test_training_mode_and_unsupported_layers_are_refused_by_name(rng):
    X = rng.uniform(size=(3, 2))
    for layer in (L.BatchNorm1D(4), L.Dropout(0.5)):
        model = Sequential([L.Dense(2, 4), layer, L.Activation("tanh"), L.Dense(4, 1)], loss="mse", dtype="float64")
        model.train()
        with pytest.raises(ValueError, match=rf"{type(layer).__name__}.*training mode.*model.eval\(\)"):
            model.input_derivatives(X)
        model.eval()
        assert np.isfinite(model.input_derivatives(X, "laplacian")["laplacian"]).all()


def test_stacks_are_padded_off_4k_alignment():
    """Consecutive blocks of the activations' stacks start ≥ 768 bytes (mod 4 KiB) from a
    4 KiB boundary."""
    for N, sizes, isz in ((4096, [64], 4), (4096, [64, 32], 8), (1000, [16 * 16, 128], 4), (512, [3, 7], 4)):
        p = padding_rows(N, sizes, isz)
        assert 1 <= p <= 64
        for f in sizes:
            off = ((N + p) * f * isz) % 4096
            assert min(off, 4096 - off) >= 768, (N, sizes, p, f)


# ---------------------------------------------------------------- user activations

x = sp.Symbol("x")
a = sp.Symbol("a")


@pytest.fixture(scope="module")
def user_activation():
    """A user activation with a parameter, derived and compiled once (cached by spec hash)."""
    return L.Activation.from_sympy("logsq_t", a * sp.log(1 + x ** 2) + sp.tanh(x), x, params=(("a", 1.0),), a=0.7)


def user_mlp(act, d, seed):
    return Sequential([L.Dense(d, 5), act, L.Dense(5, 4), L.Activation("tanh"), L.Dense(4, 1)],
                      loss="mse", dtype="float64", seed=seed)


def torch_user_mlp(model, act):
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    fn = torch_activation(act.spec, **act.params)

    def f(X):
        W1, b1, W2, b2, W3, b3 = params
        h = fn(torch.nn.functional.linear(X, W1, b1))
        h = torch.tanh(torch.nn.functional.linear(h, W2, b2))
        return torch.nn.functional.linear(h, W3, b3)[:, 0]
    return f, params


@pytest.mark.slow
@pytest.mark.parametrize("which", QUERIES)
def test_user_activation_sweeps_match_nested_autograd(user_activation, which, rng):
    """Taylor roles of a from_sympy activation, derived from its spec at compile time
    (orders 1–4, the forward Laplacian) and their pullbacks, through a random MLP."""
    model = user_mlp(user_activation, 3, int(rng.integers(100)))
    X = rng.uniform(-1.5, 1.5, (6, 3))
    f, params = torch_user_mlp(model, user_activation)
    check_sweep(model, f, params, X, which, rng)


@pytest.mark.slow
def test_user_activation_in_direction_seeded_and_collapsed_jets(user_activation, rng):
    """The sweeps pinn builds (DirectionalJets, CollapsedJets: order 4 along directions) bind a
    user activation's module for order 4, not for the query-less default of 2: the biharmonic
    Δ²u of a 2-input MLP with it against nested autograd."""
    import sympy as sp_
    from symprop import pinn
    xs, ys = sp_.symbols("xs ys")
    u = sp_.Function("u")(xs, ys)
    model = user_mlp(user_activation, 2, 3)
    f, _ = torch_user_mlp(model, user_activation)
    X = rng.uniform(-1, 1, (5, 2))
    tX = torch.tensor(X, requires_grad=True)

    def d(v, i):
        return torch.autograd.grad(v.sum(), tX, create_graph=True)[0][:, i]
    v = f(tX)
    want = d(d(d(d(v, 0), 0), 0), 0) + 2 * d(d(d(d(v, 0), 0), 1), 1) + d(d(d(d(v, 1), 1), 1), 1)
    for propagation in ("jet", "collapsed"):
        problem = pinn.Problem(residual=u.diff(xs, 4) + 2 * u.diff(xs, 2, ys, 2) + u.diff(ys, 4),
                               domain={xs: (-1, 1), ys: (-1, 1)}, propagation=propagation)
        assert rel_err(problem.residual(model, X), want.detach().numpy()) < 1e-9, propagation


@pytest.mark.slow
def test_user_activation_taylor_coefficients_float32_stable_up_to_1e4(user_activation, rng):
    """Every Taylor role of the user activation in float32 over |x| ≤ 1e4 is finite and agrees
    with float64 (normwise, relative to the float64 values' scale), pullbacks included."""
    from symprop.runtime.kernels import manifest
    from symprop.runtime.taylor import user_taylor_module
    mod = user_taylor_module(user_activation.spec, 4)
    table = manifest(mod)[user_activation.spec.name]
    xs = np.concatenate([-np.logspace(-2, 4, 40), np.logspace(-2, 4, 40)]).reshape(8, 10)

    def run(role, env):
        entry = table["roles"][role]
        env = {**user_activation.params, **env}
        like = env.get("x", env.get("y"))
        outs = {o: np.empty_like(like) for o in entry["point_outputs"]}
        outs.update({o: np.empty_like(next(env[i] for i in entry["dir_inputs"])) for o in entry["dir_outputs"]})
        env.update(outs)
        mod.KERNELS[entry["kernel"]](*[env[n] for n in entry["call"]])
        return outs

    dirs = {f"x{k}": rng.uniform(-1, 1, (2, 8, 10)) for k in range(1, 5)}
    gs = {"gy": rng.uniform(-1, 1, (8, 10)), **{f"gy{k}": rng.uniform(-1, 1, (2, 8, 10)) for k in range(1, 5)}}
    for K in (1, 2, 3, 4):
        env = {"x": xs, **{f"x{k}": dirs[f"x{k}"] for k in range(1, K + 1)}}
        o64 = run(f"taylor:{K}", dict(env))
        o32 = run(f"taylor:{K}", {k: v.astype(np.float32) for k, v in env.items()})
        genv = {**env, "y": o64["y"], **{k: gs[k] for k in ["gy"] + [f"gy{k}" for k in range(1, K + 1)]}}
        v64 = run(f"vjp:taylor:{K}", dict(genv))
        v32 = run(f"vjp:taylor:{K}", {k: np.asarray(v, np.float32) for k, v in genv.items()})
        for name, a32, b64 in [(k, o32[k], o64[k]) for k in o64] + [(k, v32[k], v64[k]) for k in v64]:
            assert a32.dtype == np.float32
            assert np.all(np.isfinite(a32)), (K, name)
            assert np.max(np.abs(a32 - b64)) / max(np.max(np.abs(b64)), 1.0) < 1e-3, (K, name)


# ---------------------------------------------------------------- learnable activations

@pytest.mark.slow
@pytest.mark.parametrize("which", QUERIES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_prelu_on_images_matches_nested_autograd(per_channel, which, rng):
    """PReLU's Taylor roles and the pullback to its learnable slope (shared, or one per
    channel of a Conv2D output), derived from its spec at first use."""
    C = 2
    model = Sequential([L.Conv2D(1, C, 3, padding=1), L.PReLU(C if per_channel else 1), L.Flatten(),
                        L.Dense(C * 16, 3), L.Activation("tanh"), L.Dense(3, 1)],
                       loss="mse", dtype="float64", seed=5, input_shape=(1, 4, 4))
    model.layers[1].weight[...] = rng.uniform(0.1, 0.6, model.layers[1].weight.shape)
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    F = torch.nn.functional

    def f(X):
        Wc, bc, alpha, W1, b1, W2, b2 = params
        h = F.prelu(F.conv2d(X, Wc, bc, padding=1), alpha).flatten(1)
        return F.linear(torch.tanh(F.linear(h, W1, b1)), W2, b2)[:, 0]
    X = rng.uniform(-1, 1, (3, 1, 4, 4))
    check_sweep(model, f, params, X, which, rng)


@pytest.mark.slow
def test_learnable_swish_laplacian_and_its_parameter_gradient_match_nested_autograd(rng):
    model = Sequential([L.Dense(2, 4), L.Swish(learnable=True, num_parameters=4), L.Dense(4, 1)],
                       loss="mse", dtype="float64", seed=6)
    model.layers[1].weight[...] = rng.uniform(0.5, 2.0, 4)
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    F = torch.nn.functional

    def f(X):
        W1, b1, beta, W2, b2 = params
        h = F.linear(X, W1, b1)
        return F.linear(h * torch.sigmoid(beta * h), W2, b2)[:, 0]
    X = rng.uniform(-1, 1, (5, 2))
    check_sweep(model, f, params, X, QUERIES[0], rng)


# ---------------------------------------------------------------- user contraction specs

def _user_specs():
    from symprop.specs import ContractionSpec
    n, o, i = sp.symbols("n o i", integer=True)
    N, O, I = sp.symbols("N O I", integer=True, positive=True)
    xb, s, b, W = (sp.IndexedBase(k) for k in ("x", "s", "b", "W"))
    # the first two are the README's specs (same names and hashes: one compile serves both)
    affine = ContractionSpec("affine", "y", (n, o), xb[n, o] * s[o] + b[o], inputs={"x": (n, o)},
                             params={"s": (o,), "b": (o,)}, extents={n: N, o: O})
    scaled = ContractionSpec("scaled_dense", "y", (n, o), sp.Sum(xb[n, i] * W[o, i] * s[o], (i, 0, I - 1)),
                             inputs={"x": (n, i)}, params={"W": (o, i), "s": (o,)}, extents={n: N, o: O, i: I})
    # an offset that reads the same parameter as the linear part: y = s·(x + 1)
    shifted = ContractionSpec("t_shifted_scale", "y", (n, o), s[o] * (xb[n, o] + 1), inputs={"x": (n, o)},
                              params={"s": (o,)}, extents={n: N, o: O})
    square = ContractionSpec("t_square", "y", (n, o), xb[n, o] ** 2 * s[o], inputs={"x": (n, o)},
                             params={"s": (o,)}, extents={n: N, o: O})
    return affine, scaled, shifted, square


@pytest.mark.slow   # compiles user specs (~6 s cold); the residual tests below stay in the default set
@pytest.mark.parametrize("which", QUERIES)
def test_user_specs_linear_in_their_input_match_nested_autograd(which, rng):
    """User contraction specs (L.from_spec) in the sweep: a scale and shift, a weight-scaled dense
    layer, and a scale whose offset reads the same parameter, inside an MLP."""
    affine, scaled, shifted, _ = _user_specs()
    model = Sequential([L.Dense(3, 5), L.from_spec(affine, init={"s": 1.0, "b": 0.0}), L.Activation("tanh"),
                        L.from_spec(scaled, O=4, init={"s": 1.0}), L.from_spec(shifted, init={"s": 1.0}), L.Activation("softplus"),
                        L.Dense(4, 1)], loss="mse", dtype="float64", seed=3, input_shape=(3,))
    for p in model.parameters():
        p[...] = rng.normal(size=p.shape)
    tp = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    W1, b1, s1, c1, W2, s2, s3, W4, b4 = tp

    def f(X):
        h = torch.tanh((X @ W1.T + b1) * s1 + c1)
        h = torch.nn.functional.softplus(s3 * ((h @ W2.T) * s2 + 1))
        return (h @ W4.T + b4)[:, 0]
    check_sweep(model, f, tp, rng.uniform(-1, 1, (5, 3)), which, rng)


@pytest.mark.slow   # compiles a spec of its own (~5 s cold)
def test_user_spec_nonlinear_in_its_input_is_refused_by_name():
    *_, square = _user_specs()
    model = Sequential([L.Dense(2, 3), L.from_spec(square, init={"s": 1.0}), L.Dense(3, 1)], loss="mse",
                       dtype="float64", input_shape=(2,))
    with pytest.raises(TypeError, match=r"t_square.*no Taylor-mode sweep.*linear in their input"):
        model.input_derivatives(np.zeros((2, 2)))


# ---------------------------------------------------------------- residual blocks

@pytest.mark.parametrize("which", QUERIES)
def test_residual_blocks_match_nested_autograd(which, rng):
    """Residual blocks in the sweep (the branches' coefficient stacks summed; their pullbacks
    summed at the fan-out): an identity skip around Dense-tanh-Dense, then a projected skip
    (a learned Dense) around Dense-softplus, on an MLP."""
    model = Sequential([L.Dense(3, 5), L.Residual([L.Dense(5, 5), L.Activation("tanh"), L.Dense(5, 5)]),
                        L.Activation("tanh"), L.Residual([L.Dense(5, 4), L.Activation("softplus")]),
                        L.Dense(4, 1)], loss="mse", dtype="float64", seed=4, input_shape=(3,))
    for p in model.parameters():
        p[...] = rng.normal(size=p.shape) / 2
    tp = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    W0, b0, W1, b1, W2, b2, W3, b3, P, c, W4, b4 = tp
    lin = torch.nn.functional.linear

    def f(X):
        h = lin(X, W0, b0)
        h = torch.tanh(h + lin(torch.tanh(lin(h, W1, b1)), W2, b2))
        h = torch.nn.functional.softplus(lin(h, W3, b3)) + lin(h, P, c)
        return lin(h, W4, b4)[:, 0]
    check_sweep(model, f, tp, rng.uniform(-1, 1, (4, 3)), which, rng)


def test_residual_block_first_matches_nested_autograd(rng):
    """A residual block as the model's first layer (the seed goes through both branches)."""
    model = Sequential([L.Residual([L.Dense(2, 2), L.Activation("tanh")]), L.Dense(2, 1)], loss="mse",
                       dtype="float64", seed=1, input_shape=(2,))
    tp = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    W, b, V, c = tp

    def f(X):
        return torch.nn.functional.linear(torch.tanh(torch.nn.functional.linear(X, W, b)) + X, V, c)[:, 0]
    check_sweep(model, f, tp, rng.uniform(-1, 1, (3, 2)), ("u", "grad", "laplacian"), rng)
