"""Every built-in activation: f, f', f'' against PyTorch autograd and float64 finite differences."""
import numpy as np
import pytest
import torch

from symprop import layers as L
from symprop.runtime.kernels import SpecKernels, load
from conftest import TORCH_ACTIVATIONS as TORCH, rel_err

A = load("activations")
ROLES = {"forward": "forward", "vjp": "vjp:x", "jvp": "jvp", "rvjp": "rvjp:x", "residual": "residual",
         "diag_backprop": "bl:x"}


def run(name, which, **arrays):
    """One role of a registered activation, through the manifest executor."""
    x = next(iter(arrays.values()))
    return SpecKernels(A, name).run(ROLES[which], arrays, x.dtype, {}, {"x": x.shape, "y": x.shape})


def test_registry_is_the_spec_table():
    """The compiled registry and the spec table agree: one line in derive/builtins.py is all."""
    from symprop.derive.builtins import ACTIVATIONS
    assert sorted(L.activation_names()) == sorted(ACTIVATIONS) == sorted(TORCH)


def points(rng, dtype):
    x = np.concatenate([rng.uniform(-50, 50, 300), rng.normal(0, 2, 300), [-50, -30, 30, 50]])
    x = x[np.abs(x) > 1e-3]   # away from ReLU's kink
    return x.astype(dtype)


@pytest.mark.parametrize("name", sorted(TORCH))
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_forward_first_and_second_derivative_match_torch(name, dtype, tol, rng):
    x = points(rng, dtype)
    g = rng.normal(size=x.shape).astype(dtype)
    rx = rng.normal(size=x.shape).astype(dtype)
    rg = rng.normal(size=x.shape).astype(dtype)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = TORCH[name](xt)
    (d1,) = torch.autograd.grad(yt.sum(), xt, create_graph=True)
    d2 = torch.autograd.grad(d1.sum(), xt)[0] if d1.requires_grad else torch.zeros_like(xt)
    y = run(name, "forward", x=x)
    assert rel_err(y, yt.detach().numpy()) < tol
    assert np.isfinite(y).all()
    gx = run(name, "vjp", x=x, y=y, g=g)
    assert rel_err(gx, g * d1.detach().numpy()) < tol
    ry = run(name, "jvp", x=x, y=y, Rx=rx)
    assert rel_err(ry, rx * d1.detach().numpy()) < tol
    rgx = run(name, "rvjp", x=x, y=y, g=g, Rx=rx, Rg=rg)
    ref = d2.numpy() * rx * g + d1.detach().numpy() * rg
    assert rel_err(rgx, ref) < tol


@pytest.mark.parametrize("name", sorted(TORCH))
def test_derivatives_match_finite_differences(name, rng):
    x = rng.uniform(-6, 6, 200)
    x = x[np.abs(x) > 1e-2]
    h = 1e-6
    f = lambda v: run(name, "forward", x=v)  # noqa: E731
    ones = np.ones_like(x)
    d1 = run(name, "vjp", x=x, y=f(x), g=ones)
    fd1 = (f(x + h) - f(x - h)) / (2 * h)
    assert np.max(np.abs(d1 - fd1)) < 1e-7
    d2 = run(name, "rvjp", x=x, y=f(x), g=ones, Rx=ones, Rg=np.zeros_like(x))
    d1f = lambda v: run(name, "vjp", x=v, y=f(v), g=ones)  # noqa: E731
    fd2 = (d1f(x + h) - d1f(x - h)) / (2 * h)
    assert np.max(np.abs(d2 - fd2)) < 1e-6


def test_kernels_reject_bad_arrays():
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="tanh_forward"):
        A.tanh_forward(x, np.zeros(4, np.float64))
    with pytest.raises(ValueError, match="tanh_forward.*shape"):
        A.tanh_forward(x, np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="dtype int64"):
        A.tanh_forward(np.zeros(4, np.int64), np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="C-contiguous"):
        A.tanh_forward(np.zeros(8, np.float32)[::2], np.zeros(4, np.float32))


def test_rewriter_uses_saved_output_and_records_op_counts():
    from symprop.derive import builtins, derive_elementwise
    import sympy as sp
    y = sp.Symbol("y")
    t = derive_elementwise(builtins.TANH)
    assert sp.simplify(t.d1.chosen - (1 - y**2)) == 0
    s = derive_elementwise(builtins.SIGMOID)
    assert sp.simplify(s.d1.chosen - y * (1 - y)) == 0
    for d in (t, s):
        for c in (d.d1, d.d2):
            assert c.cost_after <= c.cost_before
    r = derive_elementwise(builtins.RELU)
    assert r.d2.chosen == 0 and not r.d1.chosen.has(sp.Heaviside, sp.DiracDelta)
    sp_ = derive_elementwise(builtins.SOFTPLUS)
    assert not sp_.forward.chosen.has(sp.log) or "log1p" in str(sp_.forward.chosen)
