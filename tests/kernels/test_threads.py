"""Sample-parallel kernels: the same results on any thread count, absent directions skipped
term by term, and every BLAS library's thread count restored after each kernel."""
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import ThreadpoolController, threadpool_limits

from symprop import blas_threads
from symprop.runtime.kernels import load

D, K = load("dense"), load("window")   # the loader binds table kernels to the dispatcher
from support.numeric import rel_err

GEO = dict(s_h=2, s_w=1, p_h=1, p_w=2, d_h=1, d_w=2)


def conv_case(rng, N, dtype=np.float64):
    C, O, H, W_, k = 3, 4, 9, 8, (3, 2)
    x, W, Rx, RW = (rng.normal(size=s).astype(dtype) for s in ((N, C, H, W_), (O, C) + k) * 2)
    b, Rb = (rng.normal(size=O).astype(dtype) for _ in range(2))
    y = K.conv2d_forward(x, W, b, np.empty((N, O, 5, 10), dtype), **GEO)   # (9+2-3)//2+1, 8+4-2-1+1
    g, Rg = (rng.normal(size=y.shape).astype(dtype) for _ in range(2))
    return x, W, b, Rx, RW, Rb, g, Rg


def all_conv_outputs(x, W, b, Rx, RW, Rb, g, Rg):
    e = np.empty_like
    y = np.empty_like(g)
    return [K.conv2d_forward(x, W, b, e(y), **GEO), K.conv2d_vjp_x(W, g, e(x), **GEO),
            K.conv2d_vjp_W(x, g, e(W), **GEO), K.conv2d_jvp(x, W, Rx=Rx, RW=RW, Rb=Rb, Ry=e(y), **GEO),
            K.conv2d_rvjp_x(W, g, RW=RW, Rg=Rg, Rgx=e(x), **GEO),
            K.conv2d_rvjp_W(x, g, Rx=Rx, Rg=Rg, RgW=e(W), **GEO)]


@pytest.mark.parametrize("N", [1, 3, 8])
def test_conv_kernels_agree_on_any_thread_count(N):
    """1, 2 and 3 threads (more than cores, more than samples): same numbers up to sum order,
    and the parallel result is PyTorch's."""
    rng = np.random.default_rng(N)
    args = conv_case(rng, N)
    runs = {}
    for t in (1, 2, 3):
        with threadpool_limits(t):
            runs[t] = all_conv_outputs(*args)
    for t in (2, 3):
        for a, b_ in zip(runs[1], runs[t]):
            assert rel_err(a, b_) < 1e-13
    x, W, b, _, _, _, g, _ = args
    xt, Wt = (torch.tensor(a, requires_grad=True) for a in (x, W))
    yt = F.conv2d(xt, Wt, torch.tensor(b), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    gx, gW = torch.autograd.grad(yt, (xt, Wt), torch.tensor(g))
    assert rel_err(runs[2][0], yt.detach().numpy()) < 1e-12
    assert rel_err(runs[2][1], gx.numpy()) < 1e-12
    assert rel_err(runs[2][2], gW.numpy()) < 1e-12


def test_absent_directions_skip_only_their_term():
    """The R-op input pullback sums RWᵀḡ + Wᵀ𝓡ḡ in one column buffer; with one direction
    absent it is the other term alone, with both absent it is zero."""
    rng = np.random.default_rng(0)
    x, W, b, Rx, RW, Rb, g, Rg = conv_case(rng, 4)
    e = np.empty_like
    vjp_x = lambda A, G: K.conv2d_vjp_x(A, G, e(x), **GEO)  # noqa: E731
    vjp_W = lambda X, G: K.conv2d_vjp_W(X, G, e(W), **GEO)  # noqa: E731
    assert rel_err(K.conv2d_rvjp_x(W, g, RW=None, Rg=Rg, Rgx=e(x), **GEO), vjp_x(W, Rg)) < 1e-13
    assert rel_err(K.conv2d_rvjp_x(W, g, RW=RW, Rg=None, Rgx=e(x), **GEO), vjp_x(RW, g)) < 1e-13
    assert not K.conv2d_rvjp_x(W, g, RW=None, Rg=None, Rgx=np.full_like(x, np.nan), **GEO).any()
    assert rel_err(K.conv2d_rvjp_W(x, g, Rx=None, Rg=Rg, RgW=e(W), **GEO), vjp_W(x, Rg)) < 1e-13
    assert rel_err(K.conv2d_rvjp_W(x, g, Rx=Rx, Rg=None, RgW=e(W), **GEO), vjp_W(Rx, g)) < 1e-13
    y = np.empty_like(g)
    fwd_RW = K.conv2d_forward(x, RW, np.zeros_like(b), e(y), **GEO)
    assert rel_err(K.conv2d_jvp(x, W, Rx=None, RW=RW, Rb=None, Ry=e(y), **GEO), fwd_RW) < 1e-13


def blas_counts():
    return [lib.num_threads for lib in ThreadpoolController().select(user_api="blas").lib_controllers]


def test_blas_thread_counts_are_restored():
    if blas_threads.controls() is None:
        pytest.skip("no controllable BLAS loaded")
    rng = np.random.default_rng(1)
    args = conv_case(rng, 6, np.float32)
    X, Wd = rng.normal(size=(256, 300)).astype(np.float32), rng.normal(size=(200, 300)).astype(np.float32)
    for limit in (None, 1, 2):
        with threadpool_limits(limit):
            before = blas_counts()
            all_conv_outputs(*args)
            D.dense_forward(X, Wd, np.zeros(200, np.float32), np.empty((256, 200), np.float32))
            assert blas_counts() == before
    with pytest.raises(ValueError):   # an error inside the call also restores them
        K.conv2d_vjp_x(args[1], args[6], np.empty((1, 1, 1, 1), np.float32), **GEO)
    assert blas_counts() == before


def test_concurrent_python_threads():
    """Kernels called from several Python threads at once give the serial results and leave
    the BLAS thread counts as they found them (the hold is counted, not saved per call)."""
    rng = np.random.default_rng(2)
    cases = [conv_case(rng, n) for n in (2, 5, 7, 9)]
    with threadpool_limits(1):
        want = [all_conv_outputs(*c) for c in cases]
    before = blas_counts()
    got = [None] * len(cases)

    def work(i):
        for _ in range(20):
            got[i] = all_conv_outputs(*cases[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert blas_counts() == before
    for w, g in zip(want, got):
        for a, b_ in zip(w, g):
            assert rel_err(a, b_) < 1e-13


def test_unknown_blas_runs_serially():
    rng = np.random.default_rng(3)
    args = conv_case(rng, 5)
    want = all_conv_outputs(*args)
    from symprop.generated import dispatch    # the BLAS controls live in the one dispatcher
    try:
        dispatch.set_blas_controls(None)
        before = blas_counts()
        got = all_conv_outputs(*args)
        assert blas_counts() == before
    finally:
        dispatch.set_blas_controls(blas_threads.controls())
    for a, b_ in zip(want, got):
        assert rel_err(a, b_) < 1e-13


def test_controls_find_the_loaded_blas():
    import scipy.linalg  # noqa: F401 — the BLAS the kernels call
    info = ThreadpoolController().select(user_api="blas").info()
    c = blas_threads.controls()
    if all(lib["internal_api"] in blas_threads._SYMBOLS for lib in info) and info:
        assert c is not None and len(c) == len(info)
        assert all(isinstance(a, int) and a > 0 for pair in c for a in pair)
    else:
        assert c is None


def test_openmp_spin_is_bounded_unless_the_user_chose():
    """symprop sets GOMP_SPINCOUNT (idle workers spinning for 300k iterations made a step ~70x
    slower beside one busy process) but never over the user's own spin or wait policy, and not
    once a libgomp is loaded (it has read its settings; the variable would only mislead)."""
    from symprop.runtime.openmp import SPINCOUNT, bound_spin
    fresh = lambda: False  # noqa: E731
    env = {}
    assert bound_spin(env, fresh) and env == {"GOMP_SPINCOUNT": str(SPINCOUNT)}
    for mine in ({"GOMP_SPINCOUNT": "5"}, {"OMP_WAIT_POLICY": "active"}, {"SYMPROP_OPENMP_SPIN": "default"},
                 {"GOMP_SPINCOUNT": "5", "SYMPROP_OPENMP_SPIN": "7"}):
        env = dict(mine)
        assert not bound_spin(env, fresh) and env == mine
    env = {"SYMPROP_OPENMP_SPIN": "0"}
    assert bound_spin(env, fresh) and env["GOMP_SPINCOUNT"] == "0"
    env = {}
    assert not bound_spin(env, lambda: True) and env == {}
    for bad in ("fast", "\u00b2", "-1"):
        env = {"SYMPROP_OPENMP_SPIN": bad}
        with pytest.warns(RuntimeWarning, match="SYMPROP_OPENMP_SPIN"):
            assert bound_spin(env, fresh)
        assert env["GOMP_SPINCOUNT"] == str(SPINCOUNT)


def test_openmp_spin_is_set_before_libgomp_loads(tmp_path):
    """In a fresh process, importing the runtime sets the variable while no libgomp is loaded
    yet, and the first generated module then loads it; a user's value is kept; after torch
    (which brings its own libgomp.so.1) nothing is set."""
    import os
    import subprocess
    import sys
    from symprop.runtime.openmp import SPINCOUNT
    code = ("import os; maps = lambda: open('/proc/self/maps').read(); import symprop.runtime; "
            "assert 'libgomp' not in maps(); v = os.environ.get('GOMP_SPINCOUNT'); "
            "from symprop.runtime.kernels import load; load('optimizers'); assert 'libgomp' in maps(); print(v)")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "SYMPROP_OPENMP_SPIN")}
    run = lambda c, e: subprocess.run([sys.executable, "-c", c], env=e, cwd=tmp_path, capture_output=True,  # noqa: E731
                                      text=True)
    out = run(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(SPINCOUNT)
    out = run(code, dict(env, GOMP_SPINCOUNT="7"))
    assert out.stdout.strip() == "7", out.stderr
    out = run("import os, torch, symprop.runtime; print(os.environ.get('GOMP_SPINCOUNT'))", env)
    assert out.returncode == 0 and out.stdout.strip() == "None", out.stderr
