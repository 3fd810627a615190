"""PReLU and learnable Swish: a learnable parameter per channel (or shared), its pullback a
derived reduction; gradients, HVPs and Hessian diagonals against PyTorch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop import Sequential, layers as L
from support.torch_oracles import check_hvp_against_torch, flatten_torch
from support.numeric import rel_err


def _prelu(t, a):
    a = a.reshape((1, -1) + (1,) * (t.ndim - 2)) if a.numel() > 1 else a
    return torch.clamp(t, min=0) + a * torch.clamp(t, max=0)


def _swish(t, b):
    b = b.reshape((1, -1) + (1,) * (t.ndim - 2)) if b.numel() > 1 else b
    return t * torch.sigmoid(b * t)


CASES = {
    "prelu_shared": (lambda: L.PReLU(), _prelu),
    "prelu_channels": (lambda: L.PReLU(6, init=0.1), _prelu),
    "swish_learnable": (lambda: L.Swish(1.3, learnable=True), _swish),
    "swish_channels": (lambda: L.Swish(0.8, learnable=True, num_parameters=6), _swish),
}


def _mlp_torch(pt, X, y, fn):
    W1, b1, a, W2, b2 = pt
    h = fn(F.linear(torch.tensor(X), W1, b1), a)
    return F.cross_entropy(F.linear(h, W2, b2), torch.tensor(y))


@pytest.mark.parametrize("case", sorted(CASES))
def test_mlp_loss_grad_hvp_and_diagonals_match_torch(case):
    make, fn = CASES[case]
    rng = np.random.default_rng(0)
    model = Sequential([L.Dense(4, 6), make(), L.Dense(6, 3)], dtype="float64", seed=1)
    X, y = rng.normal(size=(8, 4)) * 2, rng.integers(0, 3, 8)
    params = model.parameters()
    assert len(params) == 5 and params[2].shape in ((1,), (6,))
    v = [rng.normal(size=p.shape) for p in params]
    pt = check_hvp_against_torch(model, X, y, v, lambda pt: _mlp_torch(pt, X, y, fn))
    # the exact diagonal (factor backprop + the parameter's own second-order term) is torch's
    flat, unflatten = flatten_torch(pt)
    H = torch.autograd.functional.hessian(lambda th: _mlp_torch(unflatten(th), X, y, fn), flat).numpy()
    d = np.concatenate([a.reshape(-1) for a in model.hessian_diagonal(X, y, "exact")])
    assert rel_err(d, np.diag(H)) < 1e-9
    gn = model.hessian_diagonal(X, y, "gauss_newton")
    assert all(np.isfinite(a).all() for a in gn)


def test_prelu_per_channel_in_a_cnn_matches_torch():
    rng = np.random.default_rng(2)
    model = Sequential([L.Conv2D(2, 3, 3, padding=1), L.PReLU(3), L.Flatten(), L.Dense(3 * 16, 4)],
                       dtype="float64", seed=0)
    X, y = rng.normal(size=(5, 2, 4, 4)), rng.integers(0, 4, 5)
    params = model.parameters()
    v = [rng.normal(size=p.shape) for p in params]
    pt = [torch.tensor(p, requires_grad=True) for p in params]
    h = _prelu(F.conv2d(torch.tensor(X), pt[0], pt[1], padding=1), pt[2])
    lt = F.cross_entropy(F.linear(h.reshape(5, -1), pt[3], pt[4]), torch.tensor(y))
    gt = torch.autograd.grad(lt, pt, create_graph=True)
    hvt = torch.autograd.grad(sum((g * torch.tensor(a)).sum() for g, a in zip(gt, v)), pt)
    loss, grads, hv = model.hvp(X, y, v, return_grad=True)
    assert max(rel_err(a, b.detach().numpy()) for a, b in zip(grads, gt)) < 1e-9
    assert max(rel_err(a, b.numpy()) for a, b in zip(hv, hvt)) < 1e-9


def test_prelu_trains_checkpoints_and_checks_channels(tmp_path):
    from symprop.runtime.data import load_digits
    (X, y), (Xt, yt) = load_digits()
    model = Sequential([L.Dense(64, 64), L.PReLU(64), L.Dense(64, 10)], seed=0)
    model.fit(X, y, epochs=5, verbose=0)
    assert model.evaluate(Xt, yt)["accuracy"] > 0.9
    assert not np.allclose(model.parameters()[2], 0.25)     # the slopes moved
    model.save(tmp_path / "m.npz")
    back = Sequential.load(tmp_path / "m.npz")
    assert np.array_equal(back.parameters()[2], model.parameters()[2])
    with pytest.raises(ValueError, match=r"prelu.*5 parameters need 5 channels"):
        Sequential([L.Dense(4, 6), L.PReLU(5)]).forward(np.zeros((2, 4), np.float32))
