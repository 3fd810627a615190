"""Read-only inputs are accepted wherever they are only read (memory-mapped data, broadcast
views); complex inputs are refused instead of silently dropping the imaginary part."""
import numpy as np
import pytest

from symprop import Sequential, layers as L, optimizers as O


def _ro(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


def test_predict_mse_targets_and_hvp_directions_may_be_read_only(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 4)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    Xm = np.load(tmp_path / "X.npy", mmap_mode="r")
    model = Sequential([L.Dense(4, 5), L.Tanh(), L.Dense(5, 3)], seed=0)
    assert np.array_equal(model.predict(Xm), model.predict(X))
    reg = Sequential([L.Dense(4, 2)], loss="mse", dtype="float64")
    Y = rng.normal(size=(6, 2))
    assert reg.loss_and_grad(_ro(X.astype(np.float64)), _ro(Y))[0] == reg.loss_and_grad(X.astype(np.float64), Y)[0]
    v = [_ro(np.ones_like(p)) for p in reg.parameters()]
    hv = reg.hvp(X.astype(np.float64), Y, v)
    assert all(np.isfinite(h).all() for h in hv)


def test_adahessian_trains_a_model_with_a_1x1_projection():
    """The spatially averaged diagonal of a 1x1 kernel was a read-only broadcast view."""
    rng = np.random.default_rng(1)
    model = Sequential([L.Conv2D(1, 2, 3, padding=1), L.ReLU(), L.Residual([L.Conv2D(2, 4, 3, padding=1)]),
                        L.Flatten(), L.Dense(4 * 16, 3)], seed=0)
    X, y = rng.normal(size=(16, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, 16)
    hist = model.fit(X, y, epochs=2, batch_size=8, optimizer=O.AdaHessian(), verbose=0)
    assert np.isfinite(hist["loss"]).all()


def test_kernels_accept_read_only_inputs_directly():
    from symprop.runtime.kernels import load
    D, A = load("dense"), load("activations")
    x, W, b = _ro(np.ones((2, 3))), _ro(np.ones((4, 3))), _ro(np.zeros(4))
    y = D.dense_forward(x, W, b, np.empty((2, 4)))
    assert np.all(y == 3)
    out = np.empty(3)
    A.tanh_forward(_ro(np.zeros(3)), out)
    assert np.all(out == 0)


def test_complex_inputs_are_refused():
    model = Sequential([L.Dense(2, 3)], dtype="float64")
    X = np.ones((2, 2)) + 1j
    with pytest.raises(TypeError, match="real numbers"):
        model.forward(X)
    with pytest.raises(TypeError, match="real numbers"):
        model.hvp(np.ones((2, 2)), np.array([0, 1]), [np.ones((3, 2)) * 1j, np.ones(3)])
    reg = Sequential([L.Dense(2, 1)], loss="mse", dtype="float64")
    with pytest.raises(TypeError, match="mse: targets must be real"):
        reg.loss_and_grad(np.ones((2, 2)), np.ones((2, 1)) * (1 + 1j))
