"""Hessian diagonals (exact, Gauss-Newton, Becker-LeCun, Hutchinson) and the full Hessian."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop import Sequential, layers as L
from symprop.runtime import curvature
from support.torch_oracles import torch_forward, torch_loss
from support.numeric import rel_err

TINY = {
    "mlp_tanh": lambda: Sequential([L.Dense(3, 4), L.Tanh(), L.Dense(4, 3)], dtype="float64", seed=1),
    "mlp_softplus_mse": lambda: Sequential([L.Dense(3, 4), L.SoftPlus(), L.Dense(4, 2, bias=False), L.Sigmoid(),
                                            L.Dense(2, 2)], loss="mse", dtype="float64", seed=2),
    "cnn_pools": lambda: Sequential([L.Conv2D(1, 2, 2, padding=1), L.Sigmoid(), L.MaxPool2D(2), L.Conv2D(2, 2, 2),
                                     L.Tanh(), L.AvgPool2D(1), L.Flatten(), L.Dense(2, 3)],
                                    dtype="float64", seed=3, input_shape=(1, 4, 4)),
    "residual": lambda: Sequential([L.Dense(3, 4), L.Residual([L.Dense(4, 4), L.Tanh()]),
                                    L.Residual([L.Dense(4, 3), L.Sigmoid()]), L.Dense(3, 3)], dtype="float64", seed=4),
    "cnn_relu_residual": lambda: Sequential([L.Conv2D(1, 2, 3, padding=1), L.ReLU(),
                                             L.Residual([L.Conv2D(2, 3, 3, stride=2, padding=1), L.SoftPlus()]),
                                             L.Flatten(), L.Dense(12, 2)],
                                            dtype="float64", seed=5, input_shape=(1, 4, 4)),
}


def data(model, rng, n=4):
    X = rng.normal(size=(n,) + model.input_shape)
    if model.loss.name == "mse":
        return X, rng.normal(size=(n,) + model.output_shape)
    return X, rng.integers(0, model.output_shape[0], n)


def flat_params(model):
    return torch.tensor(np.concatenate([p.reshape(-1) for p in model.parameters()]), requires_grad=True)


def unflatten(model, theta):
    out, i = [], 0
    for p in model.parameters():
        out.append(theta[i:i + p.size].reshape(p.shape))
        i += p.size
    return out


def split(model, vec):
    return [a.detach().numpy() if torch.is_tensor(a) else a for a in unflatten(model, vec)]


@pytest.mark.parametrize("name", list(TINY))
def test_exact_diagonal_matches_torch_hessian(name):
    model = TINY[name]()
    X, y = data(model, np.random.default_rng(len(name)))
    H = torch.autograd.functional.hessian(lambda th: torch_loss(model, X, y, unflatten(model, th)),
                                          flat_params(model).detach())
    want = split(model, torch.diagonal(H))
    got = model.hessian_diagonal(X, y, method="exact")
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-9, (name, rel_err(a, b))
    # and the full Hessian built from HVPs is torch's
    assert rel_err(model.hessian(X, y), H.numpy()) < 1e-9


@pytest.mark.parametrize("name", list(TINY))
def test_gauss_newton_diagonal_matches_explicit_JtHJ(name):
    model = TINY[name]()
    X, y = data(model, np.random.default_rng(len(name) + 1))
    theta = flat_params(model).detach()
    out = torch_forward(model, X, unflatten(model, theta))
    J = torch.autograd.functional.jacobian(lambda th: torch_forward(model, X, unflatten(model, th)), theta)
    J = J.reshape(out.shape[0], -1, theta.numel())                  # (N, K, P)
    Hl = torch.autograd.functional.hessian(
        lambda o: (F.mse_loss(o, torch.tensor(y)) if model.loss.name == "mse"
                   else F.cross_entropy(o, torch.tensor(y))), out.detach())
    Hl = Hl.reshape(out.numel(), out.numel())
    Jf = J.reshape(-1, theta.numel())
    G = Jf.T @ Hl @ Jf
    got = model.hessian_diagonal(X, y, method="gauss_newton")
    for a, b in zip(got, split(model, torch.diagonal(G))):
        assert rel_err(a, b) < 1e-9, (name, rel_err(a, b))


def test_gauss_newton_equals_exact_for_a_linear_model():
    model = Sequential([L.Dense(3, 4), L.Dense(4, 3)], dtype="float64")
    X, y = data(model, np.random.default_rng(0))
    for a, b in zip(model.hessian_diagonal(X, y, "gauss_newton"), model.hessian_diagonal(X, y, "exact")):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "softplus", "relu"])
def test_becker_lecun_matches_its_definition_on_a_two_layer_net(act):
    """y = W2·σ(W1 x + b1) + b2 with softmax cross-entropy, written out by hand: the output
    diagonal d_o = p_o(1 − p_o)/N, then h_a = Σ_o W2²·d, h_z = σ'²·h_a + σ''·ḡ_a, and each
    weight's diagonal is Σ_n (input)²·h; σ', σ'' from torch autograd."""
    rng = np.random.default_rng(7)
    model = Sequential([L.Dense(5, 6), L.Activation(act), L.Dense(6, 4)], dtype="float64", seed=3)
    X, y = rng.normal(size=(8, 5)), rng.integers(0, 4, 8)
    W1, b1, W2, b2 = model.parameters()
    N = len(X)
    z = X @ W1.T + b1
    zt = torch.tensor(z, requires_grad=True)
    a = torch_act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
                     "softplus": lambda h: F.softplus(h, threshold=100)}[act](zt)
    d1 = torch.autograd.grad(torch_act.sum(), zt, create_graph=True)[0]
    d2 = torch.autograd.grad(d1.sum(), zt)[0].numpy() if d1.requires_grad else np.zeros_like(z)
    d1, a = d1.detach().numpy(), a.detach().numpy()
    logits = a @ W2.T + b2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    g_out = (p - np.eye(4)[y]) / N
    d_out = p * (1 - p) / N
    g_a = g_out @ W2
    h_a = d_out @ (W2 ** 2)
    h_z = d1 ** 2 * h_a + d2 * g_a
    want = [h_z.T @ X ** 2, h_z.sum(0), d_out.T @ a ** 2, d_out.sum(0)]
    got = model.hessian_diagonal(X, y, method="becker_lecun")
    for g_, w_ in zip(got, want):
        assert rel_err(g_, w_) < 1e-10


def test_becker_lecun_on_cnn_layers_is_exact_where_the_jacobian_is_diagonal():
    """For a single conv layer under MSE, every weight touches each output once per sample
    position, so the diagonal BL keeps for W is the true one (off-diagonal terms are between
    different weights)."""
    model = Sequential([L.Conv2D(2, 3, 2), L.MaxPool2D(2), L.Flatten()], loss="mse", dtype="float64",
                       input_shape=(2, 5, 5))
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(3, 2, 5, 5)), rng.normal(size=(3, 12))
    bl, ex = model.hessian_diagonal(X, y, "becker_lecun"), model.hessian_diagonal(X, y, "exact")
    for a, b in zip(bl, ex):
        assert rel_err(a, b) < 1e-10


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    # MSE on a bias-free dense layer with orthogonal, zero-mean input columns: H is diagonal
    model = Sequential([L.Dense(2, 3, bias=False)], loss="mse", dtype="float64")
    X = np.array([[1.0, 0], [0, 2], [-1, 0], [0, -2]])
    y = np.random.default_rng(0).normal(size=(4, 3))
    H = model.hessian(X, y)
    assert np.count_nonzero(H - np.diag(np.diag(H))) == 0
    hd = model.hessian_diagonal(X, y, "hutchinson", samples=1, seed=3)
    assert rel_err(hd[0], np.diag(H).reshape(3, 2)) < 1e-15


def test_hutchinson_is_unbiased_and_its_error_shrinks_like_inverse_sqrt_samples():
    model = TINY["mlp_tanh"]()
    X, y = data(model, np.random.default_rng(1))
    exact = np.concatenate([d.ravel() for d in model.hessian_diagonal(X, y, "exact")])
    errs = {}
    for s in (16, 256):
        runs = [np.concatenate([d.ravel() for d in model.hessian_diagonal(X, y, "hutchinson", samples=s, seed=r)])
                for r in range(40)]
        errs[s] = np.sqrt(np.mean([(r - exact) ** 2 for r in runs]))
        mean = np.mean(runs, axis=0)   # the average of 40 estimates is close to the truth
        assert np.sqrt(np.mean((mean - exact) ** 2)) < 2.5 * errs[s] / np.sqrt(40)
    # 16x the samples: rms error ~4x smaller (1/sqrt(samples)); allow sampling noise
    assert 2.8 < errs[16] / errs[256] < 5.5


def test_hutchinson_seed_is_reproducible():
    model = TINY["mlp_tanh"]()
    X, y = data(model, np.random.default_rng(2))
    a = model.hessian_diagonal(X, y, "hutchinson", samples=3, seed=11)
    b = model.hessian_diagonal(X, y, "hutchinson", samples=3, seed=11)
    c = model.hessian_diagonal(X, y, "hutchinson", samples=3, seed=12)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


def test_float32_diagonals():
    model = Sequential([L.Conv2D(1, 2, 2), L.Tanh(), L.Flatten(), L.Dense(18, 3)], input_shape=(1, 4, 4), seed=1)
    X, y = np.random.default_rng(0).normal(size=(4, 1, 4, 4)), np.array([0, 1, 2, 0])
    for method in curvature.METHODS:
        d = model.hessian_diagonal(X, y, method, samples=4, seed=0)
        assert [a.dtype for a in d] == [np.float32] * 4 and all(np.isfinite(a).all() for a in d)


def test_errors():
    model = TINY["residual"]()
    X, y = data(model, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown method 'diag'"):
        model.hessian_diagonal(X, y, "diag")
    with pytest.raises(ValueError, match=r"Residual\(.*Becker-LeCun"):
        model.hessian_diagonal(X, y, "becker_lecun")
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        model.hessian_diagonal(X, y, "hutchinson", samples=0)
    with pytest.raises(ValueError, match="above the limit of 10"):
        model.hessian(X, y, max_params=10)
    big = Sequential([L.Dense(64, 2048), L.Tanh(), L.Dense(2048, 10)])
    Xb, yb = np.zeros((32, 64), np.float32), np.zeros(32, np.int64)
    with pytest.raises(ValueError, match="MAX_FACTOR_ELEMENTS"):
        big.hessian_diagonal(Xb, yb, "exact")
