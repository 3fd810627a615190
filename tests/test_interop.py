"""PyTorch interop: from_torch/to_torch round trips give the same outputs and gradients."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from symprop import Sequential, layers as L
from symprop.interop import from_torch, to_torch
from conftest import rel_err


def torch_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, stride=(2, 1), padding=1, dilation=(1, 2)), nn.Tanh(),
                         nn.Sequential(nn.Conv2d(4, 5, 2, bias=False), nn.ReLU()), nn.AvgPool2d(2, 1, 1),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5 * 2 * 2, 7), nn.Softplus(), nn.Linear(7, 3),
                         nn.Sigmoid(), nn.Linear(3, 3)).double()


def check_same(model, tmod, X, y):
    tX = torch.tensor(X)
    out_t = tmod(tX)
    loss_t = nn.functional.cross_entropy(out_t, torch.tensor(y))
    grads_t = torch.autograd.grad(loss_t, list(tmod.parameters()))
    loss, grads = model.loss_and_grad(X, y)
    assert rel_err(model.forward(X), out_t.detach().numpy()) < 1e-12
    assert abs(loss - loss_t.item()) < 1e-12
    assert len(grads) == len(grads_t)
    for a, b in zip(grads, grads_t):
        assert rel_err(a, b.numpy()) < 1e-10


def test_from_torch_then_to_torch_same_outputs_and_gradients():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(6, 2, 7, 6)), rng.integers(0, 3, 6)
    tmod = torch_cnn()
    model = from_torch(tmod, input_shape=(2, 7, 6))
    assert model.dtype == np.float64 and len(model.layers) == 12
    check_same(model, tmod, X, y)
    back = to_torch(model)
    check_same(model, back, X, y)
    for a, b in zip(tmod.parameters(), back.parameters()):
        assert torch.equal(a, b)


def test_to_torch_from_symprop_model_float32_and_shared_layers():
    d = L.Dense(5, 5)
    model = Sequential([L.Dense(4, 5), L.ReLU(), d, L.Tanh(), d, L.Dense(5, 2)], seed=3)
    t = to_torch(model)
    assert t[2] is t[4] and next(t.parameters()).dtype == torch.float32
    X = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    assert rel_err(model.forward(X), t(torch.tensor(X)).detach().numpy()) < 1e-6
    again = from_torch(t)
    assert len(again.parameters()) == 6 and again.layers[2] is not again.layers[4]   # torch modules re-read per use


def test_unsupported_modules_are_named():
    with pytest.raises(ValueError, match=r"module 1 \(GELU"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.GELU()))
    with pytest.raises(ValueError, match="groups"):
        from_torch(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)))
    with pytest.raises(ValueError, match="ceil_mode"):
        from_torch(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True)))
    with pytest.raises(ValueError, match="Sequential"):
        from_torch(nn.Linear(2, 2))
    res = Sequential([L.Conv2D(1, 2, 3, padding=1), L.Residual([L.Conv2D(2, 2, 3, padding=1), L.ReLU()])],
                     input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"layer 1 \(Residual"):
        to_torch(res)
