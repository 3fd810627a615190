"""Dropout and DropConnect: the mask spec y = m·x, one mask per forward call from the model's
seeded generator, shared by that call's backward and R-op passes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop import Sequential, layers as L
from support.numeric import rel_err


def _mlp(p=0.3, dc=0.0, seed=0):
    return Sequential([L.Dense(5, 7, dropconnect=dc), L.Tanh(), L.Dropout(p), L.Dense(7, 3)],
                      dtype="float64", seed=seed)


def test_eval_is_the_identity_and_train_is_unbiased():
    model = _mlp()
    X = np.random.default_rng(0).normal(size=(4, 5))
    ev = model.forward(X)
    assert np.array_equal(model.forward(X), ev)            # eval: deterministic, no mask
    model.train()
    outs = np.mean([model.forward(X) for _ in range(4000)], axis=0)
    assert np.abs(outs - ev).max() < 0.05 * np.abs(ev).max() + 0.02
    model.eval()
    assert np.array_equal(model.forward(X), ev)


def test_masks_are_reproducible_by_seed_and_fresh_per_call():
    X = np.random.default_rng(0).normal(size=(4, 5))
    a, b = _mlp(seed=3).train(), _mlp(seed=3).train()
    ya, yb = a.forward(X), b.forward(X)
    assert np.array_equal(ya, yb)
    assert not np.array_equal(a.forward(X), ya)


@pytest.mark.parametrize("p,dc", [(0.3, 0.0), (0.0, 0.4), (0.5, 0.25)])
def test_gradient_and_hvp_equal_torch_given_the_same_masks(p, dc):
    rng = np.random.default_rng(1)
    model = _mlp(p, dc, seed=2).train()
    X, y = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)
    params = model.parameters()
    v = [rng.normal(size=q.shape) for q in params]
    tape = model.trace(X, y, update_buffers=False)
    grads = model.backward(tape, keep_output_grads=True)
    hv = model.rop(tape, v)
    rec0, rec2 = tape.records[0], tape.records[2]
    Mw = rec0["mask"].m if dc else np.ones_like(params[0])
    Mx = rec2["ops"].m if p else np.ones((6, 7))
    pt = [torch.tensor(q, requires_grad=True) for q in params]
    h = torch.tanh(F.linear(torch.tensor(X), pt[0] * torch.tensor(Mw), pt[1])) * torch.tensor(Mx)
    lt = F.cross_entropy(F.linear(h, pt[2], pt[3]), torch.tensor(y))
    gt = torch.autograd.grad(lt, pt, create_graph=True)
    hvt = torch.autograd.grad(sum((g * torch.tensor(a)).sum() for g, a in zip(gt, v)), pt)
    assert abs(tape.loss - lt.item()) < 1e-12
    assert max(rel_err(a, b.detach().numpy()) for a, b in zip(grads, gt)) < 1e-9
    assert max(rel_err(a, b.numpy()) for a, b in zip(hv, hvt)) < 1e-9
    # masks drawn with probability p (scaled by 1/(1-p))
    if p:
        assert set(np.unique(Mx)) <= {0.0, 1 / (1 - p)}


def test_dropout_config_round_trip_and_errors(tmp_path):
    m = _mlp(0.2, 0.1)
    m.save(tmp_path / "m.npz")
    back = Sequential.load(tmp_path / "m.npz")
    assert back.layers[2].p == 0.2 and back.layers[0].dropconnect == 0.1
    for bad in (-0.1, 1.0, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="Dropout.*drop probability"):
            L.Dropout(bad)
    with pytest.raises(ValueError, match="dropconnect"):
        L.Dense(3, 4, dropconnect=1.5)


def test_fit_trains_with_dropout_and_predict_is_deterministic():
    from symprop.runtime.data import load_digits
    (X, y), (Xt, yt) = load_digits()
    model = Sequential([L.Dense(64, 128), L.ReLU(), L.Dropout(0.25), L.Dense(128, 10)], seed=0)
    model.fit(X, y, epochs=8, batch_size=32, verbose=0)
    assert model.training is False
    assert np.array_equal(model.predict(Xt), model.predict(Xt))
    assert model.evaluate(Xt, yt)["accuracy"] > 0.93
