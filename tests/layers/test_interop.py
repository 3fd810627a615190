"""PyTorch interop: from_torch/to_torch round trips give the same outputs and gradients."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from symprop import Sequential, layers as L
from symprop.interop import from_torch, to_torch
from support.numeric import rel_err


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
    with pytest.raises(ValueError, match=r"module 1 \(Hardswish"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.Hardswish()))
    with pytest.raises(ValueError, match="erf form"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.GELU(approximate="tanh")))
    with pytest.raises(ValueError, match="affine=False"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, affine=False)))
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


def torch_course_net():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=0.3), nn.PReLU(3),
                        nn.Flatten(), nn.Linear(3 * 16, 6), nn.BatchNorm1d(6), nn.LeakyReLU(0.2), nn.Dropout(0.3),
                        nn.Linear(6, 5), nn.ELU(0.7), nn.Linear(5, 4), nn.SiLU(), nn.Linear(4, 4), nn.GELU(),
                        nn.Linear(4, 4), nn.Mish(), nn.Linear(4, 3)).double()
    with torch.no_grad():   # non-trivial running statistics and affine parameters
        for m in net:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return net


def test_course_layers_round_trip_eval_and_train_modes():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(8, 1, 4, 4)), rng.integers(0, 3, 8)
    tmod = torch_course_net().eval()
    model = from_torch(tmod, input_shape=(1, 4, 4))
    assert not model.training and len(model.buffers()) == 4
    check_same(model, tmod, X, y)                       # eval: running statistics, no dropout
    back = to_torch(model)
    assert not back.training
    check_same(model, back, X, y)
    for a, b in zip(list(tmod.state_dict().values()), list(back.state_dict().values())):
        assert torch.equal(a, b)
    # train mode without dropout: batch statistics, and the same running-statistics update
    tmod = nn.Sequential(*[m for m in torch_course_net() if not isinstance(m, nn.Dropout)]).train()
    model = from_torch(tmod, input_shape=(1, 4, 4))
    assert model.training
    out_t = tmod(torch.tensor(X))
    loss_t = nn.functional.cross_entropy(out_t, torch.tensor(y))
    grads_t = torch.autograd.grad(loss_t, list(tmod.parameters()))
    loss, grads = model.loss_and_grad(X, y)             # one train-mode forward each
    assert abs(loss - loss_t.item()) < 1e-12
    flat = lambda arrays: np.concatenate([np.asarray(a).reshape(-1) for a in arrays])  # noqa: E731
    assert rel_err(flat(grads), flat(g.numpy() for g in grads_t)) < 1e-10   # conv bias before BN: exactly 0
    bn_t, bn = tmod[1], model.layers[1]
    assert rel_err(bn.running_mean, bn_t.running_mean.numpy()) < 1e-12
    assert rel_err(bn.running_var, bn_t.running_var.numpy()) < 1e-12


def test_subclasses_replaced_forwards_hooks_nonfinite_and_meta_modules_are_refused():
    class Doubling(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)
    with pytest.raises(ValueError, match="subclasses torch.nn.Linear"):
        from_torch(nn.Sequential(Doubling(3, 2)))
    lin = nn.Linear(3, 2)
    lin.forward = lambda x: x
    with pytest.raises(ValueError, match="forward is replaced"):
        from_torch(nn.Sequential(lin))
    hooked = nn.Linear(3, 2)
    hooked.register_forward_hook(lambda m, i, o: o * 0)
    with pytest.raises(ValueError, match="forward hooks"):
        from_torch(nn.Sequential(hooked))
    class MySeq(nn.Sequential):
        pass
    with pytest.raises(ValueError, match="subclasses torch.nn.Sequential"):
        from_torch(nn.Sequential(MySeq(nn.Linear(3, 2))))
    bad = nn.Linear(3, 2)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        from_torch(nn.Sequential(bad))
    with pytest.raises(ValueError, match="meta device"):
        from_torch(nn.Sequential(nn.Linear(3, 2, device="meta")))


def test_to_torch_refuses_dropconnect_by_name():
    from symprop import Sequential, layers as L
    with pytest.raises(ValueError, match="DropConnect"):
        to_torch(Sequential([L.Dense(4, 3, dropconnect=0.5)]))
