"""Exact Hessian-vector products against PyTorch double backward."""
import numpy as np
import pytest

from symprop import Sequential, layers as L
from support.torch_oracles import check_hvp_against_torch
from support.numeric import rel_err

ACTS = ["tanh", "sigmoid", "relu", "softplus"]


def random_direction(model, rng):
    return [rng.normal(size=p.shape) for p in model.parameters()]


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
@pytest.mark.parametrize("act", ACTS)
def test_mlp_hvp_matches_torch_double_backward(act, loss):
    seed = ACTS.index(act) * 7 + len(loss)
    rng = np.random.default_rng(seed)
    n_in, h1, h2, n_out, N = (int(a) for a in rng.integers(2, 9, 5))
    model = Sequential([L.Dense(n_in, h1), L.Activation(act), L.Dense(h1, h2, bias=bool(seed % 2)),
                        L.Activation(act), L.Dense(h2, n_out)], loss=loss, dtype="float64", seed=seed)
    X = rng.normal(size=(N, n_in))
    y = rng.integers(0, n_out, N) if loss != "mse" else rng.normal(size=(N, n_out))
    check_hvp_against_torch(model, X, y, random_direction(model, rng))


CNNS = [
    # conv stride/padding/dilation, max pooling with padding, avg pooling with overlap
    lambda: [L.Conv2D(2, 3, 3, stride=2, padding=1), L.Tanh(), L.MaxPool2D(2, padding=1), L.Flatten(),
             L.Dense(3 * 3 * 3, 4)],
    lambda: [L.Conv2D(2, 4, (3, 2), stride=(1, 2), padding=(2, 0), dilation=(2, 1)), L.Sigmoid(),
             L.AvgPool2D(3, stride=2, padding=1), L.Conv2D(4, 3, 2, bias=False), L.SoftPlus(), L.Flatten(),
             L.Dense(3 * 3 * 1, 5)],
    lambda: [L.Conv2D(2, 3, 3, padding=1), L.ReLU(), L.Residual([L.Conv2D(3, 3, 3, padding=1), L.Tanh()]),
             L.Residual([L.Conv2D(3, 4, 3, stride=2, padding=1), L.Sigmoid()]), L.AvgPool2D(2), L.Flatten(),
             L.Dense(4 * 2 * 2, 3)],
]


@pytest.mark.parametrize("case", range(len(CNNS)))
def test_cnn_hvp_matches_torch_double_backward(case):
    rng = np.random.default_rng(10 + case)
    model = Sequential(CNNS[case](), dtype="float64", seed=case, input_shape=(2, 8, 7) if case == 1 else (2, 8, 8))
    X = rng.normal(size=(3,) + model.input_shape)
    y = rng.integers(0, model.output_shape[0], 3)
    check_hvp_against_torch(model, X, y, random_direction(model, rng))


def test_pool_first_and_flatten_first_layers():
    """Layers without parameters ahead of the first weight get a zero input direction."""
    rng = np.random.default_rng(3)
    model = Sequential([L.MaxPool2D(2), L.Flatten(), L.Dense(8, 3), L.Tanh(), L.Dense(3, 2)],
                       dtype="float64", input_shape=(2, 4, 4))
    check_hvp_against_torch(model, rng.normal(size=(4, 2, 4, 4)), rng.integers(0, 2, 4),
                            random_direction(model, rng))


def test_float32_hvp_close_to_float64():
    rng = np.random.default_rng(5)
    layers = lambda: [L.Conv2D(1, 3, 3, padding=1), L.Tanh(), L.MaxPool2D(2), L.Flatten(), L.Dense(12, 4)]  # noqa: E731
    m64 = Sequential(layers(), dtype="float64", input_shape=(1, 4, 4), seed=2)
    m32 = Sequential(layers(), dtype="float32", input_shape=(1, 4, 4), seed=2)
    X, y = rng.normal(size=(5, 1, 4, 4)), rng.integers(0, 4, 5)
    v = random_direction(m64, rng)
    for a, b in zip(m32.hvp(X, y, v), m64.hvp(X, y, v)):
        assert a.dtype == np.float32
        assert rel_err(a, b) < 1e-4


def test_hvp_is_linear_and_symmetric():
    rng = np.random.default_rng(8)
    model = Sequential([L.Dense(4, 5), L.SoftPlus(), L.Dense(5, 3)], dtype="float64")
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    u, w = random_direction(model, rng), random_direction(model, rng)
    Hu, Hw = model.hvp(X, y, u), model.hvp(X, y, w)
    Hsum = model.hvp(X, y, [a + 2 * b for a, b in zip(u, w)])
    for a, b, c in zip(Hsum, Hu, Hw):
        assert rel_err(a, b + 2 * c) < 1e-12
    dot = lambda a, b: sum(float((x * z).sum()) for x, z in zip(a, b))  # noqa: E731
    assert abs(dot(w, Hu) - dot(u, Hw)) < 1e-12 * max(1, abs(dot(w, Hu)))


def test_hvp_matches_finite_differences_of_gradients():
    rng = np.random.default_rng(9)
    model = Sequential([L.Conv2D(1, 2, 2), L.Sigmoid(), L.Flatten(), L.Dense(2 * 3 * 3, 3)], dtype="float64",
                       input_shape=(1, 4, 4))
    X, y = rng.normal(size=(3, 1, 4, 4)), rng.integers(0, 3, 3)
    v = random_direction(model, rng)
    hv = model.hvp(X, y, v)
    params, eps = model.parameters(), 1e-5
    base = [p.copy() for p in params]
    gs = []
    for sgn in (1, -1):
        for p, b0, d in zip(params, base, v):
            p[...] = b0 + sgn * eps * d
        gs.append(model.loss_and_grad(X, y)[1])
    for p, b0 in zip(params, base):
        p[...] = b0
    for h, gp, gm in zip(hv, *gs):
        assert rel_err(h, (gp - gm) / (2 * eps)) < 1e-6


def test_hvp_rejects_bad_directions():
    model = Sequential([L.Dense(3, 2)], dtype="float64")
    X, y = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match="list of 2 arrays"):
        model.hvp(X, y, [np.zeros((2, 3))])
    with pytest.raises(ValueError, match=r"v\[1\] has shape \(3,\), parameter 1 has \(2,\)"):
        model.hvp(X, y, [np.zeros((2, 3)), np.zeros(3)])
    with pytest.raises(ValueError, match="NaN"):
        model.hvp(X, y, [np.full((2, 3), np.nan), np.zeros(2)])
    with pytest.raises(ValueError, match="labels"):
        model.hvp(X, np.array([0, 5]), [np.zeros((2, 3)), np.zeros(2)])
