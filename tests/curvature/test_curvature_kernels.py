"""The derived curvature kernels (bl:<array>, sqvjp:<param>) against the hand formulas they
replace and against per-sample PyTorch gradients; every role in every manifest is callable."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop.runtime.kernels import SpecKernels, load
from support.numeric import rel_err

GEO = dict(s_h=2, s_w=1, p_h=1, p_w=2, d_h=2, d_w=1)


def conv_case(rng, N=3):
    C, O, H, W_, k = 2, 3, 9, 7, (3, 2)
    x, W = rng.normal(size=(N, C, H, W_)), rng.normal(size=(O, C) + k)
    ho = (H + 2 * 1 - 2 * (3 - 1) - 1) // 2 + 1
    wo = (W_ + 2 * 2 - 1 * (2 - 1) - 1) // 1 + 1
    return x, W, rng.normal(size=O), rng.normal(size=(N, O, ho, wo))


def test_dense_bl_and_sqvjp_equal_the_formulas_they_replace():
    D = load("dense")
    rng = np.random.default_rng(0)
    x, W, h = rng.normal(size=(5, 4)), rng.normal(size=(3, 4)), rng.normal(size=(5, 3))
    e = np.empty_like
    assert rel_err(D.dense_bl_x(H=h, W=W, hx=e(x)), D.dense_vjp_x(W=W * W, g=h, gx=e(x))) < 1e-14
    assert rel_err(D.dense_bl_W(x=x, H=h, hW=e(W)), D.dense_vjp_W(x=x * x, g=h, gW=e(W))) < 1e-14
    S, w = rng.normal(size=(2, 5, 3)), np.sign(rng.normal(size=(2, 5)))
    want = sum(w[k, n] * np.outer(S[k, n], x[n]) ** 2 for k in range(2) for n in range(5))
    assert rel_err(D.dense_sqvjp_W(x, S, w, e(W)), want) < 1e-13
    want_b = sum(w[k, n] * S[k, n] ** 2 for k in range(2) for n in range(5))
    assert rel_err(D.dense_sqvjp_b(S, w, np.empty(3)), want_b) < 1e-13


def test_conv_bl_and_sqvjp_equal_formulas_and_torch_per_sample_gradients():
    K = load("window")
    rng = np.random.default_rng(1)
    x, W, b, h = conv_case(rng)
    e = np.empty_like
    assert rel_err(K.conv2d_bl_x(h, W, e(x), **GEO), K.conv2d_vjp_x(W * W, h, e(x), **GEO)) < 1e-13
    assert rel_err(K.conv2d_bl_W(h, x, e(W), **GEO), K.conv2d_vjp_W(x * x, h, e(W), **GEO)) < 1e-13
    S, w = rng.normal(size=(2,) + h.shape), np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -0.3]])
    want_W, want_b = np.zeros_like(W), np.zeros_like(b)
    for n in range(x.shape[0]):   # torch: per-sample gradients of <S[k,n], conv(x[n])>
        for k in range(2):
            Wt, bt = torch.tensor(W, requires_grad=True), torch.tensor(b, requires_grad=True)
            y = F.conv2d(torch.tensor(x[n:n + 1]), Wt, bt, stride=(2, 1), padding=(1, 2), dilation=(2, 1))
            gW, gb = torch.autograd.grad((y * torch.tensor(S[k, n:n + 1])).sum(), (Wt, bt))
            want_W += w[k, n] * gW.numpy() ** 2
            want_b += w[k, n] * gb.numpy() ** 2
    assert rel_err(K.conv2d_sqvjp_W(x, S, w, e(W), **GEO), want_W) < 1e-12
    assert rel_err(K.conv2d_sqvjp_b(S, w, e(b)), want_b) < 1e-12


def test_pool_bl_equal_formulas():
    K = load("window")
    rng = np.random.default_rng(2)
    geo = dict(s_h=2, s_w=2, p_h=1, p_w=0, K_h=3, K_w=2)
    x = rng.normal(size=(2, 3, 7, 6))
    y, M = K.maxpool2d_forward(x, np.empty((2, 3, 4, 3)), np.empty((2, 3, 4, 3), np.int16), **geo)
    h = rng.normal(size=y.shape)
    e = np.empty_like
    assert rel_err(K.maxpool2d_bl_x(h, M, e(x), **geo), K.maxpool2d_vjp_x(h, M, e(x), **geo)) < 1e-15
    assert rel_err(K.avgpool2d_bl_x(h, e(x), **geo), K.avgpool2d_vjp_x(h, e(x), **geo) / 6) < 1e-14


MODULES = {"activations": None, "dense": None, "window": None, "learnable": None}   # activations holds the masks too


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_manifest_role_names_a_kernel_with_its_arguments(module):
    mod = load(module)
    for spec, entry in mod.MANIFEST.items():
        K = SpecKernels(mod, spec)
        for role, r in entry["roles"].items():
            fn = getattr(mod, r["kernel"])
            assert callable(fn), (spec, role)
            assert set(r["optional"]) <= set(r["arrays"]) and set(r["arrays"]) <= set(r["call"])
            assert all(o["name"] in r["call"] for o in r["outputs"]), (spec, role)
        if entry["params"]:
            for p in entry["params"]:
                assert {f"vjp:{p}", f"rvjp:{p}", f"sqvjp:{p}"} <= set(entry["roles"]), (spec, p)
        assert K.has("forward") and K.has(f"vjp:{K.input}") and K.has("jvp")
