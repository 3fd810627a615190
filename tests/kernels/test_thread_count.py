"""Results that do not depend on the thread count: every kernel reduction sums in a fixed
order (weight gradients per chunk of samples, GEMMs in blocks fixed by the shape), so a seeded
run gives bitwise the same weights on 1, 2 or more threads."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from symprop.runtime.kernels import load

D, K = load("dense"), load("window")
THREADS = (1, 2, 3)


def by_threads(fn):
    """``fn()`` on each thread count of THREADS: {threads: list of arrays}."""
    out = {}
    for t in THREADS:
        with threadpool_limits(t):
            out[t] = [np.copy(a) for a in fn()]
    return out


def assert_bitwise(runs):
    for t in THREADS[1:]:
        for k, (a, b) in enumerate(zip(runs[THREADS[0]], runs[t])):
            assert a.tobytes() == b.tobytes(), f"output {k}: {THREADS[0]} vs {t} threads differ " \
                                               f"(max {np.max(np.abs(a - b)):.3g})"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, H, W_", [(4, 10, 9), (5, 10, 9), (17, 10, 9), (40, 16, 16), (70, 20, 20)])
def test_conv_weight_gradients_are_bitwise_the_same_on_any_thread_count(N, H, W_, dtype):
    """The per-sample weight-gradient GEMMs land in per-chunk slabs (2, 4 and 8 chunks here,
    fixed by the shapes), summed in chunk order: 1, 2 and 3 threads give the same bits
    (per-thread slabs did not: ((g0 + g1) + g2) + g3 against (g0 + g1) + (g2 + g3))."""
    rng = np.random.default_rng(N)
    C, O = 3, 8
    x, Rx = (rng.normal(size=(N, C, H, W_)).astype(dtype) for _ in range(2))
    g, Rg = (rng.normal(size=(N, O, H, W_)).astype(dtype) for _ in range(2))
    geo = dict(s_h=1, s_w=1, p_h=1, p_w=1, d_h=1, d_w=1)
    e = lambda: np.empty((O, C, 3, 3), dtype)  # noqa: E731
    runs = by_threads(lambda: [K.conv2d_vjp_W(x, g, e(), **geo),
                               K.conv2d_rvjp_W(x, g, Rx=Rx, Rg=Rg, RgW=e(), **geo),
                               *K.conv2d_vjp_rvjp_params(x, g, Rx, Rg, e(), np.empty(O, dtype), e(),
                                                         np.empty(O, dtype), **geo)])
    assert_bitwise(runs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, I, O", [(64, 64, 33), (32, 64, 512), (200, 784, 10), (256, 129, 33), (1100, 64, 40),
                                     (64, 2100, 256)])
def test_dense_gemms_are_bitwise_the_same_on_any_thread_count(N, I, O, dtype):
    """GEMMs split into blocks fixed by the shape: OpenBLAS's result for a block of rows or
    columns is not always bitwise that part of the whole product (these shapes differed when
    the blocks followed the thread count)."""
    rng = np.random.default_rng(N + I + O)
    x, W, b, g = (rng.normal(size=s).astype(dtype) for s in ((N, I), (O, I), (O,), (N, O)))
    runs = by_threads(lambda: [D.dense_forward(x, W, b, np.empty((N, O), dtype)),
                               D.dense_vjp_x(W, g, np.empty((N, I), dtype)),
                               D.dense_vjp_W(x, g, np.empty((O, I), dtype)),
                               D.dense_vjp_b(g, np.empty(O, dtype))])
    assert_bitwise(runs)


TRAIN = r"""
import hashlib, json
import numpy as np
from symprop import optimizers as O
from symprop.runtime import named_models as models
from symprop.runtime.data import load_digits

(X, y), _ = load_digits(flatten=False)
X, y = X[:500], y[:500]
Xf = X.reshape(len(X), -1)


def digest(model):
    return hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in model.parameters())).hexdigest()


out = {}
m = models.cnn(X.shape[1:], seed=0)
m.fit(X, y, epochs=1, batch_size=32, optimizer=O.SGD(0.05, momentum=0.9), verbose=0, seed=0)
out["cnn"] = digest(m)
m = models.mlp(Xf.shape[1:], hidden=256, batchnorm=True, seed=0)
m.fit(Xf, y, epochs=2, batch_size=100, optimizer=O.Adam(1e-3), verbose=0, seed=0)
out["mlp_batchnorm"] = digest(m)
m = models.mlp(Xf.shape[1:], hidden=512, seed=0, dtype="float64")
m.fit(Xf, y, epochs=1, batch_size=200, optimizer=O.SGD(0.1), clip_norm=0.5, verbose=0, seed=0)
out["mlp_float64_clip_norm"] = digest(m)
m = models.cnn(X.shape[1:], seed=0)
m.fit(X[:160], y[:160], epochs=1, batch_size=32, optimizer=O.AdaHessian(lr=0.05, seed=0), verbose=0, seed=0)
out["cnn_adahessian"] = digest(m)
m = models.mlp(Xf.shape[1:], hidden=16, seed=0)
m.fit(Xf[:200], y[:200], epochs=1, batch_size=100, optimizer=O.Newton(lr=1.0, damping=0.1), verbose=0, seed=0)
out["mlp_newton"] = digest(m)
print(json.dumps(out))
"""


def test_seeded_training_is_bitwise_the_same_with_one_and_two_threads(tmp_path):
    """One seeded digits CNN (SGD), MLP with BatchNorm (Adam), float64 MLP with gradient-norm
    clipping, CNN with AdaHessian and MLP with Newton, each trained in a process with
    OMP_NUM_THREADS=1 and one with 2: the same weights, bit for bit."""
    digests = {}
    for t in (1, 2):
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        env["OMP_NUM_THREADS"] = str(t)
        r = subprocess.run([sys.executable, "-c", TRAIN], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
        digests[t] = json.loads(r.stdout.strip().splitlines()[-1])
    differ = [k for k in digests[1] if digests[1][k] != digests[2][k]]
    assert not differ, f"weights differ between 1 and 2 threads: {differ}"
