"""The direct convolution lowering against im2col + GEMM: every conv2d role on random geometries
(strides, dilations, paddings, tile and channel-block tails), outputs pre-filled with NaN, and
the switch itself. Both lowerings are checked against PyTorch in tests/layers/test_window.py."""

import numpy as np
import pytest

from symprop.runtime import conv_lowering
from symprop.runtime.kernels import load

K = load("window")


def _roles(rng, dtype):
    """One random geometry and the outputs of every conv2d role under a lowering (a callable)."""
    while True:
        N, C = rng.integers(1, 4), rng.integers(1, 7)
        O = int(rng.choice([1, 3, 4, 5, 8, 9, 16, 17, 33]))
        kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
        sh, sw = int(rng.choice([1, 1, 2])), int(rng.choice([1, 1, 1, 2]))
        dh, dw = int(rng.choice([1, 1, 2])), int(rng.choice([1, 1, 2]))
        ph, pw = (int(v) for v in rng.integers(0, 3, size=2))
        H, W = (int(v) for v in rng.integers(1, 40, size=2))
        HO, WO = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if HO >= 1 and WO >= 1:
            break
    geo = dict(s_h=sh, s_w=sw, p_h=ph, p_w=pw, d_h=dh, d_w=dw)
    x, Rx = (rng.normal(size=(N, C, H, W)).astype(dtype) for _ in range(2))
    Wt, RW = (rng.normal(size=(O, C, kh, kw)).astype(dtype) for _ in range(2))
    b = rng.normal(size=O).astype(dtype)
    g, Rg = (rng.normal(size=(N, O, HO, WO)).astype(dtype) for _ in range(2))
    nan = lambda shape: np.full(shape, np.nan, dtype)  # noqa: E731

    def run():
        return [K.conv2d_forward(x, Wt, b, nan(g.shape), **geo),
                K.conv2d_vjp_x(Wt, g, nan(x.shape), **geo),
                K.conv2d_vjp_W(x, g, nan(Wt.shape), **geo),
                K.conv2d_jvp(x, Wt, Rx=Rx, RW=RW, Rb=b, Ry=nan(g.shape), **geo),
                K.conv2d_rvjp_x(Wt, g, RW=RW, Rg=Rg, Rgx=nan(x.shape), **geo),
                K.conv2d_rvjp_W(x, g, Rx=Rx, Rg=Rg, RgW=nan(Wt.shape), **geo)]
    return (N, C, O, H, W, kh, kw, geo), run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_equals_im2col_on_random_geometries(dtype):
    rng = np.random.default_rng(7 if dtype == np.float32 else 8)
    tol = 2e-5 if dtype == np.float32 else 1e-13
    for _ in range(60):
        case, run = _roles(rng, dtype)
        with conv_lowering.using("im2col"):
            ref = run()
        with conv_lowering.using("direct"):
            got = run()
        for role, a, c in zip(("forward", "vjp_x", "vjp_W", "jvp", "rvjp_x", "rvjp_W"), ref, got):
            assert np.isfinite(c).all(), (role, case)
            assert np.abs(a - c).max() <= tol * max(1.0, np.abs(a).max()), (role, case)


def test_direct_lowering_is_taken_and_differs_in_rounding_only():
    """The switch reaches the kernels: on a geometry the direct lowering handles the two results
    differ (summation order) while agreeing to float32 rounding."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 6, 14, 14)).astype(np.float32)
    W = rng.normal(size=(16, 6, 5, 5)).astype(np.float32)
    b = np.zeros(16, np.float32)
    geo = dict(s_h=1, s_w=1, p_h=0, p_w=0, d_h=1, d_w=1)
    out = {}
    for mode in conv_lowering.LOWERINGS:
        with conv_lowering.using(mode):
            out[mode] = K.conv2d_forward(x, W, b, np.empty((4, 16, 10, 10), np.float32), **geo)
    assert not np.array_equal(out["direct"], out["im2col"])
    np.testing.assert_allclose(out["direct"], out["im2col"], rtol=1e-4, atol=1e-4)


def test_lowering_switch_checks_and_restores():
    before = conv_lowering.current()
    with pytest.raises(ValueError, match="convolution lowering must be one of"):
        conv_lowering.set_lowering("winograd")
    with conv_lowering.using("im2col"):
        assert conv_lowering.current() == "im2col"
    assert conv_lowering.current() == before


@pytest.mark.parametrize("stride", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("O, C", [(5, 3), (64, 29)])
def test_takes_direct_names_the_products_that_run_direct(stride, O, C):
    """``conv_lowering.takes_direct`` (what ``gemm_providers.layer_products`` lists from) says
    which products the generated sweeps run direct: the others give bitwise their im2col + GEMM
    result, and a direct forward or input pullback sums its taps in another order."""
    rng = np.random.default_rng(O + C + stride[0])
    N, H, W, k = 2, 9, 11, 3
    geo = dict(s_h=stride[0], s_w=stride[1], p_h=1, p_w=1, d_h=1, d_w=1)
    HO, WO = (H + 2 - k) // stride[0] + 1, (W + 2 - k) // stride[1] + 1
    x = rng.normal(size=(N, C, H, W)).astype(np.float32)
    w = rng.normal(size=(O, C, k, k)).astype(np.float32)
    g = rng.normal(size=(N, O, HO, WO)).astype(np.float32)
    calls = {"forward": lambda: K.conv2d_forward(x, w, np.zeros(O, np.float32), np.empty(g.shape, np.float32), **geo),
             "vjp W": lambda: K.conv2d_vjp_W(x, g, np.empty_like(w), **geo),
             "vjp x": lambda: K.conv2d_vjp_x(w, g, np.empty_like(x), **geo)}
    for role, call in calls.items():
        with conv_lowering.using("im2col"):
            ref = call()
            assert not conv_lowering.takes_direct(role, stride, O, C * k * k)
        with conv_lowering.using("direct"):
            got = call()
            direct = conv_lowering.takes_direct(role, stride, O, C * k * k)
        if not direct:      # the same GEMM path: bitwise the same result
            assert np.array_equal(got, ref), (role, stride, O, C)
        elif role != "vjp W":   # (a weight pullback sums positions in the GEMM's order: it may agree)
            assert not np.array_equal(got, ref), (role, stride, O, C)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_using_blocks_open_in_two_threads_restore_in_any_order():
    """The lowering is one per process: while blocks of two threads overlap, the latest opened
    holds; when one ends the other's comes back, and after both the lowering outside them."""
    import threading
    before = conv_lowering.current()
    a_in, b_in, a_out, b_seen = threading.Event(), threading.Event(), threading.Event(), []

    def thread_a():
        with conv_lowering.using("im2col"):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def thread_b():
        a_in.wait(5)
        with conv_lowering.using("direct"):
            b_in.set()
            a_out.wait(5)
            b_seen.append(conv_lowering.current())
    ts = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert b_seen == ["direct"]        # A's block ended inside B's: B keeps its own
    assert conv_lowering.current() == before
