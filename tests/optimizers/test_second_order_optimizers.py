"""AdaHessian and damped Newton against references written here with PyTorch / NumPy."""
import numpy as np
import pytest
import torch

from symprop import Sequential, layers as L, optimizers as O
from symprop.runtime.curvature import rademacher
from support.torch_oracles import torch_loss
from support.numeric import rel_err


def small_cnn():
    return Sequential([L.Conv2D(1, 3, 3, padding=1), L.Tanh(), L.MaxPool2D(2), L.Flatten(), L.Dense(12, 3)],
                      dtype="float64", seed=4, input_shape=(1, 4, 4))


def torch_adahessian(model, X, y, steps, *, lr, betas, eps, wd, k, seed, update_each=1, warmup=0):
    """The update of Yao et al.'s reference implementation (spatial averaging of |v ⊙ Hv| over
    conv kernels, bias corrections, decoupled weight decay), with the same Rademacher draws."""
    rng = np.random.default_rng(seed)
    params = [torch.tensor(p.copy(), requires_grad=True) for p in model.parameters()]
    m = [torch.zeros_like(p) for p in params]
    s = [torch.zeros_like(p) for p in params]
    D = None
    for t in range(1, steps + 1):
        loss = torch_loss(model, X, y, params)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        if t - 1 < warmup or (t - 1 - warmup) % update_each == 0:
            v = [torch.tensor(a) for a in rademacher([p.detach().numpy() for p in params], rng)]
            hv = torch.autograd.grad(grads, params, v)
            D = []
            for vi, h in zip(v, hv):
                d = vi * h
                D.append(d.abs().mean(dim=[2, 3], keepdim=True).expand_as(d) if d.dim() == 4 else d)
        with torch.no_grad():
            for p, g, mi, si, d in zip(params, grads, m, s, D):
                mi.mul_(betas[0]).add_(g, alpha=1 - betas[0])
                si.mul_(betas[1]).addcmul_(d, d, value=1 - betas[1])
                bc1, bc2 = 1 - betas[0] ** t, 1 - betas[1] ** t
                denom = (si / bc2) ** (k / 2) + eps
                p.mul_(1 - lr * wd)
                p.sub_(lr / bc1 * mi / denom)
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("k,wd,update_each,warmup", [(1.0, 0.0, 1, 0), (0.5, 0.01, 1, 10), (1.0, 0.001, 2, 0),
                                                     (1.0, 0.001, 2, 1), (0.5, 0.0, 3, 2)])
def test_adahessian_steps_match_a_torch_reference(k, wd, update_each, warmup):
    """estimate_warmup=0, reuse_trust=None is the reference schedule (re-estimate at steps 1,
    1 + update_each, ...); with a warm-up the first ``warmup`` steps re-estimate every step."""
    model = small_cnn()
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(5, 1, 4, 4)), rng.integers(0, 3, 5)
    hp = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-4, wd=wd, k=k, seed=7)
    want = torch_adahessian(model, X, y, 6, update_each=update_each, warmup=warmup, **hp)
    opt = O.AdaHessian(lr=0.05, betas=(0.9, 0.99), eps=1e-4, weight_decay=wd, hessian_power=k, seed=7,
                       update_each=update_each, estimate_warmup=warmup, reuse_trust=None)
    params = model.parameters()
    for _ in range(6):
        _, grads, _ = opt.loss_and_grad(model, X, y)
        opt.step(params, grads)
    for a, b in zip(params, want):
        assert rel_err(a, b) < 1e-9


def test_adahessian_averages_conv_kernels_only_when_asked():
    model = small_cnn()
    X, y = np.random.default_rng(1).normal(size=(4, 1, 4, 4)), np.array([0, 1, 2, 0])
    _, _, D, _ = O.AdaHessian(seed=0).estimate(model, X, y)
    _, _, Draw, _ = O.AdaHessian(seed=0, average_conv_kernel=False).estimate(model, X, y)
    assert np.all(D[0] == D[0][:, :, :1, :1]) and D[0].min() >= 0
    assert rel_err(D[0][:, :, 0, 0], np.abs(Draw[0]).mean(axis=(2, 3))) < 1e-12
    assert all(np.array_equal(a, b) for a, b in zip(D[1:], Draw[1:]))   # non-conv: v ⊙ Hv as is


def test_adahessian_errors():
    with pytest.raises(ValueError, match="hessian_power"):
        O.AdaHessian(hessian_power=2)
    with pytest.raises(ValueError, match="update_each"):
        O.AdaHessian(update_each=0)
    with pytest.raises(ValueError, match="no Hessian diagonal"):
        O.AdaHessian().step([np.zeros(2)], [np.zeros(2)])
    with pytest.raises(ValueError, match="do not match"):
        O.AdaHessian().step([np.zeros(2)], [np.zeros(2)], hessian_diag=[np.zeros(3)])


def test_adahessian_fit_trains_an_mlp():
    from symprop.runtime.data import load_digits
    (X, y), (Xt, yt) = load_digits()
    model = Sequential([L.Dense(64, 64), L.Tanh(), L.Dense(64, 10)], seed=0)
    hist = model.fit(X, y, epochs=5, batch_size=64, optimizer=O.AdaHessian(lr=0.15), verbose=0)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert model.evaluate(Xt, yt)["accuracy"] > 0.9


def test_newton_solves_a_quadratic_in_one_step():
    rng = np.random.default_rng(3)
    model = Sequential([L.Dense(4, 2)], loss="mse", dtype="float64")
    X, Y = rng.normal(size=(20, 4)), rng.normal(size=(20, 2))
    opt = O.Newton(lr=1.0, damping=1e-12)
    _, grads, _ = opt.loss_and_grad(model, X, Y)
    opt.step(model.parameters(), grads)
    A = np.hstack([X, np.ones((20, 1))])
    sol = np.linalg.lstsq(A, Y, rcond=None)[0]          # exact least-squares minimizer
    W, b = model.parameters()
    assert rel_err(W, sol[:4].T) < 1e-8 and rel_err(b, sol[4]) < 1e-8
    assert np.abs(model.loss_and_grad(X, Y)[1][0]).max() < 1e-10


def test_newton_handles_indefinite_hessians_and_trains():
    from symprop.runtime.data import load_digits
    (X, y), _ = load_digits()
    model = Sequential([L.Dense(64, 6), L.Tanh(), L.Dense(6, 10)], dtype="float64", seed=0)
    opt = O.Newton(lr=1.0, damping=1e-2)
    before = model.evaluate(X[:256], y[:256])["loss"]
    model.fit(X[:256], y[:256], epochs=3, batch_size=256, optimizer=opt, verbose=0)
    assert model.evaluate(X[:256], y[:256])["loss"] < 0.5 * before
    assert opt.eigenvalues.min() < 0     # the Hessian was indefinite, and the step still descended


def test_newton_refuses_big_models():
    model = Sequential([L.Dense(64, 100), L.Dense(100, 10)])
    with pytest.raises(ValueError, match="7,510 parameters, above the limit of 5,000"):
        O.Newton().loss_and_grad(model, np.zeros((2, 64), np.float32), np.zeros(2, np.int64))
