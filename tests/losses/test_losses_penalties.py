"""Sigmoid cross-entropy, probability-target softmax cross-entropy, and l1/l2 weight penalties:
loss, gradients, HVPs and Hessian diagonals against PyTorch (float64)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop import Sequential, layers as L
from support.torch_oracles import torch_mlp, check_hvp_against_torch, flatten_torch
from support.numeric import rel_err


def _check(model, X, y, torch_loss, v_seed=0):
    rng = np.random.default_rng(v_seed)
    params = model.parameters()
    v = [rng.normal(size=p.shape) for p in params]
    pt = check_hvp_against_torch(model, X, y, v, torch_loss)
    flat, unflatten = flatten_torch(pt)
    H = torch.autograd.functional.hessian(lambda th: torch_loss(unflatten(th)), flat).numpy()
    d = np.concatenate([a.reshape(-1) for a in model.hessian_diagonal(X, y, "exact")])
    assert rel_err(d, np.diag(H)) < 1e-9
    assert rel_err(model.hessian(X, y), H) < 1e-9


def test_sigmoid_cross_entropy_matches_bce_with_logits():
    rng = np.random.default_rng(0)
    model = Sequential([L.Dense(4, 5), L.Tanh(), L.Dense(5, 3)], loss="sigmoid_cross_entropy", dtype="float64")
    X, T = rng.normal(size=(6, 4)), rng.uniform(size=(6, 3))
    _check(model, X, T, lambda pt: F.binary_cross_entropy_with_logits(torch_mlp(pt, X), torch.tensor(T)))


def test_sigmoid_cross_entropy_is_finite_for_huge_logits_in_float32():
    from symprop.runtime.kernels import load
    Ls = load("losses")
    a = np.array([[-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4]], np.float32)
    t = np.array([[1.0, 0.0, 0.3, 0.5, 1.0, 0.0, 0.2]], np.float32)
    g, hv = np.empty_like(a), np.empty_like(a)
    loss = Ls.sigmoid_cross_entropy(a, t, g)
    Ls.sigmoid_cross_entropy_hvp(a, t, np.ones_like(a), hv)
    at = torch.tensor(a.astype(np.float64), requires_grad=True)
    lt = F.binary_cross_entropy_with_logits(at, torch.tensor(t.astype(np.float64)))
    (gt,) = torch.autograd.grad(lt, at, create_graph=True)
    (ht,) = torch.autograd.grad(gt.sum(), at)
    assert np.isfinite([loss]).all() and np.isfinite(g).all() and np.isfinite(hv).all()
    assert abs(loss - lt.item()) < 1e-6 * abs(lt.item())
    assert rel_err(g, gt.detach().numpy()) < 1e-6 and rel_err(hv, ht.numpy()) < 1e-6


def test_probability_targets_match_torch_cross_entropy():
    rng = np.random.default_rng(1)
    model = Sequential([L.Dense(4, 5), L.Tanh(), L.Dense(5, 3)], dtype="float64")
    X = rng.normal(size=(7, 4))
    P = rng.dirichlet(np.ones(3), size=7)
    _check(model, X, P, lambda pt: F.cross_entropy(torch_mlp(pt, X), torch.tensor(P)))
    # one-hot probabilities give the label loss
    y = rng.integers(0, 3, 7)
    assert model.loss_and_grad(X, np.eye(3)[y])[0] == pytest.approx(model.loss_and_grad(X, y)[0], rel=1e-12)
    assert model.evaluate(X, P)["accuracy"] == np.mean(model.predict(X) == P.argmax(1))


@pytest.mark.parametrize("l1,l2", [(0.0, 0.3), (0.05, 0.0), (0.02, 0.1)])
def test_penalties_match_torch(l1, l2):
    rng = np.random.default_rng(2)
    tied = L.Dense(5, 5)
    model = Sequential([L.Dense(4, 5), L.Tanh(), L.Dense(5, 3)], dtype="float64", l1=l1, l2=l2, seed=3)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)

    def tl(pt):
        base = F.cross_entropy(torch_mlp(pt, X), torch.tensor(y))
        W = [pt[0], pt[2]]   # weights only, not biases
        return base + l1 * sum(w.abs().sum() for w in W) + l2 / 2 * sum((w ** 2).sum() for w in W)
    _check(model, X, y, tl)
    del tied


def test_penalties_cover_conv_weights_once_and_round_trip(tmp_path):
    conv = L.Conv2D(1, 2, 3, padding=1)
    model = Sequential([conv, L.ReLU(), L.Flatten(), L.Dense(32, 3)], dtype="float64", l2=0.5)
    W1, W2 = conv.W, model.layers[3].W
    assert model.penalty_value() == pytest.approx(0.25 * ((W1 ** 2).sum() + (W2 ** 2).sum()))
    X, y = np.random.default_rng(0).normal(size=(4, 1, 4, 4)), np.array([0, 1, 2, 0])
    d = model.hessian_diagonal(X, y, "gauss_newton")
    d0 = Sequential([L.Conv2D(1, 2, 3, padding=1), L.ReLU(), L.Flatten(), L.Dense(32, 3)], dtype="float64")
    for p, q in zip(d0.parameters(), model.parameters()):
        p[...] = q
    d_plain = d0.hessian_diagonal(X, y, "gauss_newton")
    assert rel_err(d[0] - d_plain[0], np.full_like(d[0], 0.5)) < 1e-12   # + l2 on weights
    assert rel_err(d[1], d_plain[1]) < 1e-12                            # biases untouched
    model.save(tmp_path / "m.npz")
    assert Sequential.load(tmp_path / "m.npz").l2 == 0.5
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="l1 must be a finite number"):
            Sequential([L.Dense(2, 2)], l1=bad)


def test_target_errors_name_the_loss():
    model = Sequential([L.Dense(2, 3)], dtype="float64")
    X = np.zeros((2, 2))
    with pytest.raises(ValueError, match="softmax_cross_entropy.*sum to 1"):
        model.loss_and_grad(X, np.array([[0.5, 0.2, 0.2], [1.0, 0, 0]]))
    # off by more than the targets' rounding: refused (p − t would be off by δ·p), with the fix
    t = np.array([[0.5, 0.3, 0.2 + 1e-9], [1.0, 0, 0]])
    with pytest.raises(ValueError, match="normalize them"):
        model.loss_and_grad(X, t)
    model.loss_and_grad(X, t / t.sum(axis=1, keepdims=True))                  # renormalized: accepted
    model.loss_and_grad(X, np.array([[0.1, 0.7, 0.2], [0.3, 0.3, 0.4]], np.float32))   # float32 rounding
    sig = Sequential([L.Dense(2, 3)], loss="sigmoid_cross_entropy", dtype="float64")
    with pytest.raises(ValueError, match=r"sigmoid_cross_entropy.*\[0, 1\]"):
        sig.loss_and_grad(X, np.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="sigmoid_cross_entropy.*shape"):
        sig.loss_and_grad(X, np.zeros((2, 2)))
