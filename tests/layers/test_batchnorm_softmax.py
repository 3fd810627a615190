"""BatchNorm1D/2D and Softmax, layers of composite specs: the derived pullback's form, and
loss, gradients, HVPs, running statistics, eval mode, Hessian diagonals and checkpoints
against PyTorch (float64)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop import Sequential, layers as L
from support.torch_oracles import flatten_torch
from support.numeric import rel_err

torch.set_default_dtype(torch.float64)


def _bn_torch(t, w, b, training=True, rm=None, rv=None, eps=1e-5):
    return F.batch_norm(t, rm, rv, w, b, training=training, eps=eps)


def _check_model(model, torch_loss, X, y, rng):
    params = model.parameters()
    v = [rng.normal(size=p.shape) for p in params]
    pt = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    lt = torch_loss(pt)
    gt = torch.autograd.grad(lt, pt, create_graph=True)
    hvt = torch.autograd.grad(sum((g * torch.tensor(a)).sum() for g, a in zip(gt, v)), pt)
    model.train()
    loss, grads, hv = model.hvp(X, y, v, return_grad=True)
    assert abs(loss - lt.item()) < 1e-12 * max(1, abs(lt.item()))
    # norm-wise over all parameters: a bias before BatchNorm has an exactly zero gradient
    assert rel_err(_cat(grads), _cat(g.detach().numpy() for g in gt)) < 1e-9
    assert rel_err(_cat(hv), _cat(h.numpy() for h in hvt)) < 1e-9
    return pt


def _cat(arrays):
    return np.concatenate([np.asarray(a).reshape(-1) for a in arrays])


@pytest.mark.parametrize("seed", [0, 1])
def test_batchnorm2d_cnn_loss_grad_hvp_match_torch(seed):
    rng = np.random.default_rng(seed)
    N, C = int(rng.integers(3, 7)), int(rng.integers(2, 4))
    model = Sequential([L.Conv2D(2, C, 3, padding=1), L.BatchNorm2D(C), L.Tanh(), L.Flatten(),
                        L.Dense(C * 16, 3)], dtype="float64", seed=seed)
    X, y = rng.normal(size=(N, 2, 4, 4)), rng.integers(0, 3, N)
    model.build(X.shape[1:])
    bn = model.layers[1]
    bn.gamma[:] = rng.normal(size=C)
    bn.beta[:] = rng.normal(size=C)

    def tl(pt):
        h = torch.tanh(_bn_torch(F.conv2d(torch.tensor(X), pt[0], pt[1], padding=1), pt[2], pt[3]))
        return F.cross_entropy(F.linear(h.reshape(N, -1), pt[4], pt[5]), torch.tensor(y))
    _check_model(model, tl, X, y, rng)


def test_batchnorm1d_mlp_loss_grad_hvp_match_torch():
    rng = np.random.default_rng(3)
    model = Sequential([L.Dense(5, 4), L.BatchNorm1D(4), L.ReLU(), L.Dense(4, 3)], dtype="float64", seed=2)
    X, y = rng.normal(size=(7, 5)), rng.integers(0, 3, 7)
    model.layers[1].gamma[:] = rng.normal(size=4)

    def tl(pt):
        h = torch.relu(_bn_torch(F.linear(torch.tensor(X), pt[0], pt[1]), pt[2], pt[3]))
        return F.cross_entropy(F.linear(h, pt[4], pt[5]), torch.tensor(y))
    _check_model(model, tl, X, y, rng)


def test_running_statistics_eval_mode_and_buffers_like_torch(tmp_path):
    rng = np.random.default_rng(4)
    model = Sequential([L.Conv2D(1, 3, 3), L.BatchNorm2D(3, momentum=0.2), L.Flatten(), L.Dense(3 * 4, 2)],
                       dtype="float64", seed=0)
    tbn = torch.nn.BatchNorm2d(3, momentum=0.2)
    X = rng.normal(size=(6, 1, 4, 4)) * 3 + 1
    y = rng.integers(0, 2, 6)
    bn = model.layers[1]
    assert [id(p) for p in model.parameters()][2:4] == [id(bn.gamma), id(bn.beta)]
    assert not any(id(b) in {id(p) for p in model.parameters()} for b in model.buffers())
    model.train()
    for _ in range(3):
        h = model.layers[0].forward(X)[0]
        model.trace(X, y)                     # a train-mode pass updates the running statistics
        tbn.train()
        tbn(torch.tensor(h))
    assert rel_err(bn.running_mean, tbn.running_mean.numpy()) < 1e-12
    assert rel_err(bn.running_var, tbn.running_var.numpy()) < 1e-12
    model.forward(X)                          # so does a train-mode forward, as in PyTorch
    tbn(torch.tensor(h))
    assert rel_err(bn.running_var, tbn.running_var.numpy()) < 1e-12
    before = bn.running_mean.copy(), bn.running_var.copy()
    model.hvp(X, y, [np.ones_like(p) for p in model.parameters()])
    model.hessian_diagonal(X, y, "gauss_newton")
    assert np.array_equal(bn.running_mean, before[0]) and np.array_equal(bn.running_var, before[1])
    # eval mode: the running statistics
    tbn.eval()
    model.eval()
    h = model.layers[0].forward(X)[0]
    assert rel_err(bn.forward(h)[0], tbn(torch.tensor(h)).detach().numpy()) < 1e-12
    out = model.predict(X)
    # buffers round-trip through a checkpoint
    path = model.save(tmp_path / "bn.npz")
    back = Sequential.load(path)
    assert np.array_equal(back.layers[1].running_var, bn.running_var)
    assert np.array_equal(back.predict(X), out)


def test_eval_mode_batchnorm_gradients_match_torch():
    rng = np.random.default_rng(5)
    model = Sequential([L.Dense(3, 4), L.BatchNorm1D(4), L.Dense(4, 2)], dtype="float64", seed=0)
    bn = model.layers[1]
    bn.running_mean[:] = rng.normal(size=4)
    bn.running_var[:] = rng.uniform(0.5, 2, size=4)
    bn.gamma[:] = rng.normal(size=4)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, 5)
    model.eval()
    params = model.parameters()
    v = [rng.normal(size=p.shape) for p in params]
    pt = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    h = _bn_torch(F.linear(torch.tensor(X), pt[0], pt[1]), pt[2], pt[3], False,
                  torch.tensor(bn.running_mean), torch.tensor(bn.running_var))
    lt = F.cross_entropy(F.linear(h, pt[4], pt[5]), torch.tensor(y))
    gt = torch.autograd.grad(lt, pt, create_graph=True)
    hvt = torch.autograd.grad(sum((g * torch.tensor(a)).sum() for g, a in zip(gt, v)), pt)
    loss, grads, hv = model.hvp(X, y, v, return_grad=True)
    assert max(rel_err(a, b.detach().numpy()) for a, b in zip(grads, gt)) < 1e-9
    assert max(rel_err(a, b.numpy()) for a, b in zip(hv, hvt)) < 1e-9
    # eval-mode BatchNorm is affine in its input: the exact diagonal is available
    d = model.hessian_diagonal(X, y, "exact")
    assert all(np.isfinite(a).all() for a in d)


def _ggn_diag_torch(fn_out, pt, y):
    """diag(Jᵀ H J) of the mean cross-entropy: J the Jacobian of the logits (all samples)."""
    flat, unflat = flatten_torch(pt)
    out = fn_out(unflat(flat))
    J = torch.autograd.functional.jacobian(lambda th: fn_out(unflat(th)).reshape(-1), flat)
    Hout = torch.autograd.functional.hessian(
        lambda z: F.cross_entropy(z.reshape(out.shape), torch.tensor(y)), out.detach().reshape(-1))
    return torch.diag(J.T @ Hout @ J).numpy()


def test_gauss_newton_diagonal_through_batchnorm_matches_torch():
    rng = np.random.default_rng(6)
    model = Sequential([L.Dense(3, 4), L.BatchNorm1D(4), L.Tanh(), L.Dense(4, 3)], dtype="float64", seed=1)
    model.layers[1].gamma[:] = rng.normal(size=4)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 3, 5)
    pt = [torch.tensor(p.copy()) for p in model.parameters()]

    def out(p):
        h = torch.tanh(_bn_torch(F.linear(torch.tensor(X), p[0], p[1]), p[2], p[3]))
        return F.linear(h, p[4], p[5])
    ref = _ggn_diag_torch(out, pt, y)
    model.train()
    d = np.concatenate([a.reshape(-1) for a in model.hessian_diagonal(X, y, "gauss_newton")])
    assert rel_err(d, ref) < 1e-9
    # Hutchinson through BatchNorm: exact HVPs, unbiased (many probes approach the true diagonal)
    with pytest.raises(ValueError, match=r"exact.*BatchNorm1D\(4\)"):
        model.hessian_diagonal(X, y, "exact")
    with pytest.raises(ValueError, match=r"BatchNorm1D\(4\).*Becker-LeCun"):
        model.hessian_diagonal(X, y, "becker_lecun")


def test_gauss_newton_through_batchnorm_in_a_residual_block_matches_torch():
    rng = np.random.default_rng(7)
    block = L.Residual([L.Dense(3, 3), L.BatchNorm1D(3), L.Tanh()])
    model = Sequential([L.Dense(2, 3), block, L.Dense(3, 2)], dtype="float64", seed=3)
    X, y = rng.normal(size=(4, 2)), rng.integers(0, 2, 4)
    model.build(X.shape[1:])
    pt = [torch.tensor(p.copy()) for p in model.parameters()]

    def out(p):
        h = F.linear(torch.tensor(X), p[0], p[1])
        h = h + torch.tanh(_bn_torch(F.linear(h, p[2], p[3]), p[4], p[5]))
        return F.linear(h, p[6], p[7])
    model.train()
    d = np.concatenate([a.reshape(-1) for a in model.hessian_diagonal(X, y, "gauss_newton")])
    assert rel_err(d, _ggn_diag_torch(out, pt, y)) < 1e-9


def test_softmax_layer_grad_hvp_and_gauss_newton_match_torch():
    rng = np.random.default_rng(8)
    model = Sequential([L.Dense(4, 5), L.Softmax(), L.Dense(5, 3)], dtype="float64", seed=0)
    X, y = rng.normal(size=(6, 4)) * 3, rng.integers(0, 3, 6)

    def out(p):
        return F.linear(torch.softmax(F.linear(torch.tensor(X), p[0], p[1]), 1), p[2], p[3])
    _check_model(model, lambda p: F.cross_entropy(out(p), torch.tensor(y)), X, y, rng)
    pt = [torch.tensor(p.copy()) for p in model.parameters()]
    d = np.concatenate([a.reshape(-1) for a in model.hessian_diagonal(X, y, "gauss_newton")])
    assert rel_err(d, _ggn_diag_torch(out, pt, y)) < 1e-9
    with pytest.raises(ValueError, match="Softmax"):
        model.hessian_diagonal(X, y, "exact")


def test_softmax_float32_is_finite_at_huge_logits():
    sm = L.Softmax()
    x = (np.random.default_rng(0).normal(size=(4, 6)) * 1e4).astype(np.float32)
    y, rec = sm.forward(x)
    assert np.isfinite(y).all() and np.allclose(y.sum(1), 1, atol=1e-6)
    ref = torch.softmax(torch.tensor(x, dtype=torch.float64), 1).numpy()
    assert np.max(np.abs(y - ref)) < 1e-6
    g = sm.vjp(rec, np.ones_like(x))[0]
    assert np.isfinite(g).all()


def test_bad_input_names_the_layer():
    bn = L.BatchNorm2D(3)
    with pytest.raises(ValueError, match=r"BatchNorm2D\(3\).*\(N, 3"):
        Sequential([bn], dtype="float64").forward(np.zeros((2, 4, 2, 2)))
    with pytest.raises(ValueError, match="more than one value per channel"):
        m = Sequential([L.BatchNorm1D(2)], dtype="float64").train()
        m.forward(np.ones((1, 2)))
    with pytest.raises(ValueError, match="momentum"):
        L.BatchNorm1D(3, momentum=2)
    with pytest.raises(ValueError, match="eps"):
        L.BatchNorm1D(3, eps=0)
    with pytest.raises(ValueError, match="Softmax"):
        Sequential([L.Softmax()], dtype="float64").forward(np.zeros((2, 3, 4)))


def test_a_file_that_is_not_a_checkpoint_is_refused_clearly(tmp_path):
    bad = tmp_path / "image.npz"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match="not a symprop checkpoint"):
        Sequential.load(bad)


def test_fit_with_batchnorm_when_the_last_batch_would_hold_one_sample():
    rng = np.random.default_rng(9)
    model = Sequential([L.Dense(3, 4), L.BatchNorm1D(4), L.ReLU(), L.Dense(4, 2)], seed=0)
    X, y = rng.normal(size=(33, 3)).astype(np.float32), rng.integers(0, 2, 33)
    hist = model.fit(X, y, epochs=2, batch_size=8, verbose=0)     # 8+8+8+9: the single sample joins
    assert len(hist["loss"]) == 2 and np.isfinite(hist["loss"]).all()


def test_running_statistics_from_threads_equal_serial():
    """4 threads x 50 train-mode forwards through one BatchNorm1D(8192) (the same batch each
    time, so every order gives the same statistics; a small momentum, so an interleaved update
    is not forgotten) equal 200 serial forwards."""
    import sys
    import threading
    x = np.random.default_rng(0).normal(size=(64, 8192)).astype(np.float32) * 3 + 1
    def make():
        m = Sequential([L.BatchNorm1D(8192, momentum=0.001)], dtype="float32")
        m.train()
        return m
    serial, shared = make(), make()
    for _ in range(200):
        serial.forward(x)
    threads = [threading.Thread(target=lambda: [shared.forward(x) for _ in range(50)]) for _ in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)   # switch threads as often as possible
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    for a, b in zip(serial.buffers(), shared.buffers()):
        assert np.array_equal(a, b)


def test_a_checkpoint_with_a_negative_running_variance_is_refused(tmp_path):
    m = Sequential([L.Dense(3, 4), L.BatchNorm1D(4)], dtype="float64")
    m.layers[1].running_var[2] = -0.5
    m.save(tmp_path / "bn.npz")
    with pytest.raises(ValueError, match=r"BatchNorm1D\(4\) has a negative or non-finite running_var \(channel 2"):
        Sequential.load(tmp_path / "bn.npz")


@pytest.mark.parametrize("scale", [1e18, 1e30, 3e38])
def test_float32_batch_statistics_do_not_overflow(scale):
    """Group values are computed in double: inputs near the float32 maximum normalise like the
    same inputs scaled down, as long as the variance itself fits float32; beyond that the
    forward refuses by name instead of returning beta with an infinite running variance."""
    x = np.random.default_rng(0).uniform(-1, 1, size=(16, 3)).astype(np.float32)
    small = Sequential([L.BatchNorm1D(3)], dtype="float32").train()
    ref = small.forward(x)
    big = Sequential([L.BatchNorm1D(3)], dtype="float32").train()
    xs = (x * np.float32(scale)).astype(np.float32)
    if scale <= 1e18:                      # variance ~ 3e35: fits float32
        assert np.allclose(big.forward(xs), ref, rtol=1e-4, atol=1e-5)
        assert np.isfinite(big.buffers()[1]).all()
    else:
        with pytest.raises(ValueError, match=r"BatchNorm1D\(3\): the batch variance of channel 0 exceeds float32"):
            big.forward(xs)
        assert np.array_equal(big.buffers()[1], np.ones(3, np.float32))   # running statistics untouched
    ev = Sequential([L.BatchNorm1D(3)], dtype="float32").eval()
    ev.layers[0].running_var[...] = np.float32(3e38)   # eval with a huge running variance: finite outputs
    assert np.isfinite(ev.forward(xs)).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_constant_channel_normalises_to_beta_exactly(dtype):
    """A channel whose values are all equal: the mean is corrected in the variance pass
    (m += Σ(x − m)/M), so every centred value is exactly 0 and y = β (a mean one ulp off made
    y = ±γ + β in float64 with a small eps, as torch's batch_norm gives)."""
    from symprop import layers as L
    from symprop.runtime.layer_base import Context
    bn = L.BatchNorm1D(3, eps=1e-300 if dtype == "float64" else 1e-30)
    bn.init_parameters(dtype, np.random.default_rng(0))
    bn.beta[:] = [0.5, -1.0, 2.0]
    x = np.full((7, 3), 9.1e17 if dtype == "float64" else 3.3e7, dtype)
    x[:, 1] = 0.1
    y, _ = bn.forward(x, Context(training=True))
    np.testing.assert_array_equal(y, np.broadcast_to(bn.beta, y.shape))
