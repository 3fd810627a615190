"""Dense VJPs/JVPs, both losses and a whole MLP against PyTorch with the same weights."""
import numpy as np
import pytest
import torch

from symprop import Sequential, layers as L
from symprop.runtime.kernels import load

D, LS = load("dense"), load("losses")   # the loader binds table kernels to the dispatcher
from support.torch_oracles import torch_mlp
from support.numeric import rel_err

TOL = {np.float64: 1e-9, np.float32: 1e-4}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dense_kernels_match_torch(dtype, seed):
    rng = np.random.default_rng(seed)
    n, i, o = rng.integers(1, 40, 3)
    x, W, b, g = (rng.normal(size=s).astype(dtype) for s in ((n, i), (o, i), (o,), (n, o)))
    Rx, RW, Rb, Rg = (rng.normal(size=s).astype(dtype) for s in ((n, i), (o, i), (o,), (n, o)))
    T = lambda a: torch.tensor(a.astype(np.float64), requires_grad=True)  # noqa: E731
    xt, Wt, bt = T(x), T(W), T(b)
    yt = torch.nn.functional.linear(xt, Wt, bt)
    y = D.dense_forward(x, W, b, np.empty((n, o), dtype))
    assert rel_err(y, yt.detach().numpy()) < TOL[dtype]
    gt = torch.tensor(g.astype(np.float64), requires_grad=True)
    gxt, gWt, gbt = torch.autograd.grad(yt, (xt, Wt, bt), gt, create_graph=True)
    assert rel_err(D.dense_vjp_x(W=W, g=g, gx=np.empty_like(x)), gxt.detach().numpy()) < TOL[dtype]
    assert rel_err(D.dense_vjp_W(x=x, g=g, gW=np.empty_like(W)), gWt.detach().numpy()) < TOL[dtype]
    assert rel_err(D.dense_vjp_b(g=g, gb=np.empty_like(b)), gbt.detach().numpy()) < TOL[dtype]
    # pushforward: Ry = d/dε y(x + εRx, W + εRW, b + εRb)
    ryt = torch.autograd.functional.jvp(
        lambda a, w, c: torch.nn.functional.linear(a, w, c), (xt, Wt, bt),
        tuple(torch.tensor(v.astype(np.float64)) for v in (Rx, RW, Rb)))[1]
    assert rel_err(D.dense_jvp(x, W, Rx=Rx, RW=RW, Rb=Rb, Ry=np.empty_like(y)), ryt.numpy()) < TOL[dtype]
    # absent directions count as zero
    ry0 = D.dense_jvp(x, W, RW=RW, Ry=np.empty_like(y))
    assert rel_err(ry0, (x.astype(np.float64) @ RW.T.astype(np.float64))) < TOL[dtype]
    # R-op of the pullback: directional derivative of (gx, gW) along (Rx, RW, Rg)
    dirs = [torch.tensor(v.astype(np.float64)) for v in (Rx, RW, Rg)]
    Rgx_ref = (torch.tensor(Rg.astype(np.float64)) @ Wt + gt @ dirs[1]).detach().numpy()
    RgW_ref = (dirs[2].T @ xt + gt.T @ dirs[0]).detach().numpy()
    assert rel_err(D.dense_rvjp_x(W=W, g=g, RW=RW, Rg=Rg, Rgx=np.empty_like(x)), Rgx_ref) < TOL[dtype]
    assert rel_err(D.dense_rvjp_W(x=x, g=g, Rx=Rx, Rg=Rg, RgW=np.empty_like(W)), RgW_ref) < TOL[dtype]


def test_dense_kernel_shape_errors():
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match="dense_forward.*W"):
        D.dense_forward(x, np.zeros((5, 3)), np.zeros(5), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="2-D"):
        D.dense_forward(np.zeros(4), np.zeros((5, 4)), np.zeros(5), np.zeros((3, 5)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_cross_entropy_matches_torch(dtype, rng):
    n, k = 17, 9
    z = (rng.normal(size=(n, k)) * 30).astype(dtype)   # large logits: log-sum-exp must be stable
    y = rng.integers(0, k, n)
    v = rng.normal(size=(n, k)).astype(dtype)
    zt = torch.tensor(z.astype(np.float64), requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y))
    (gt,) = torch.autograd.grad(lt, zt, create_graph=True)
    (hvt,) = torch.autograd.grad(gt, zt, torch.tensor(v.astype(np.float64)))
    grad, probs = np.empty_like(z), np.empty_like(z)
    loss = LS.softmax_cross_entropy(z, y, grad, probs)
    assert abs(loss - lt.item()) / abs(lt.item()) < TOL[dtype]
    assert rel_err(grad, gt.detach().numpy()) < TOL[dtype]
    assert rel_err(LS.softmax_cross_entropy_hvp(probs, v, np.empty_like(z)), hvt.numpy()) < TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mse_matches_torch(dtype, rng):
    a, t, v = (rng.normal(size=(11, 3)).astype(dtype) for _ in range(3))
    at = torch.tensor(a.astype(np.float64), requires_grad=True)
    lt = torch.nn.functional.mse_loss(at, torch.tensor(t.astype(np.float64)))
    (gt,) = torch.autograd.grad(lt, at, create_graph=True)
    (hvt,) = torch.autograd.grad(gt, at, torch.tensor(v.astype(np.float64)))
    grad = np.empty_like(a)
    assert abs(LS.mse(a, t, grad) - lt.item()) / lt.item() < TOL[dtype]
    assert rel_err(grad, gt.detach().numpy()) < TOL[dtype]
    assert rel_err(LS.mse_hvp(a, t, v, np.empty_like(a)), hvt.numpy()) < TOL[dtype]


ACTS = {"tanh": (L.Tanh, torch.tanh), "sigmoid": (L.Sigmoid, torch.sigmoid),
        "relu": (L.ReLU, torch.relu), "softplus": (L.SoftPlus, lambda t: torch.nn.functional.softplus(t, threshold=100.0))}


def torch_mlp_grads(model, X, y, act, loss):
    params = [torch.tensor(p.astype(np.float64), requires_grad=True) for p in model.parameters()]
    h = torch_mlp(params, X, act)
    if loss == "mse":
        lt = torch.nn.functional.mse_loss(h, torch.tensor(y.astype(np.float64)))
    else:
        lt = torch.nn.functional.cross_entropy(h, torch.tensor(y))
    return lt.item(), [g.numpy() for g in torch.autograd.grad(lt, params)]


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mlp_loss_and_grad_matches_torch(act, loss, dtype):
    rng = np.random.default_rng(hash((act, loss)) % 2**32)
    n, d, h1, h2, k = 13, 7, 11, 6, 4
    layer, tact = ACTS[act]
    model = Sequential([L.Dense(d, h1), layer(), L.Dense(h1, h2), layer(), L.Dense(h2, k)],
                       loss=loss, dtype=dtype, seed=3)
    X = rng.normal(size=(n, d))
    y = rng.integers(0, k, n) if loss != "mse" else rng.normal(size=(n, k))
    lval, grads = model.loss_and_grad(X, y)
    lt, gts = torch_mlp_grads(model, X, y, tact, loss)
    tol = TOL[np.dtype(dtype).type]
    assert abs(lval - lt) / abs(lt) < tol
    assert len(grads) == len(model.parameters())
    for g, gt, p in zip(grads, gts, model.parameters()):
        assert g.shape == p.shape and g.dtype == p.dtype
        assert rel_err(g, gt) < tol
