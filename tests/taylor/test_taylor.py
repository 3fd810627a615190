"""Taylor-mode roles (derivatives with respect to the input) against PyTorch nested autograd:
every role and its pullback for every built-in activation, and the sweeps of random MLPs."""
import math

import numpy as np
import pytest
import torch

from symprop import layers as L
from symprop.runtime.model import Sequential
from symprop.runtime.taylor import InputDerivatives, _module
from support.torch_oracles import TORCH_ACTIVATIONS as TORCH
from support.numeric import rel_err

T = _module()
TABLE = T.MANIFEST
NAMES = sorted(TABLE)


def test_every_activation_has_taylor_roles():
    from symprop.derive.builtins import ACTIVATIONS
    assert sorted(ACTIVATIONS) == NAMES
    for name in NAMES:
        roles = set(TABLE[name]["roles"])
        assert {f"taylor:{k}" for k in range(1, 5)} | {"laplacian", "collapsed:3", "collapsed:4"} <= roles
        assert {"vjp:" + r for r in roles if not r.startswith("vjp:")} <= roles


def run(name, role, env):
    entry = TABLE[name]["roles"][role]
    env = {**TABLE[name]["defaults"], **env}
    x = env.get("x", env.get("y"))
    outs = {}
    for o in entry["point_outputs"]:
        outs[o] = np.empty_like(x)
    for o in entry["dir_outputs"]:
        like = next(env[a] for a in entry["dir_inputs"])
        outs[o] = np.empty_like(like)
    env.update(outs)
    T.KERNELS[entry["kernel"]](*[env[a] for a in entry["call"]])
    return outs


def points(rng, shape):
    x = rng.uniform(-3, 3, shape)
    return np.where(np.abs(x) < 0.05, 0.5, x)   # away from the kinks of ReLU, leaky ReLU, ELU


def torch_jet(name, x, xs):
    """y_k = dᵏ/dtᵏ f(x + Σ x_j tʲ/j!) at t = 0 (elementwise t), by nested autograd; the
    results keep the graph, so they can be differentiated again."""
    f = TORCH[name]
    t = torch.zeros_like(x, requires_grad=True)
    path = x + sum(xj * t ** j / math.factorial(j) for j, xj in enumerate(xs, 1))
    cur = f(path)
    outs = [cur]
    for _ in range(len(xs)):
        cur = torch.autograd.grad(cur.sum(), t, create_graph=True)[0]
        outs.append(cur)
    return outs


def _torch_role_outputs(name, K, x, xs, d):
    """y and y_k per direction: shapes (N, F) and (d, N, F) as the kernels lay them out."""
    per_dir = [torch_jet(name, x, [xk[i] for xk in xs]) for i in range(d)]
    y = per_dir[0][0]
    return y, [torch.stack([per_dir[i][k] for i in range(d)]) for k in range(1, K + 1)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_taylor_role_and_its_pullback_match_nested_autograd(name, K, rng):
    N, F, d = 5, 3, 2
    x = points(rng, (N, F))
    xs = [rng.normal(size=(d, N, F)) for _ in range(K)]
    env = {"x": x, **{f"x{k}": xs[k - 1] for k in range(1, K + 1)}}
    out = run(name, f"taylor:{K}", dict(env))
    tx = torch.tensor(x, requires_grad=True)
    txs = [torch.tensor(a, requires_grad=True) for a in xs]
    ty, tys = _torch_role_outputs(name, K, tx, txs, d)
    assert rel_err(out["y"], ty.detach().numpy()) < 1e-12
    for k in range(1, K + 1):
        assert rel_err(out[f"y{k}"], tys[k - 1].detach().numpy()) < 1e-10, (name, K, k)
    # pullback: cotangents of every output, gradient of Σ g·outputs with respect to every input
    gs = {"gy": rng.normal(size=(N, F)), **{f"gy{k}": rng.normal(size=(d, N, F)) for k in range(1, K + 1)}}
    total = (ty * torch.tensor(gs["gy"])).sum() + sum((tys[k - 1] * torch.tensor(gs[f"gy{k}"])).sum()
                                                       for k in range(1, K + 1))
    want = torch.autograd.grad(total, [tx] + txs, allow_unused=True)
    got = run(name, f"vjp:taylor:{K}", {**env, "y": out["y"], **gs})
    for nm, w in zip(["gx"] + [f"gx{k}" for k in range(1, K + 1)], want):
        w = np.zeros_like(got[nm]) if w is None else w.numpy()
        assert rel_err(got[nm], w) < 1e-10, (name, K, nm)


@pytest.mark.parametrize("name", NAMES)
def test_forward_laplacian_role_and_its_pullback_match_nested_autograd(name, rng):
    """The collapsed role against the sum over directions of order-2 jets, x₂ = L/d each."""
    N, F, d = 4, 3, 3
    x, J, Lap = points(rng, (N, F)), rng.normal(size=(d, N, F)), rng.normal(size=(N, F))
    out = run(name, "laplacian", {"x": x, "J": J, "L": Lap})
    tx, tJ, tL = (torch.tensor(a, requires_grad=True) for a in (x, J, Lap))
    jets = [torch_jet(name, tx, [tJ[i], tL / d]) for i in range(d)]
    ty, tJy, tLy = jets[0][0], torch.stack([j[1] for j in jets]), sum(j[2] for j in jets)
    assert rel_err(out["y"], ty.detach().numpy()) < 1e-12
    assert rel_err(out["Jy"], tJy.detach().numpy()) < 1e-10
    assert rel_err(out["Ly"], tLy.detach().numpy()) < 1e-10
    gs = {"gy": rng.normal(size=(N, F)), "gJy": rng.normal(size=(d, N, F)), "gLy": rng.normal(size=(N, F))}
    total = sum((t * torch.tensor(gs[g])).sum() for t, g in ((ty, "gy"), (tJy, "gJy"), (tLy, "gLy")))
    want = torch.autograd.grad(total, [tx, tJ, tL])
    got = run(name, "vjp:laplacian", {"x": x, "J": J, "L": Lap, "y": out["y"], **gs})
    for nm, w in zip(["gx", "gJ", "gL"], want):
        assert rel_err(got[nm], w.numpy()) < 1e-10, (name, nm)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("K", [3, 4])
def test_collapsed_role_and_its_pullback_match_nested_autograd(name, K, rng):
    """``collapsed:K`` against order-K jets by nested autograd: y, y_k (k < K) per direction and
    T_y = Σ_j c_j y_K⁽ʲ⁾ from T = Σ_j c_j x_K⁽ʲ⁾ (each direction's x_K = T/(d·c_j)); the
    pullback to x, T and x_k against reverse mode over those jets."""
    N, F, d = 4, 3, 3
    x = points(rng, (N, F))
    xs = [rng.normal(size=(d, N, F)) for _ in range(K - 1)]
    Tin, c = rng.normal(size=(N, F)), rng.uniform(0.5, 2, d) * rng.choice([-1, 1], d)
    cw = np.broadcast_to(c[:, None, None], (d, N, F)).copy()
    env = {"x": x, "T": Tin, "c": cw, **{f"x{k}": xs[k - 1] for k in range(1, K)}}
    out = run(name, f"collapsed:{K}", dict(env))
    tx, tT = torch.tensor(x, requires_grad=True), torch.tensor(Tin, requires_grad=True)
    txs = [torch.tensor(a, requires_grad=True) for a in xs]
    jets = [torch_jet(name, tx, [xk[i] for xk in txs] + [tT / (d * c[i])]) for i in range(d)]
    ty = jets[0][0]
    tys = [torch.stack([j[k] for j in jets]) for k in range(1, K)]
    tTy = sum(c[i] * jets[i][K] for i in range(d))
    assert rel_err(out["y"], ty.detach().numpy()) < 1e-12
    for k in range(1, K):
        assert rel_err(out[f"y{k}"], tys[k - 1].detach().numpy()) < 1e-10, (name, K, k)
    assert rel_err(out["Ty"], tTy.detach().numpy()) < 1e-10, (name, K)
    gs = {"gy": rng.normal(size=(N, F)), "gTy": rng.normal(size=(N, F)),
          **{f"gy{k}": rng.normal(size=(d, N, F)) for k in range(1, K)}}
    total = (ty * torch.tensor(gs["gy"])).sum() + (tTy * torch.tensor(gs["gTy"])).sum() + sum(
        (tys[k - 1] * torch.tensor(gs[f"gy{k}"])).sum() for k in range(1, K))
    want = torch.autograd.grad(total, [tx, tT] + txs, allow_unused=True)
    got = run(name, f"vjp:collapsed:{K}", {**env, "y": out["y"], **gs})
    for nm, w in zip(["gx", "gT"] + [f"gx{k}" for k in range(1, K)], want):
        w = np.zeros_like(got[nm]) if w is None else w.numpy()
        assert rel_err(got[nm], w) < 1e-10, (name, K, nm)


def test_float32_kernels_agree_with_float64(rng):
    x = points(rng, (64, 8))
    xs = {f"x{k}": rng.normal(size=(3, 64, 8)) for k in range(1, 5)}
    for name in NAMES:
        o64 = run(name, "taylor:4", {"x": x, **xs})
        o32 = run(name, "taylor:4", {"x": x.astype(np.float32), **{k: v.astype(np.float32) for k, v in xs.items()}})
        for k in o64:
            assert o32[k].dtype == np.float32
            assert rel_err(o32[k], o64[k]) < 1e-4, (name, k)
        col = {"x": x, "T": rng.normal(size=(64, 8)), "c": np.broadcast_to(rng.normal(size=(3, 1, 1)), (3, 64, 8)).copy(),
               **{f"x{k}": xs[f"x{k}"] for k in range(1, 4)}}
        o64 = run(name, "collapsed:4", col)
        o32 = run(name, "collapsed:4", {k: v.astype(np.float32) for k, v in col.items()})
        for k in o64:
            assert o32[k].dtype == np.float32
            assert rel_err(o32[k], o64[k]) < 1e-4, (name, "collapsed", k)


# ---------------------------------------------------------------- network sweeps

def mlp(rng, d, widths, act="tanh", dtype="float64", out=1):
    layers, n = [], d
    for w in widths:
        layers += [L.Dense(n, w), L.Activation(act)]
        n = w
    layers.append(L.Dense(n, out))
    return Sequential(layers, loss="mse", dtype=dtype, seed=int(rng.integers(1 << 30)))


def torch_net(model):
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters()]

    def f(X):
        it, h = iter(params), X
        for la in model.layers:
            h = torch.nn.functional.linear(h, next(it), next(it)) if isinstance(la, L.Dense) \
                else TORCH[la.kernel_name](h)
        return h[:, 0]
    return f, params


@pytest.mark.parametrize("act", ["tanh", "gelu", "softplus", "sigmoid"])
def test_gradient_and_laplacian_of_random_mlp_match_torch(act, rng):
    d = int(rng.integers(2, 5))
    model = mlp(rng, d, [7, 5], act)
    X = rng.uniform(-1, 1, (11, d))
    res = model.input_derivatives(X, "u", "grad", "laplacian")
    f, _ = torch_net(model)
    tX = torch.tensor(X, requires_grad=True)
    u = f(tX)
    g = torch.autograd.grad(u.sum(), tX, create_graph=True)[0]
    lap = sum(torch.autograd.grad(g[:, i].sum(), tX, retain_graph=True)[0][:, i] for i in range(d))
    assert rel_err(res["u"], u.detach().numpy()) < 1e-12
    assert rel_err(res["grad"], g.detach().numpy()) < 1e-11
    assert rel_err(res["laplacian"], lap.detach().numpy()) < 1e-10


@pytest.mark.parametrize("act", ["tanh", "silu", "mish"])
def test_pure_partials_to_order_four_match_nested_autograd(act, rng):
    model = mlp(rng, 3, [6, 6], act)
    X = rng.uniform(-1, 1, (9, 3))
    qs = [(0,), (2, 2), (1, 1, 1), (0, 0, 0, 0), "laplacian", "grad"]
    res = model.input_derivatives(X, *qs)
    f, _ = torch_net(model)
    tX = torch.tensor(X, requires_grad=True)
    derivs = {}
    for i in range(3):
        cur = f(tX)
        for k in range(1, 5):
            cur = torch.autograd.grad(cur.sum(), tX, create_graph=True)[0][:, i]
            derivs[(i,) * k] = cur.detach().numpy()
    for q in qs[:4]:
        assert rel_err(res[q], derivs[q]) < 1e-9, q
    assert rel_err(res["laplacian"], sum(derivs[(i, i)] for i in range(3))) < 1e-10
    assert rel_err(res["grad"], np.stack([derivs[(i,)] for i in range(3)], 1)) < 1e-11


@pytest.mark.parametrize("which", [("u", "grad", "laplacian"), ((0, 0, 0, 0), (1, 1))])
def test_parameter_gradient_of_a_derivative_loss_matches_autograd(which, rng):
    """Σ c·derivative for random c: the backward sweep against torch autograd (double
    backward through the nested input derivatives)."""
    model = mlp(rng, 2, [8, 8], "tanh")
    X = rng.uniform(-1, 1, (10, 2))
    sweep = InputDerivatives(model, which)
    res, tape = sweep.forward(X)
    cot = {q: rng.normal(size=np.shape(v)) for q, v in res.items()}
    grads = sweep.backward(tape, cot)
    f, params = torch_net(model)
    tX = torch.tensor(X, requires_grad=True)
    u = f(tX)
    g = torch.autograd.grad(u.sum(), tX, create_graph=True)[0]
    total = 0
    for q in which:
        if q == "u":
            v = u
        elif q == "grad":
            v = g
        elif q == "laplacian":
            v = sum(torch.autograd.grad(g[:, i].sum(), tX, create_graph=True)[0][:, i] for i in range(2))
        else:
            v = u
            for _ in q:
                v = torch.autograd.grad(v.sum(), tX, create_graph=True)[0][:, q[0]]
        total = total + (v * torch.tensor(cot[q])).sum()
    want = torch.autograd.grad(total, params, allow_unused=True)   # the last bias: no derivative sees it
    for a, b in zip(grads, want):
        assert rel_err(a, np.zeros_like(a) if b is None else b.numpy()) < 1e-10


def test_bad_queries_are_refused_by_name(rng):
    model = mlp(rng, 2, [4], "tanh")
    X = rng.uniform(size=(3, 2))
    with pytest.raises(ValueError, match=r"mixed partial \(0, 1\)"):
        model.input_derivatives(X, (0, 1))
    with pytest.raises(ValueError, match="order 5"):
        model.input_derivatives(X, (0,) * 5)
    with pytest.raises(ValueError, match="outside"):
        model.input_derivatives(X, (2,))
    with pytest.raises(ValueError, match="query"):
        model.input_derivatives(X, "hessian")


def test_float32_coefficients_finite_and_accurate_up_to_1e4(rng):
    """Stability: every role of every activation in float32 over |x| ≤ 1e4 (unit directions)
    is finite and agrees with float64 (normwise, relative to the float64 values' scale)."""
    x = np.concatenate([-np.logspace(-2, 4, 40), np.logspace(-2, 4, 40)]).reshape(8, 10)
    dirs = {f"x{k}": rng.uniform(-1, 1, (2, 8, 10)) for k in range(1, 5)}
    gs = {"gy": rng.uniform(-1, 1, (8, 10)), **{f"gy{k}": rng.uniform(-1, 1, (2, 8, 10)) for k in range(1, 5)}}
    for name in NAMES:
        for K in (2, 4):
            env = {"x": x, **{f"x{k}": dirs[f"x{k}"] for k in range(1, K + 1)}}
            o64 = run(name, f"taylor:{K}", dict(env))
            o32 = run(name, f"taylor:{K}", {k: v.astype(np.float32) for k, v in env.items()})
            genv = {**env, "y": o64["y"], **{k: gs[k] for k in ["gy"] + [f"gy{k}" for k in range(1, K + 1)]}}
            v64 = run(name, f"vjp:taylor:{K}", dict(genv))
            v32 = run(name, f"vjp:taylor:{K}", {k: np.asarray(v, np.float32) for k, v in genv.items()})
            for a, b in [(o32[k], o64[k]) for k in o64] + [(v32[k], v64[k]) for k in v64]:
                assert np.all(np.isfinite(a)), (name, K)
                scale = max(np.max(np.abs(b)), 1.0)
                assert np.max(np.abs(a - b)) / scale < 1e-3, (name, K)


def test_small_cnn_gradient_laplacian_and_parameter_gradient_match_torch(rng):
    """Image-shaped inputs (N, 1, 4, 4): one coordinate per pixel; Conv2D and AvgPool2D run
    their forward and jvp roles on the stacks, the bias only on the value block."""
    model = Sequential([L.Conv2D(1, 2, 3, padding=1), L.Activation("tanh"), L.AvgPool2D(2), L.Flatten(),
                        L.Dense(8, 3), L.Activation("softplus"), L.Dense(3, 1)],
                       loss="mse", dtype="float64", seed=4, input_shape=(1, 4, 4))
    X = rng.uniform(-1, 1, (3, 1, 4, 4))
    sweep = InputDerivatives(model, ("u", "grad", "laplacian"))
    res, tape = sweep.forward(X)
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    W1, b1, W2, b2, W3, b3 = params
    F = torch.nn.functional

    def f(x):
        h = F.avg_pool2d(torch.tanh(F.conv2d(x, W1, b1, padding=1)), 2).flatten(1)
        return F.linear(TORCH["softplus"](F.linear(h, W2, b2)), W3, b3)[:, 0]
    tX = torch.tensor(X, requires_grad=True)
    u = f(tX)
    g = torch.autograd.grad(u.sum(), tX, create_graph=True)[0].reshape(3, 16)
    lap = sum(torch.autograd.grad(g[:, i].sum(), tX, create_graph=True)[0].reshape(3, 16)[:, i] for i in range(16))
    assert rel_err(res["u"], u.detach().numpy()) < 1e-12
    assert rel_err(res["grad"], g.detach().numpy()) < 1e-11
    assert rel_err(res["laplacian"], lap.detach().numpy()) < 1e-10
    cot = {q: rng.normal(size=np.shape(v)) for q, v in res.items()}
    grads = sweep.backward(tape, cot)
    total = sum((v * torch.tensor(cot[q])).sum() for q, v in (("u", u), ("grad", g), ("laplacian", lap)))
    for a, b in zip(grads, torch.autograd.grad(total, params)):
        assert rel_err(a, b.numpy()) < 1e-10


def test_float32_sweep_agrees_with_float64(rng):
    """The same weights in float32 and float64: u, ∇u, Δu and u_xxxx agree to float32 accuracy."""
    m64 = mlp(rng, 3, [16, 16], "tanh")
    m32 = mlp(rng, 3, [16, 16], "tanh", dtype="float32")
    for p32, p64 in zip(m32.parameters(), m64.parameters()):
        p32[...] = p64
    X = rng.uniform(-1, 1, (50, 3))
    for which in (("u", "grad", "laplacian"), ((0, 0, 0, 0), (2, 2))):
        r64 = m64.input_derivatives(X, *which)
        r32 = m32.input_derivatives(X.astype(np.float32), *which)
        for q in which:
            assert r32[q].dtype == np.float32
            assert rel_err(r32[q], r64[q]) < 1e-4, q
