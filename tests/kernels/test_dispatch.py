"""The shared dispatcher: every table kernel is bound from its manifest, bad arguments are refused
with the kernel and the array named, and threading never changes a result."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from symprop.runtime.kernels import load

TABLE_MODULES = ["activations", "optimizers", "dense", "window", "learnable", "composite"]


@pytest.mark.parametrize("name", TABLE_MODULES)
def test_every_kernel_of_the_table_is_bound_with_its_manifest_arguments(name):
    mod = load(name)
    roles = {r["kernel"]: r for e in mod.MANIFEST.values() for r in e["roles"].values()}
    assert len(mod.KERNELS) == len(mod.kernel_table()) > 0
    for kernel in mod.KERNELS:
        fn = getattr(mod, kernel)
        assert kernel in roles, kernel
        assert fn.name == kernel and kernel in repr(fn)
        assert list(fn.arguments) == [a for a in roles[kernel]["call"]], kernel
    # every manifest role is served: by a bound table kernel or a helper of the module
    assert all(callable(getattr(mod, k)) for k in roles)


def test_elementwise_errors_name_the_kernel_and_the_array():
    A = load("activations")
    x = np.linspace(-3, 3, 10, dtype=np.float32)
    with pytest.raises(TypeError, match=r"tanh_forward: argument 'x' has dtype int32"):
        A.tanh_forward(x.astype(np.int32), np.empty(10, np.float32))
    with pytest.raises(TypeError, match=r"tanh_forward: argument 'y' has dtype float64 but earlier"):
        A.tanh_forward(x, np.empty(10))
    with pytest.raises(ValueError, match=r"tanh_forward: y has shape \(9,\) but x has shape \(10,\)"):
        A.tanh_forward(x, np.empty(9, np.float32))
    with pytest.raises(ValueError, match=r"argument 'x' \(shape \(5,\)\) must be C-contiguous"):
        A.tanh_forward(x[::2], np.empty(5, np.float32))
    ro = np.empty(10, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"tanh_forward: output 'y' is read-only"):
        A.tanh_forward(x, ro)
    with pytest.raises(TypeError, match=r"tanh_forward: argument 'x' must be a numpy.ndarray, got list"):
        A.tanh_forward([1.0], np.empty(1, np.float32))
    with pytest.raises(TypeError, match=r"tanh_forward\(\) missing argument\(s\) y"):
        A.tanh_forward(x=x)
    with pytest.raises(TypeError, match=r"unexpected argument 'z'"):
        A.tanh_forward(x, np.empty(10, np.float32), z=1)
    # a read-only input is read in place, not refused
    x.flags.writeable = False
    y = np.empty(10, np.float32)
    A.tanh_forward(x, y)
    np.testing.assert_allclose(y, np.tanh(x), rtol=1e-6)
    y64 = np.empty(10)
    A.tanh_forward(x=x.astype(np.float64), y=y64)   # by name
    np.testing.assert_allclose(y64, np.tanh(x.astype(np.float64)), rtol=1e-15)


def test_indexed_errors_name_the_kernel_the_array_and_the_index():
    D = load("dense")
    rng = np.random.default_rng(0)
    x, W, b = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=5)
    with pytest.raises(ValueError, match=r"dense_forward: W has shape \(5, 4\) but index i has extent 3 in x"):
        D.dense_forward(x, rng.normal(size=(5, 4)), b, np.empty((4, 5)))
    with pytest.raises(ValueError, match=r"dense_forward: x must be 2-D \(n, i\), got shape \(12,\)"):
        D.dense_forward(x.reshape(-1), W, b, np.empty((4, 5)))
    with pytest.raises(TypeError, match=r"dense_forward: output array 'y' is required"):
        D.dense_forward(x, W, b)
    with pytest.raises(ValueError, match=r"dense_forward: output 'y' is read-only"):
        out = np.empty((4, 5))
        out.flags.writeable = False
        D.dense_forward(x, W, b, out)
    with pytest.raises(ValueError, match=r"dense_forward: argument 'x' \(shape \(4, 3\)\) must be C-contiguous"):
        D.dense_forward(np.asfortranarray(x), W, b, np.empty((4, 5)))
    y = D.dense_forward(x, W, b, np.empty((4, 5)))
    np.testing.assert_allclose(y, x @ W.T + b, rtol=1e-13)
    # absent directions count as zero; all absent gives zeros
    Ry = D.dense_jvp(x, W, Rx=None, RW=None, Rb=b, Ry=np.full((4, 5), np.nan))
    np.testing.assert_array_equal(Ry, np.broadcast_to(b, (4, 5)))


def test_window_errors_name_the_geometry_and_the_mask():
    K = load("window")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 7, 7))
    W, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    geo = dict(s_h=2, s_w=2, p_h=1, p_w=1, d_h=1, d_w=1)
    with pytest.raises(ValueError, match=r"conv2d_forward: output extent 7 does not match"):
        K.conv2d_forward(x, W, b, np.empty((2, 4, 7, 4)), **geo)
    with pytest.raises(ValueError, match=r"conv2d_forward: s_h must be an integer >= 1, got 0"):
        K.conv2d_forward(x, W, b, np.empty((2, 4, 4, 4)), **{**geo, "s_h": 0})
    with pytest.raises(TypeError, match=r"missing argument\(s\) d_w"):
        K.conv2d_forward(x, W, b, np.empty((2, 4, 4, 4)), **{k: v for k, v in geo.items() if k != "d_w"})
    y, M = np.empty((2, 3, 3, 3)), np.empty((2, 3, 3, 3), np.int16)
    pool = dict(K_h=2, K_w=2, s_h=2, s_w=2, p_h=0, p_w=0)
    with pytest.raises(TypeError, match=r"argmax mask 'M' has dtype int32; expected int16"):
        K.maxpool2d_forward(x, y, M.astype(np.int32), **pool)
    K.maxpool2d_forward(x, y, M, **pool)
    assert np.array_equal(y, x[:, :, :6, :6].reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5)))
    M[0, 0, 0, 0] = 4
    with pytest.raises(ValueError, match=r"argmax mask M holds offsets outside \[0, 4\)"):
        K.maxpool2d_vjp_x(np.ones_like(y), M, np.empty_like(x), **pool)


def test_channelwise_and_composite_errors():
    Lw, C = load("learnable"), load("composite")
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"prelu_forward: alpha must have shape \(3,\) or \(1,\), got \(2,\)"):
        Lw.prelu_forward(x, np.ones(2), np.empty_like(x))
    with pytest.raises(ValueError, match=r"prelu_forward: data arrays must be 3-D \(N, C, S\)"):
        Lw.prelu_forward(x.reshape(6, 4), np.ones(1), np.empty((6, 4)))
    role = C.MANIFEST["softmax"]["roles"]["forward"]
    fn = getattr(C, role["kernel"])
    z = np.random.default_rng(2).normal(size=(5, 3))
    outs = [np.empty(5 * 3) if o["like"] != "group" else np.empty(5) for o in role["outputs"]]
    with pytest.raises(ValueError, match=r"must be non-negative"):
        fn(z, *outs, A=-1, C=5, B=1)
    with pytest.raises(TypeError, match=r"missing argument\(s\) B"):
        fn(z, *outs, A=1, C=5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_split_elementwise_and_composite_loops_without_changing_a_bit(dtype):
    A, C = load("activations"), load("composite")
    rng = np.random.default_rng(3)
    x = (rng.normal(size=200_003) * 4).astype(dtype)
    x[:3] = [np.nan, np.inf, -np.inf]
    z = rng.normal(size=(64, 3000)).astype(dtype)
    role = C.MANIFEST["softmax"]["roles"]["forward"]
    sm = getattr(C, role["kernel"])

    def run():
        outs = {}
        for name in ("gelu_forward", "mish_vjp_rvjp"):
            fn = getattr(A, name)
            arrays = [x] * len(fn.arrays)
            outs[name] = [np.empty_like(x) for _ in fn.outputs]
            fn(*arrays, *outs[name])
        so = [np.empty(z.size, dtype) if o["like"] != "group" else np.empty(64, dtype) for o in role["outputs"]]
        sm(z.T.copy(), *so, A=3000, C=64, B=1)
        outs["softmax"] = so
        return outs

    with threadpool_limits(1, user_api="openmp"):
        one = run()
    with threadpool_limits(2, user_api="openmp"):
        two = run()
    for k in one:
        for a, b in zip(one[k], two[k]):
            assert a.tobytes() == b.tobytes(), k


def test_a_blas_loaded_after_the_first_table_module_is_still_held_at_one_thread():
    """The optimizers module (no BLAS) binds first, then dense (which loads SciPy's OpenBLAS):
    the dispatcher must hold that BLAS too, or OpenBLAS starts its pool inside our OpenMP loop
    (it warns "Detect OpenMP Loop", and a digits epoch took 1.6 s instead of 15 ms)."""
    import subprocess
    import sys
    code = ("import numpy as np\n"
            "from symprop.runtime.kernels import load\n"
            "load('optimizers')\n"
            "D = load('dense')\n"
            "x, W, b = np.ones((512, 256)), np.ones((384, 256)), np.zeros(384)\n"
            "for _ in range(3):\n"
            "    D.dense_forward(x, W, b, np.empty((512, 384)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/",
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    assert "OpenMP Loop" not in r.stderr


def test_masks_and_penalties_share_the_activations_module_but_not_its_registry():
    from symprop import layers as L
    from symprop.runtime.activation import names
    table = load("activations").MANIFEST
    assert table["dropout"]["kind"] == "mask" and table["penalty"]["kind"] == "penalty"
    assert "dropout" not in names() and "penalty" not in names() and "tanh" in names()
    for name in ("dropout", "penalty"):
        with pytest.raises(ValueError, match=rf"unknown activation '{name}'"):
            L.Activation(name)


def test_a_call_like_the_last_reuses_its_extents_and_any_other_is_checked_again():
    """The dispatcher keeps the extents of the last call's shapes and scalars: the same call
    again gives the same result, and a call that differs in a shape, a scalar, the dtype or an
    absent direction is checked as if it were the first."""
    K = load("window")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 7, 7))
    W, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    geo = dict(s_h=2, s_w=2, p_h=1, p_w=1, d_h=1, d_w=1)
    y1 = K.conv2d_forward(x, W, b, np.empty((2, 4, 4, 4)), **geo)
    y2 = K.conv2d_forward(x, W, b, np.empty((2, 4, 4, 4)), **geo)
    assert np.array_equal(y1, y2)
    with pytest.raises(ValueError, match=r"output extent 4 does not match .* = 7"):
        K.conv2d_forward(x, W, b, np.empty((2, 4, 4, 4)), **{**geo, "s_h": 1})       # a scalar differs
    with pytest.raises(ValueError, match=r"W has shape \(4, 2, 3, 3\) but index c has extent 3"):
        K.conv2d_forward(x, W[:, :2].copy(), b, np.empty((2, 4, 4, 4)), **geo)       # a shape differs
    K.conv2d_forward(x, W, b, np.empty((2, 4, 4, 4)), **geo)
    with pytest.raises(TypeError, match=r"has dtype float32 but earlier arguments are float64"):
        K.conv2d_forward(x, W, b, np.empty((2, 4, 4, 4), np.float32), **geo)           # the dtype differs
    Ry = K.conv2d_jvp(x, W, Rx=x, RW=None, Rb=None, Ry=np.empty((2, 4, 4, 4)), **geo)
    with pytest.raises(ValueError, match=r"Rx has shape \(2, 3, 7, 6\) but index v has extent 7"):
        K.conv2d_jvp(x, W, Rx=x[..., :6].copy(), RW=None, Rb=None, Ry=np.empty((2, 4, 4, 4)), **geo)
    assert np.array_equal(K.conv2d_jvp(x, W, Rx=x, RW=None, Rb=None, Ry=np.empty((2, 4, 4, 4)), **geo), Ry)
