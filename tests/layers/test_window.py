"""Conv2D and pooling: derived adjoints and generated kernels against PyTorch autograd."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop import Sequential, layers as L
from symprop.runtime import conv_lowering
from symprop.runtime.kernels import load

K = load("window")   # the loader binds table kernels to the dispatcher
from support.torch_oracles import torch_forward
from support.numeric import rel_err

TOL = {np.float64: 1e-9, np.float32: 1e-4}
T64 = lambda a: torch.tensor(np.asarray(a, np.float64), requires_grad=True)  # noqa: E731

# (N, C_in, C_out, H, W, kernel, stride, padding, dilation): strides 2 and 3, padding 0/1/2,
# dilation 2, non-square kernels, batch 1, 1 and 3 channels, last windows that do not fit
CONV_GRID = [
    (1, 1, 2, 7, 7, (3, 3), (1, 1), (0, 0), (1, 1)),
    (2, 3, 4, 9, 8, (3, 2), (2, 3), (1, 2), (2, 1)),
    (3, 3, 5, 11, 10, (2, 3), (3, 2), (2, 1), (1, 2)),
    (1, 3, 2, 8, 9, (5, 3), (2, 2), (2, 0), (1, 1)),
    (2, 1, 3, 10, 7, (3, 3), (3, 3), (1, 1), (2, 2)),
    (2, 2, 2, 6, 6, (1, 1), (2, 2), (0, 0), (1, 1)),
    # im2col's copy paths: rows of 10 (two overlapping vector moves), 'same' padding at stride 1
    # (one long copy per block), rows of 24, stride 1 with column padding and dilation
    (2, 2, 3, 14, 14, (5, 5), (1, 1), (0, 0), (1, 1)),
    (2, 1, 2, 12, 12, (5, 5), (1, 1), (2, 2), (1, 1)),
    (1, 2, 2, 9, 26, (3, 3), (1, 1), (1, 0), (1, 1)),
    (1, 2, 2, 8, 11, (3, 3), (1, 1), (0, 2), (2, 1)),
    # the one-long-copy path ('same' output width at stride 1) with dilation 2
    (2, 2, 3, 10, 9, (3, 3), (1, 1), (2, 2), (2, 2)),
    # the direct lowering's tiles: rows wider than one tile with a tail (37), channel blocks of 4
    # with a tail (9 and 6 outputs, 9 inputs), weight-pullback channel vectors past 16 (19 and 33),
    # stride 2 down the rows only (direct forward, im2col input pullback), padding wider than the
    # kernel reaches (cropping in the pullback's padded cotangent)
    (2, 3, 9, 5, 37, (2, 4), (1, 1), (1, 2), (1, 1)),
    (1, 9, 6, 12, 20, (3, 3), (1, 1), (1, 1), (2, 1)),
    (2, 2, 19, 6, 17, (3, 2), (2, 1), (1, 0), (1, 2)),
    (1, 4, 33, 4, 9, (1, 3), (1, 1), (2, 3), (1, 1)),
    # >= 64 output channels over >= 256 taps: a direct forward beside a GEMM weight pullback
    (2, 29, 64, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1)),
]


def geo_conv(s, p, d):
    return dict(s_h=s[0], s_w=s[1], p_h=p[0], p_w=p[1], d_h=d[0], d_w=d[1])


@pytest.mark.parametrize("lowering", ["direct", "im2col"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CONV_GRID)
def test_conv2d_kernels_match_torch(case, dtype, lowering):
    with conv_lowering.using(lowering):
        _conv2d_kernels_match_torch(case, dtype)


def _conv2d_kernels_match_torch(case, dtype):
    N, C, O, H, W_, k, s, p, d = case
    rng = np.random.default_rng(sum(case[:5]))
    x, W, b = (rng.normal(size=sh).astype(dtype) for sh in ((N, C, H, W_), (O, C) + k, (O,)))
    xt, Wt, bt = T64(x), T64(W), T64(b)
    yt = F.conv2d(xt, Wt, bt, stride=s, padding=p, dilation=d)
    geo = geo_conv(s, p, d)
    y = K.conv2d_forward(x, W, b, np.empty(yt.shape, dtype), **geo)
    tol = TOL[dtype]
    assert rel_err(y, yt.detach().numpy()) < tol
    g = rng.normal(size=y.shape).astype(dtype)
    gt = T64(g)
    gxt, gWt, gbt = torch.autograd.grad(yt, (xt, Wt, bt), gt, create_graph=True)
    assert rel_err(K.conv2d_vjp_x(W, g, np.empty_like(x), **geo), gxt.detach().numpy()) < tol
    assert rel_err(K.conv2d_vjp_W(x, g, np.empty_like(W), **geo), gWt.detach().numpy()) < tol
    assert rel_err(K.conv2d_vjp_b(g, np.empty_like(b)), gbt.detach().numpy()) < tol
    # second order: pushforward and the R-op of each pullback (torch double backward)
    Rx, RW, Rb, Rg = (rng.normal(size=a.shape).astype(dtype) for a in (x, W, b, g))
    ryt = torch.autograd.functional.jvp(lambda a, w, c: F.conv2d(a, w, c, stride=s, padding=p, dilation=d),
                                        (xt, Wt, bt), tuple(torch.tensor(v.astype(np.float64)) for v in (Rx, RW, Rb)))[1]
    assert rel_err(K.conv2d_jvp(x, W, Rx=Rx, RW=RW, Rb=Rb, Ry=np.empty_like(y), **geo), ryt.numpy()) < tol
    # d/dε of (gx, gW) along (Rx, RW, Rg): the bilinear cross terms
    Rg_t = torch.tensor(Rg.astype(np.float64))
    gx_dir = torch.autograd.grad(yt, xt, Rg_t, retain_graph=True)[0] + \
        torch.autograd.grad(F.conv2d(xt, torch.tensor(RW.astype(np.float64)), None, s, p, d), xt, gt, retain_graph=True)[0]
    gW_dir = torch.autograd.grad(yt, Wt, Rg_t, retain_graph=True)[0] + \
        torch.autograd.grad(F.conv2d(torch.tensor(Rx.astype(np.float64)), Wt, None, s, p, d), Wt, gt, retain_graph=True)[0]
    assert rel_err(K.conv2d_rvjp_x(W, g, RW=RW, Rg=Rg, Rgx=np.empty_like(x), **geo), gx_dir.detach().numpy()) < tol
    assert rel_err(K.conv2d_rvjp_W(x, g, Rx=Rx, Rg=Rg, RgW=np.empty_like(W), **geo), gW_dir.detach().numpy()) < tol
    assert rel_err(K.conv2d_rvjp_b(Rg=Rg, Rgb=np.empty_like(b)), Rg.astype(np.float64).sum(axis=(0, 2, 3))) < tol


POOL_GRID = [((2, 2), None, (0, 0)), ((3, 2), (2, 1), (1, 1)), ((3, 3), (3, 2), (1, 0)), ((2, 3), (1, 2), (1, 0)),
             ((1, 1), (2, 2), (0, 0))]


def geo_pool(k, s, p):
    s = s or k
    return dict(s_h=s[0], s_w=s[1], p_h=p[0], p_w=p[1], K_h=k[0], K_w=k[1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("pool", POOL_GRID)
def test_pooling_matches_torch(pool, ties, dtype):
    k, s, p = pool
    rng = np.random.default_rng(7)
    for N, C, H, W_ in ((1, 1, 7, 7), (2, 3, 9, 8)):
        # with ties: small integers, so most windows hold several maxima
        x = (rng.integers(0, 3, (N, C, H, W_)) if ties else rng.normal(size=(N, C, H, W_))).astype(dtype)
        geo = geo_pool(k, s, p)
        tol = TOL[dtype]
        for kind in ("max", "avg"):
            xt = T64(x)
            yt = (F.max_pool2d if kind == "max" else F.avg_pool2d)(xt, k, s or k, p)
            g = rng.normal(size=tuple(yt.shape)).astype(dtype)
            (gxt,) = torch.autograd.grad(yt, xt, torch.tensor(g.astype(np.float64)))
            Rx = rng.normal(size=x.shape).astype(dtype)
            if kind == "max":
                y, M = K.maxpool2d_forward(x, np.empty(yt.shape, dtype), np.empty(yt.shape, np.int16), **geo)
                gx = K.maxpool2d_vjp_x(g, M, np.empty_like(x), **geo)
                ry = K.maxpool2d_jvp(Rx=Rx, M=M, Ry=np.empty_like(y), **geo)
                rgx = K.maxpool2d_rvjp_x(Rg=g, M=M, Rgx=np.empty_like(x), **geo)
                # PyTorch's own argmax (flat index into the input plane) picks the same element
                _, idx = F.max_pool2d(xt, k, s or k, p, return_indices=True)
                st = s or k
                hh, ww = np.meshgrid(np.arange(y.shape[2]), np.arange(y.shape[3]), indexing="ij")
                u = hh * st[0] + M // k[1] - p[0]
                v = ww * st[1] + M % k[1] - p[1]
                assert np.array_equal(u * W_ + v, idx.numpy())
            else:
                y = K.avgpool2d_forward(x, np.empty(yt.shape, dtype), **geo)
                gx = K.avgpool2d_vjp_x(g, np.empty_like(x), **geo)
                ry = K.avgpool2d_jvp(Rx=Rx, Ry=np.empty_like(y), **geo)
                rgx = K.avgpool2d_rvjp_x(Rg=g, Rgx=np.empty_like(x), **geo)
            assert rel_err(y, yt.detach().numpy()) < tol
            assert rel_err(gx, gxt.numpy()) < tol
            # linear (a.e.): the pushforward is the same map on Rx, the R-op of the pullback the pullback of Rg
            ryt = torch.autograd.functional.jvp(
                lambda a: (F.max_pool2d if kind == "max" else F.avg_pool2d)(a, k, s or k, p),
                (xt,), (torch.tensor(Rx.astype(np.float64)),))[1]
            assert rel_err(ry, ryt.numpy()) < tol
            assert rel_err(rgx, gxt.numpy()) < tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_maxpool_random_geometries_nan_match_torch(dtype):
    """The max-pool kernels' interior fast paths and border code on random geometries (2x2/2
    planes of odd size too), with ties and NaNs: y and the argmax match torch's max_pool2d
    (first maximum wins, a later NaN replaces an earlier one), the pullbacks scatter to it, and
    the fused kernels equal the separate ones."""
    rng = np.random.default_rng(18)
    # windows that tile the input (the scatter writes each element once) for several kernel
    # widths, then random geometries
    geos = [((2, 2), (2, 2), (0, 0))] * 3 + [((3, 3), (3, 3), (0, 0)), ((1, 1), (1, 1), (0, 0)),
                                              ((3, 2), (3, 2), (0, 0))] + [None] * 17
    for geo_ in geos:
        if geo_ is None:
            k = tuple(int(a) for a in rng.integers(1, 5, 2))
            s = tuple(int(a) for a in rng.integers(1, 5, 2))
            p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        else:
            k, s, p = geo_
        N, C = 2, 3
        H, W_ = (int(a) for a in rng.integers(max(k) + 1, 24, 2))
        x = (rng.integers(0, 4, (N, C, H, W_)) if rng.random() < 0.3 else rng.normal(size=(N, C, H, W_))).astype(dtype)
        x.reshape(-1)[rng.choice(x.size, max(1, x.size // 40), replace=False)] = np.nan
        x.reshape(-1)[rng.choice(x.size, max(1, x.size // 40), replace=False)] = -np.inf
        geo = geo_pool(k, s, p)
        yt, idx = F.max_pool2d(torch.tensor(x), k, s, p, return_indices=True)
        y, M = K.maxpool2d_forward(x, np.empty(yt.shape, dtype), np.empty(yt.shape, np.int16), **geo)
        assert np.array_equal(y, yt.numpy(), equal_nan=True), (k, s, p, H, W_)
        hh, ww = np.meshgrid(np.arange(y.shape[2]), np.arange(y.shape[3]), indexing="ij")
        u, v = hh * s[0] + M // k[1] - p[0], ww * s[1] + M % k[1] - p[1]
        assert np.array_equal(u * W_ + v, idx.numpy()), (k, s, p, H, W_)
        g, Rg = (rng.normal(size=y.shape).astype(dtype) for _ in range(2))
        Rx = rng.normal(size=x.shape).astype(dtype)
        gx = K.maxpool2d_vjp_x(g, M, np.full_like(x, 7), **geo)
        ref = np.zeros((N, C, H * W_))
        np.add.at(ref, (np.arange(N)[:, None, None], np.arange(C)[None, :, None], idx.numpy().reshape(N, C, -1)),
                  g.reshape(N, C, -1))
        assert rel_err(gx, ref.reshape(x.shape)) < TOL[dtype]
        y2, Ry, M2 = K.maxpool2d_forward_jvp(x, Rx, np.empty_like(y), np.full_like(y, 7), np.empty_like(M), **geo)
        assert np.array_equal(y2, y, equal_nan=True) and np.array_equal(M2, M)
        assert np.array_equal(Ry, np.take_along_axis(Rx.reshape(N, C, -1), idx.numpy().reshape(N, C, -1), 2).reshape(y.shape))
        _, Ry0, _ = K.maxpool2d_forward_jvp(x, None, np.empty_like(y), np.full_like(y, 7), np.empty_like(M), **geo)
        assert not Ry0.any()
        gx2, Rgx = K.maxpool2d_vjp_rvjp(g, Rg, M, np.full_like(x, 7), np.full_like(x, 7), **geo)
        assert np.array_equal(gx2, gx) and np.array_equal(Rgx, K.maxpool2d_vjp_x(Rg, M, np.empty_like(x), **geo))
        _, Rgx0 = K.maxpool2d_vjp_rvjp(g, None, M, np.full_like(x, 7), np.full_like(x, 7), **geo)
        assert not Rgx0.any()


def test_conv2d_finite_differences():
    rng = np.random.default_rng(3)
    x, W, b = rng.normal(size=(2, 2, 6, 5)), rng.normal(size=(3, 2, 3, 2)), rng.normal(size=3)
    geo = geo_conv((2, 1), (1, 1), (1, 2))
    y0 = K.conv2d_forward(x, W, b, np.empty((2, 3, 3, 5)), **geo)
    g = rng.normal(size=y0.shape)
    gx = K.conv2d_vjp_x(W, g, np.empty_like(x), **geo)
    gW = K.conv2d_vjp_W(x, g, np.empty_like(W), **geo)
    f = lambda xx, WW: float((K.conv2d_forward(xx, WW, b, np.empty_like(y0), **geo) * g).sum())  # noqa: E731
    eps = 1e-6
    for arr, grad, which in ((x, gx, 0), (W, gW, 1)):
        for _ in range(8):
            idx = tuple(rng.integers(0, n) for n in arr.shape)
            e = np.zeros_like(arr)
            e[idx] = eps
            args_p = (x + e, W) if which == 0 else (x, W + e)
            args_m = (x - e, W) if which == 0 else (x, W - e)
            fd = (f(*args_p) - f(*args_m)) / (2 * eps)
            assert abs(fd - grad[idx]) < 1e-7 * max(1.0, abs(fd))


def test_window_kernel_errors_name_kernel_and_shapes():
    x, W, b = np.zeros((2, 3, 8, 8)), np.zeros((4, 3, 3, 3)), np.zeros(4)
    geo = geo_conv((1, 1), (0, 0), (1, 1))
    with pytest.raises(ValueError, match=r"conv2d_forward: output extent 7 does not match H_out"):
        K.conv2d_forward(x, W, b, np.zeros((2, 4, 7, 6)), **geo)
    with pytest.raises(ValueError, match=r"conv2d_forward: W has shape \(4, 2, 3, 3\)"):
        K.conv2d_forward(x, np.zeros((4, 2, 3, 3)), b, np.zeros((2, 4, 6, 6)), **geo)
    with pytest.raises(ValueError, match="s_h must be an integer >= 1"):
        K.conv2d_forward(x, W, b, np.zeros((2, 4, 6, 6)), **{**geo, "s_h": 0})
    with pytest.raises(TypeError, match="dtype float32 but earlier"):
        K.conv2d_forward(x, W.astype(np.float32), b, np.zeros((2, 4, 6, 6)), **geo)
    y, M = np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4), np.int16)
    pg = geo_pool((2, 2), None, (0, 0))
    with pytest.raises(TypeError, match="argmax mask 'M' has dtype int32"):
        K.maxpool2d_forward(x, y, M.astype(np.int32), **pg)
    M[0, 0, 0, 0] = 99
    with pytest.raises(ValueError, match=r"offsets outside \[0, 4\)"):
        K.maxpool2d_vjp_x(y, M, np.zeros_like(x), **pg)


def test_layer_errors():
    with pytest.raises(ValueError, match=r"Conv2D.*too small"):
        Sequential([L.Conv2D(1, 2, 5), L.Flatten()], input_shape=(1, 3, 3))
    with pytest.raises(ValueError, match=r"Conv2D\(3 -> 2, 3x3\).*\(3, H, W\).*\(1, 8, 8\)"):
        Sequential([L.Conv2D(3, 2, 3)], input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="stride must be an integer >= 1"):
        L.Conv2D(1, 2, 3, stride=0)
    with pytest.raises(ValueError, match="at most half"):
        L.MaxPool2D(2, padding=2)
    m = Sequential([L.Conv2D(1, 2, 3), L.ReLU(), L.Flatten(), L.Dense(2 * 6 * 6, 3)])
    # a conv-first model has its parameters at construction (weights can be copied in before
    # the first batch, as in PyTorch); a residual projection's wait for the input shape
    assert [p.shape for p in m.parameters()] == [(2, 1, 3, 3), (2,), (3, 72), (3,)]
    r = Sequential([L.Residual([L.Conv2D(1, 2, 3, padding=1)])])
    with pytest.raises(ValueError, match="not built yet"):
        r.parameters()
    m.loss_and_grad(np.zeros((2, 1, 8, 8)), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"Conv2D\(1 -> 2, 3x3\).*\(N, 1, 8, 8\).*\(2, 1, 9, 8\)"):
        m.loss_and_grad(np.zeros((2, 1, 9, 8)), np.zeros(2, np.int64))


def lenet(C=1, H=28, **kw):
    return Sequential([L.Conv2D(C, 6, 5, padding=2), L.ReLU(), L.MaxPool2D(2),
                       L.Conv2D(6, 16, 5), L.Tanh(), L.AvgPool2D(2), L.Flatten(),
                       L.Dense(16 * ((H // 2 - 4) // 2) ** 2, 32), L.ReLU(), L.Dense(32, 10)],
                      input_shape=(C, H, H), **kw)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lenet_loss_and_grad_matches_torch(dtype):
    model = lenet(H=16, dtype=dtype, seed=1)
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(5, 1, 16, 16)), rng.integers(0, 10, 5)
    loss, grads = model.loss_and_grad(X, y)
    params = [torch.tensor(p.astype(np.float64), requires_grad=True) for p in model.parameters()]
    lt = F.cross_entropy(torch_forward(model, X, params), torch.tensor(y))
    gts = torch.autograd.grad(lt, params)
    tol = TOL[np.dtype(dtype).type]
    assert abs(loss - lt.item()) / lt.item() < tol
    for g, gt, p in zip(grads, gts, model.parameters()):
        assert g.shape == p.shape and g.dtype == p.dtype
        assert rel_err(g, gt.numpy()) < tol * 10


def test_residual_with_and_without_projection_matches_torch():
    model = Sequential([L.Conv2D(2, 4, 3, padding=1), L.ReLU(),
                        L.Residual([L.Conv2D(4, 4, 3, padding=1), L.Tanh(), L.Conv2D(4, 4, 3, padding=1)]),
                        L.Residual([L.Conv2D(4, 6, 3, stride=2, padding=1), L.ReLU()]),
                        L.Flatten(), L.Residual([L.Dense(6 * 4 * 4, 5, bias=False), L.Tanh()]), L.Dense(5, 3)],
                       input_shape=(2, 7, 7), dtype="float64", seed=4)
    assert model.layers[2].projection is None and isinstance(model.layers[3].projection, L.Conv2D)
    assert model.layers[3].projection.stride == (2, 2)
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(3, 2, 7, 7)), rng.integers(0, 3, 3)
    loss, grads = model.loss_and_grad(X, y)
    params = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    lt = F.cross_entropy(torch_forward(model, X, params), torch.tensor(y))
    assert abs(loss - lt.item()) < 1e-12
    for g, gt in zip(grads, torch.autograd.grad(lt, params)):
        assert rel_err(g, gt.numpy()) < 1e-9


def test_cnn_save_load_roundtrip(tmp_path):
    model = Sequential([L.Conv2D(1, 3, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2)), L.ReLU(),
                        L.MaxPool2D(2, stride=1), L.Residual([L.Conv2D(3, 3, 1)]), L.AvgPool2D(2), L.Flatten(),
                        L.Dense(3 * 1 * 3, 4)], input_shape=(1, 8, 8), seed=2)
    X = np.random.default_rng(0).normal(size=(4, 1, 8, 8))
    model.save(tmp_path / "m.npz")
    back = Sequential.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.forward(X), model.forward(X))
    assert [la.config() for la in back.layers] == [la.config() for la in model.layers]
