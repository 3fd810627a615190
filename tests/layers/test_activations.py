"""Every built-in activation: f, f', f'' against PyTorch autograd and float64 finite differences."""
import numpy as np
import pytest
import torch

from symprop import layers as L
from symprop.runtime.kernels import SpecKernels, load
from support.torch_oracles import TORCH_ACTIVATIONS as TORCH, check_hvp_against_torch
from support.numeric import rel_err

A = load("activations")
ROLES = {"forward": "forward", "vjp": "vjp:x", "jvp": "jvp", "rvjp": "rvjp:x", "curv": "curv:x",
         "bl": "bl:x"}


def run(name, which, **arrays):
    """One role of a registered activation, through the manifest executor."""
    x = next(iter(arrays.values()))
    K = SpecKernels(A, name)
    return K.run(ROLES[which], arrays, x.dtype, K.entry["defaults"], {"x": x.shape, "y": x.shape})


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


FAR = np.array([1e-3, 0.5, 3.0, 20.0, 88.0, 88.8, 89.0, 100.0, 1e3, 1e4])


@pytest.mark.parametrize("name", sorted(TORCH))
def test_float32_is_finite_and_accurate_up_to_1e4(name):
    """f, f' and f'' in float32 stay finite and within 1e-6 (relative to max(|ref|, 1)) of
    float64 PyTorch autograd for |x| up to 1e4, far past exp's overflow at 88.7."""
    x64 = np.concatenate([-FAR[::-1], FAR])
    x32 = x64.astype(np.float32)
    xt = torch.tensor(x64, requires_grad=True)
    yt = TORCH[name](xt)
    (d1,) = torch.autograd.grad(yt.sum(), xt, create_graph=True)
    d2 = torch.autograd.grad(d1.sum(), xt)[0] if d1.requires_grad else torch.zeros_like(xt)
    ones, zeros = np.ones_like(x32), np.zeros_like(x32)
    y = run(name, "forward", x=x32)
    got = {"f": y, "f'": run(name, "vjp", x=x32, y=y, g=ones),
           "f''": run(name, "rvjp", x=x32, y=y, g=ones, Rx=ones, Rg=zeros)}
    want = {"f": yt.detach().numpy(), "f'": d1.detach().numpy(), "f''": d2.numpy()}
    # where the float64 textbook overflows (exp(1000)), a 50-digit mpmath reference of SymPy's
    # own derivatives of the spec
    import mpmath
    import sympy as sp
    from symprop.derive.builtins import ACTIVATIONS
    from symprop.derive.rewrite import clean_distributions
    spec = ACTIVATIONS[name]
    e = spec.expr.subs({sp.Symbol(p): d for p, d in spec.params})
    exprs = {"f": e, "f'": clean_distributions(sp.diff(e, spec.var))}
    exprs["f''"] = clean_distributions(sp.diff(exprs["f'"], spec.var))
    for k, ex in exprs.items():
        bad = ~np.isfinite(want[k])
        if bad.any():
            fn = sp.lambdify(spec.var, ex, modules="mpmath")
            with mpmath.workdps(50):
                want[k][bad] = [float(fn(mpmath.mpf(float(v)))) for v in x64[bad]]
    for k in got:
        assert np.isfinite(got[k]).all(), (name, k, x64[~np.isfinite(got[k])])
        err = np.abs(got[k] - want[k]) / np.maximum(np.abs(want[k]), 1.0)
        assert err.max() < 1e-6, (name, k, x64[err.argmax()], got[k][err.argmax()], want[k][err.argmax()])
    for which in ("curv", "bl"):
        if which == "curv" and "curv:x" not in SpecKernels(A, name).roles:
            continue
        out = run(name, which, x=x32, y=y, g=ones, H=ones)
        assert np.isfinite(out).all(), (name, which)


TORCH_LAYERS = [
    (lambda: L.LeakyReLU(0.2), lambda t: torch.nn.functional.leaky_relu(t, 0.2)),
    (lambda: L.ELU(0.7), lambda t: torch.nn.functional.elu(t, 0.7)),
    (L.SiLU, torch.nn.functional.silu),
    (lambda: L.Swish(1.7), lambda t: t * torch.sigmoid(1.7 * t)),
    (L.GELU, torch.nn.functional.gelu),
    (L.Mish, torch.nn.functional.mish),
]


@pytest.mark.parametrize("make,tfn", TORCH_LAYERS, ids=["leaky_relu", "elu", "silu", "swish", "gelu", "mish"])
def test_parameterized_activation_layers_match_torch(make, tfn):
    """Loss, gradients and HVP of an MLP with the activation (its PyTorch functional)."""
    from symprop import Sequential
    rng = np.random.default_rng(3)
    model = Sequential([L.Dense(4, 6), make(), L.Dense(6, 3)], dtype="float64", seed=1)
    X, y = rng.normal(size=(9, 4)) * 2, rng.integers(0, 3, 9)
    v = [rng.normal(size=p.shape) for p in model.parameters()]
    F = torch.nn.functional
    check_hvp_against_torch(model, X, y, v, lambda pt: F.cross_entropy(
        F.linear(tfn(F.linear(torch.tensor(X), pt[0], pt[1])), pt[2], pt[3]), torch.tensor(y)))
    # exact and Gauss-Newton diagonals through it equal the full Hessian's / are finite
    d = model.hessian_diagonal(X, y, "hutchinson", samples=3, seed=0)
    assert all(np.isfinite(a).all() for a in d)


def test_activation_parameters_are_checked_and_checkpointed(tmp_path):
    from symprop import Sequential
    with pytest.raises(TypeError, match=r"leaky_relu.*unknown parameter.*beta.*alpha"):
        L.Activation("leaky_relu", params={"beta": 1.0})
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        L.LeakyReLU(float("nan"))
    m = Sequential([L.Dense(3, 4), L.ELU(0.3), L.Dense(4, 2)], dtype="float64")
    m.save(tmp_path / "m.npz")
    back = Sequential.load(tmp_path / "m.npz")
    assert back.layers[1].params == {"alpha": 0.3}
    X = np.random.default_rng(0).normal(size=(3, 3))
    assert np.array_equal(back.forward(X), m.forward(X))
