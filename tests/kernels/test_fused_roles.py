"""Fused second-order roles (forward+jvp, vjp+rvjp, vjp+rvjp:params) against the separate
roles they fuse, and the forward-over-reverse HVP against PyTorch double backward, on random
shapes, geometries (stride, padding, dilation) and seeds."""
import numpy as np
import pytest

from symprop import Sequential, layers as L
from symprop import optimizers as O
from symprop.runtime.activation import names as activation_names
from symprop.runtime.curvature import hutchinson, rademacher
from symprop.runtime.kernels import FORWARD_JVP, VJP_RVJP, VJP_RVJP_PARAMS, SpecKernels
from symprop.runtime.layer_base import Layer

from support.torch_oracles import torch_hvp
from support.numeric import rel_err


def _close(a, b, tol):
    if a is None or b is None:
        assert a is None and b is None or np.all((a if a is not None else b) == 0)
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    assert rel_err(a, b) <= tol, rel_err(a, b)


def check_layer(layer, x, Rx, Rp, rng, tol):
    """Fused forward+jvp and vjp+rvjp (with and without the input pullback) equal the
    separate roles (Layer's generic composition of forward/jvp and vjp/rvjp)."""
    y, Ry, rec = layer.forward_jvp(x, Rx, Rp)
    y0, Ry0, rec0 = Layer.forward_jvp(layer, x, Rx, Rp)
    _close(y, y0, min(tol, 1e-14))
    _close(Ry, Ry0, tol)
    g = rng.normal(size=y.shape).astype(x.dtype)
    Rg = rng.normal(size=y.shape).astype(x.dtype)
    for need_input in (True, False):
        got = layer.vjp_rvjp(rec, g, Rg, Rx, Rp, need_input)
        want = Layer.vjp_rvjp(layer, rec0, g, Rg, Rx, Rp, need_input)
        _close(got[0], want[0], tol)
        _close(got[2], want[2], tol)
        for a, b in zip(got[1] + got[3], want[1] + want[3]):
            _close(a, b, tol)


def _directions(layer, rng, dtype, drop):
    """Random parameter directions, some left out (None = zero) when ``drop``."""
    return [None if drop and rng.random() < 0.4 else rng.normal(size=p.shape).astype(dtype)
            for p in layer.parameters()]


@pytest.mark.parametrize("seed", range(12))
def test_conv2d_fused_equals_separate(seed):
    rng = np.random.default_rng(seed)
    kh, kw = (int(k) for k in rng.integers(1, 4, 2))
    stride = tuple(int(s) for s in rng.integers(1, 3, 2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
    padding = tuple(int(p) for p in rng.integers(0, 3, 2))
    C, O, N = (int(a) for a in rng.integers(1, 4, 3))
    H, W = (int(a) for a in rng.integers(5, 10, 2))
    dtype = np.float64 if seed % 3 else np.float32
    layer = L.Conv2D(C, O, (kh, kw), stride=stride, padding=padding, dilation=dilation, bias=bool(seed % 4))
    layer.init_parameters(dtype, rng)
    assert all(layer.kernels.has(r) for r in (FORWARD_JVP, VJP_RVJP, VJP_RVJP_PARAMS))
    x = rng.normal(size=(N, C, H, W)).astype(dtype)
    Rx = None if seed % 5 == 0 else rng.normal(size=x.shape).astype(dtype)
    check_layer(layer, x, Rx, _directions(layer, rng, dtype, seed % 2), rng, 1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_dense_fused_equals_separate(seed):
    rng = np.random.default_rng(100 + seed)
    n_in, n_out, N = (int(a) for a in rng.integers(1, 12, 3))
    dtype = np.float64 if seed % 2 else np.float32
    layer = L.Dense(n_in, n_out, bias=bool(seed % 3))
    layer.init_parameters(dtype, rng)
    x = rng.normal(size=(N, n_in)).astype(dtype)
    Rx = None if seed == 0 else rng.normal(size=x.shape).astype(dtype)
    check_layer(layer, x, Rx, _directions(layer, rng, dtype, seed > 2), rng, 1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("pool", [L.MaxPool2D, L.AvgPool2D])
@pytest.mark.parametrize("seed", range(4))
def test_pool_fused_equals_separate(pool, seed):
    rng = np.random.default_rng(200 + seed)
    k = tuple(int(a) for a in rng.integers(1, 4, 2))
    stride = tuple(int(a) for a in rng.integers(1, 3, 2))
    padding = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    layer = pool(k, stride=stride, padding=padding)
    assert layer.kernels.has(FORWARD_JVP) and layer.kernels.has(VJP_RVJP)
    x = rng.normal(size=(2, 3, 7, 6))
    check_layer(layer, x, rng.normal(size=x.shape), [], rng, 1e-13)


@pytest.mark.parametrize("name", activation_names())
def test_activation_fused_equals_separate(name):
    rng = np.random.default_rng(len(name))
    layer = L.Activation(name)
    assert layer.kernels.has(FORWARD_JVP) and layer.kernels.has(VJP_RVJP)
    x = rng.normal(size=(4, 9)) * 3
    check_layer(layer, x, rng.normal(size=x.shape), [], rng, 1e-12)


def test_executor_falls_back_without_fused_roles():
    """A module without fused roles (generated before them) runs the separate roles."""
    rng = np.random.default_rng(7)
    layer = L.Conv2D(2, 3, 3, padding=1)
    layer.init_parameters(np.float64, rng)
    x, Rx = rng.normal(size=(2, 2, 5, 5)), rng.normal(size=(2, 2, 5, 5))
    Rp = _directions(layer, rng, np.float64, False)
    y, Ry, rec = layer.forward_jvp(x, Rx, Rp)
    stripped = SpecKernels(layer.kernels.module, "conv2d", owner=layer.name)
    for r in (FORWARD_JVP, VJP_RVJP, VJP_RVJP_PARAMS):
        del stripped.roles[r]
    fused, layer.kernels = layer.kernels, stripped
    try:
        y1, Ry1, rec1 = layer.forward_jvp(x, Rx, Rp)
        g = rng.normal(size=y.shape)
        got = layer.vjp_rvjp(rec1, g, g, Rx, Rp)
    finally:
        layer.kernels = fused
    want = layer.vjp_rvjp(rec, g, g, Rx, Rp)
    _close(y1, y, 1e-14)
    _close(Ry1, Ry, 1e-12)
    for a, b in zip([got[0], got[2]] + got[1] + got[3], [want[0], want[2]] + want[1] + want[3]):
        _close(a, b, 1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_forward_over_reverse_hvp_matches_torch(seed):
    """Random CNNs (conv geometry, pooling kind, activation) through the fused sweeps."""
    rng = np.random.default_rng(300 + seed)
    C, O = (int(a) for a in rng.integers(1, 4, 2))
    k = tuple(int(a) for a in rng.integers(1, 4, 2))
    stride = tuple(int(a) for a in rng.integers(1, 3, 2))
    dilation = tuple(int(a) for a in rng.integers(1, 3, 2))
    padding = tuple(int(a) for a in rng.integers(0, 3, 2))
    act = ["tanh", "sigmoid", "softplus", "relu"][seed % 4]
    pool = (L.MaxPool2D if seed % 2 else L.AvgPool2D)(2, padding=1)
    layers = [L.Conv2D(C, O, k, stride=stride, padding=padding, dilation=dilation, bias=bool(seed % 3)),
              L.Activation(act), pool, L.Flatten()]
    probe = Sequential(layers, dtype="float64", input_shape=(C, 9, 8))
    n = probe.output_shape[0]
    model = Sequential(layers + [L.Dense(n, 5), L.Activation(act), L.Dense(5, 3)], dtype="float64",
                       input_shape=(C, 9, 8), seed=seed)
    N = int(rng.integers(1, 5))
    X, y = rng.normal(size=(N, C, 9, 8)), rng.integers(0, 3, N)
    v = [rng.normal(size=p.shape) for p in model.parameters()]
    loss, grads, hv = model.hvp(X, y, v, return_grad=True)
    _, tg, thv = torch_hvp(model, X, y, v)
    for a, b in zip(grads, tg):
        assert rel_err(a, b) < 1e-10
    for a, b in zip(hv, thv):
        assert rel_err(a, b) < 1e-9, rel_err(a, b)
    # the tape it leaves serves further R-op passes as trace + backward would
    tape, _, _ = model.forward_over_reverse(X, y, v)
    for a, b in zip(model.rop(tape, v), hv):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("n_samples", [1, 3])
def test_adahessian_estimate_equals_separate_passes(n_samples):
    """AdaHessian's one-sweep estimate equals trace + backward + Hutchinson R-op passes with
    the same probes."""
    rng = np.random.default_rng(11)
    model = Sequential([L.Conv2D(1, 3, 3, padding=1), L.Tanh(), L.MaxPool2D(2), L.Flatten(),
                        L.Dense(18, 4), L.SoftPlus(), L.Dense(4, 3)], dtype="float64", input_shape=(1, 4, 6))
    X, y = rng.normal(size=(5, 1, 4, 6)), rng.integers(0, 3, 5)
    opt = O.AdaHessian(seed=3, n_samples=n_samples, average_conv_kernel=False)
    loss, grads, D, _ = opt.estimate(model, X, y)
    tape = model.trace(X, y, checked=True)
    grads0 = model.backward(tape, keep_output_grads=True)
    D0 = hutchinson(model, tape, n_samples, np.random.default_rng(3))
    assert loss == pytest.approx(tape.loss, rel=1e-14)
    for a, b in zip(grads + D, grads0 + D0):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rademacher_signs_are_the_generators_bits(dtype):
    """Each probe entry is 2·bit − 1 of the generator's bytes, most significant bit first, for
    sizes that are and are not multiples of eight (the table lookup keeps the bit stream)."""
    params = [np.zeros((3, 5), dtype), np.zeros(8, dtype), np.zeros(1, dtype)]
    got = rademacher(params, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    for p, v in zip(params, got):
        bits = np.unpackbits(np.frombuffer(rng.bytes((p.size + 7) // 8), np.uint8), count=p.size)
        assert v.dtype == dtype and v.shape == p.shape and v.flags.c_contiguous
        assert np.array_equal(v.reshape(-1), 2.0 * bits - 1)
