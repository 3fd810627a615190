"""GEMM providers (``symprop.runtime.gemm_providers``): every installed provider gives the
reference product on every built-in shape class, the tuner's cache survives corrupt and
foreign-CPU files, and forcing a provider that is not installed is a clear error."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from symprop.blas_threads import one_thread
from symprop.runtime import gemm_providers as G
from symprop.runtime.kernels import load

D = load("dense")
PROVIDERS = G.available()
NAMES = [p.name for p in PROVIDERS]


def _slot(name):
    return 0 if name == "scipy" else 1 + NAMES.index(name)


@pytest.fixture
def installed():
    """Every available provider installed in the dense module (slots 1, 2, ...); afterwards
    the process's own configuration is restored."""
    G._install_into(D, PROVIDERS, {}, False, 0)
    yield D
    state = G._state
    if state:
        G._install_into(D, state["providers"], state["choices"], state["active"], state["default"])
    else:
        G._install_into(D, [], {}, False, 0)


@pytest.fixture(scope="module")
def builtin_products():
    """Per dtype, per built-in class: A, B, the float64 reference op(A)·op(B) and |op(A)|·|op(B)|
    (the size of the terms summed, which bounds a summation-order error)."""
    rng = np.random.default_rng(7)
    out = {}
    for dtype in (np.float32, np.float64):
        out[dtype] = []
        for split, ta, tb, M, N, K in G.BUILTIN:
            A = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
            B = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
            a, b = A.astype(np.float64), B.astype(np.float64)
            a, b = (a.T if ta else a), (b.T if tb else b)
            with one_thread():
                out[dtype].append(((split, ta, tb, M, N, K), A, B, a @ b, np.abs(a) @ np.abs(b)))
    return out


@pytest.mark.parametrize("name", ["scipy", "openblas", "mkl"])
@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_every_provider_matches_the_reference_product_on_the_builtin_classes(installed, builtin_products, name,
                                                                             dtype, tol):
    """C = op(A) op(B) through the kernels' own GEMM path (split over threads as a dense kernel,
    or one call as a window kernel) against the float64 product, per built-in class."""
    if name not in ("scipy", *NAMES):
        pytest.skip(f"the {name} GEMM provider is not installed ({G._INSTALL_HINT[name]})")
    for (split, ta, tb, M, N, K), A, B, ref, scale in builtin_products[dtype]:
        for T in (1, 2):
            with one_thread():     # as the kernels hold every BLAS while they run
                C = installed._gemm_product(_slot(name), bool(split), bool(ta), bool(tb), A, B, T)
            assert C.dtype == dtype and C.shape == (M, N)
            err = np.max(np.abs(C - ref) / scale)
            assert err < tol, f"{name} {dtype.__name__} {M}x{N}x{K} ta={ta} tb={tb} split={split} T={T}: {err:.3g}"


def test_providers_agree_with_each_other_in_float64(installed):
    """All providers on one odd shape: equal up to summation order."""
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((77, 301)), rng.standard_normal((301, 45))
    ref = installed._gemm_product(0, True, False, False, A, B, 2)
    for name in NAMES:
        with one_thread():
            C = installed._gemm_product(_slot(name), True, False, False, A, B, 2)
        assert np.all(np.abs(C - ref) <= 1e-12 * (np.abs(A) @ np.abs(B)))


@pytest.mark.parametrize("ta, tb", [(True, False), (False, True), (False, False), (True, True)])
def test_tall_products_split_the_summed_dimension_the_same_on_any_thread_count(installed, ta, tb):
    """A small output summed over many rows (a weight pullback over a Taylor stack) runs in
    fixed chunks of the summed dimension: the float64 product, bitwise the same on 1 and 2
    threads, for every transpose (chunk offsets into each operand's layout)."""
    rng = np.random.default_rng(11)
    M, N, K = 48, 40, 9001            # K >= 8192 and >= 16·max(M, N): K // 2048 = 4 chunks, odd-sized
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        A = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
        B = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
        a, b = A.astype(np.float64), B.astype(np.float64)
        a, b = (a.T if ta else a), (b.T if tb else b)
        with one_thread():
            C1 = installed._gemm_product(0, True, ta, tb, A, B, 1)
            C2 = installed._gemm_product(0, True, ta, tb, A, B, 2)
        assert np.array_equal(C1, C2)
        assert np.max(np.abs(C1 - a @ b) / (np.abs(a) @ np.abs(b))) < tol
        if ta and not tb:   # the chunks' products (one GEMM call each) summed in order, bit for bit
            nb = K // 2048
            bounds = [(K * t // nb, K * (t + 1) // nb) for t in range(nb)]
            with one_thread():
                parts = [installed._gemm_product(0, False, True, False, np.ascontiguousarray(A[lo:hi]),
                                                 np.ascontiguousarray(B[lo:hi]), 1) for lo, hi in bounds]
            total = parts[0]
            for p in parts[1:]:
                total = total + p
            assert np.array_equal(C1, total)


def test_the_kernels_mark_unknown_classes_and_keep_installed_choices(installed):
    """A dense kernel's product of a class not in the table is marked seen (None, for the tuner)
    and runs on SciPy's BLAS; a class installed with a choice keeps it; results are the same."""
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((128, 784)).astype(np.float32), rng.standard_normal((256, 784)).astype(np.float32)
    b = np.zeros(256, np.float32)
    key = D._gemm_class(False, True, False, True, 128, 256, 784)      # the forward's x·Wᵀ
    assert G.decode(key) == (False, True, False, True, 128, 256, 1024)  # 784 -> 1024 (768 < 784)
    G._install_into(D, PROVIDERS, {}, True, 0)
    y0 = D.dense_forward(x, W, b, np.empty((128, 256), np.float32))
    assert D._gemm_classes().get(key, "absent") is None
    slot = len(PROVIDERS)          # the last installed provider (0, SciPy's, when none is installed)
    G._install_into(D, PROVIDERS, {key: slot}, True, 0)
    assert D._gemm_classes()[key] == slot
    y1 = D.dense_forward(x, W, b, np.empty((128, 256), np.float32))
    assert D._gemm_classes()[key] == slot
    assert np.allclose(y1, y0, rtol=1e-5, atol=1e-4) and np.allclose(y0, x @ W.T, rtol=1e-4, atol=1e-3)


def test_dimension_classes_round_up_to_powers_of_two_and_three_halves():
    values = [G._class_value(c) for c in (0, *range(2, 13))]
    assert values == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
    for d in (1, 2, 3, 5, 7, 100, 784, 4096, 50176):
        key = D._gemm_class(False, False, False, False, d, 1, 1)
        M = G.decode(key)[4]
        assert M >= d and (M == 1 or G.decode(D._gemm_class(False, False, False, False, M, 1, 1))[4] == M)
        assert M < 2 * d or d == 1


@pytest.fixture
def restore_gemm():
    """After the test (and after monkeypatch has restored the environment: request this fixture
    before monkeypatch), configure the providers again from the real cache, as at start-up."""
    yield
    G._reset_for_tests()
    G.setup()
    for mod in list(G._modules):
        st = G._state
        G._install_into(mod, st["providers"], st["choices"], st["active"], st["default"])


def _measured(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMPROP_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(G, "measure", lambda shape, providers, **kw: calls.append(shape) or
                        {"scipy": 2.0, **{p.name: 1.0 for p in providers}})
    return calls


class _FakeProvider(G.Provider):
    def __init__(self):
        p = PROVIDERS[0] if PROVIDERS else None
        # SciPy's own BLAS under another name: real addresses, so installing it is safe
        import ctypes
        from scipy.linalg import cython_blas
        caps = cython_blas.__pyx_capi__
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        name = lambda c: ctypes.pythonapi.PyCapsule_GetName(c)  # noqa: E731
        ctypes.pythonapi.PyCapsule_GetName.restype = ctypes.c_char_p
        ctypes.pythonapi.PyCapsule_GetName.argtypes = [ctypes.py_object]
        s = get(caps["sgemm"], name(caps["sgemm"]))
        d = get(caps["dgemm"], name(caps["dgemm"]))
        super().__init__("openblas", "fake", s, d, "scipy" if p is None else p.path)


def test_tuner_measures_once_and_then_reads_the_cache(restore_gemm, monkeypatch, tmp_path):
    calls = _measured(monkeypatch, tmp_path)
    fake = [_FakeProvider()]
    classes = G.tune(providers=fake, seen=False)
    n = len({D._gemm_class(False, *b) for b in G.BUILTIN})
    assert len(calls) == n == len(classes) and all(e["choice"] == "openblas" for e in classes.values())
    assert G.read_cache(providers=fake)["classes"].keys() == classes.keys()
    calls.clear()
    G.tune(providers=fake, seen=False)
    assert calls == []                                  # everything cached: nothing timed


@pytest.mark.parametrize("content", ["{not json", "", "[]", '{"format": 1}', "\x00\xff binary",
                                     json.dumps({"format": 1, "cpu": {"vendor": "OtherCPU", "family": "25",
                                                                      "model": "17", "name": "x", "isa": []},
                                                 "providers": {}, "classes": {"5": {"choice": "mkl",
                                                                                    "times": {}}}, "seen": []})])
def test_a_corrupt_or_foreign_cpu_cache_is_measured_anew(restore_gemm, monkeypatch, tmp_path, content):
    calls = _measured(monkeypatch, tmp_path)
    fake = [_FakeProvider()]
    path = G.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content)
    assert G.read_cache(providers=fake) == {"classes": {}, "seen": []}
    classes = G.tune(providers=fake, budget=2)
    assert len(calls) == 2 and len(classes) == 2
    data = json.loads(path.read_text())                 # replaced by a valid file for this CPU
    assert data["cpu"] == G.cpu() and len(data["classes"]) == 2


def test_every_loaded_provider_is_held_at_one_thread_by_the_kernels():
    """The providers load before the BLAS thread controls are read: each one's pool is among
    the controls (else every kernel that calls BLAS would run serially)."""
    from symprop import blas_threads
    from threadpoolctl import threadpool_info
    controls = blas_threads.controls()
    assert controls is not None
    paths = [i["filepath"] for i in threadpool_info() if i["user_api"] == "blas"]
    for p in PROVIDERS:
        assert any(os.path.realpath(p.path) == os.path.realpath(q) for q in paths), (p, paths)
    assert len(controls) == len(paths)


def test_start_up_measures_only_when_this_cpu_has_no_cache(restore_gemm, monkeypatch, tmp_path):
    """First start on a CPU: the built-in classes are measured and cached. Later starts read the
    cache and measure nothing, even with classes seen since (their provider would change the
    last bits of results between runs); SYMPROP_GEMM_TUNE=seen measures those too."""
    calls = _measured(monkeypatch, tmp_path)
    fake = [_FakeProvider()]
    monkeypatch.setattr(G, "available", lambda: fake)
    monkeypatch.delenv("SYMPROP_GEMM", raising=False)
    monkeypatch.delenv("SYMPROP_GEMM_TUNE", raising=False)
    seen_key = D._gemm_class(False, True, False, False, 96, 96, 96)
    G._reset_for_tests()
    G.setup()
    assert len(calls) == len({D._gemm_class(False, *b) for b in G.BUILTIN})
    cache = G.read_cache(providers=fake)
    cache["seen"] = [seen_key]
    G.write_cache(cache, fake)
    calls.clear()
    G._reset_for_tests()
    G.setup()
    assert calls == []
    monkeypatch.setenv("SYMPROP_GEMM_TUNE", "seen")
    G._reset_for_tests()
    G.setup()
    assert G.decode(seen_key) in calls       # (with any class this process's kernels marked)


def test_tuner_keeps_scipy_unless_an_alternative_is_clearly_faster():
    assert G.choose({"scipy": 1.0, "mkl": 0.97}) == "scipy"     # within the margin: noise
    assert G.choose({"scipy": 1.0, "mkl": 0.80, "openblas": 0.9}) == "mkl"
    assert G.choose({"scipy": 1.0, "mkl": 1.5}) == "scipy"


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, cwd="/")


@pytest.mark.parametrize("name", ["openblas", "mkl"])
def test_forcing_a_provider_that_is_not_installed_is_a_clear_error(name):
    if name in NAMES:
        pytest.skip(f"{name} is installed here")
    r = _run("from symprop.runtime.kernels import load; load('dense')", SYMPROP_GEMM=name)
    assert r.returncode != 0
    assert f"SYMPROP_GEMM={name}" in r.stderr and "not installed" in r.stderr and "pip install" in r.stderr


@pytest.mark.parametrize("name", ["openblas", "mkl"])
def test_forcing_a_provider_that_failed_to_load_is_a_clear_error(monkeypatch, name):
    """The same check in this process, with the provider made absent (runs where it is installed)."""
    monkeypatch.setitem(G._loaded, name, None)
    monkeypatch.setenv("SYMPROP_GEMM", name)
    saved = dict(G._state), G._configured[0]
    G._configured[0] = False
    try:
        with pytest.raises(RuntimeError, match=f"SYMPROP_GEMM={name}: the {name} GEMM provider is not installed; "
                                                f"pip install 'symprop\\[{name}\\]'"):
            G.setup()
        assert G._configured[0] is False          # not configured: the next load raises again
    finally:
        G._state.clear()
        G._state.update(saved[0])
        G._configured[0] = saved[1]


def test_an_unknown_provider_name_is_a_clear_error():
    r = _run("from symprop.runtime.kernels import load; load('dense')", SYMPROP_GEMM="atlas")
    assert r.returncode != 0 and "SYMPROP_GEMM='atlas'" in r.stderr and "scipy, openblas, mkl" in r.stderr


@pytest.mark.parametrize("name", ["scipy", "openblas", "mkl"])
def test_a_forced_provider_runs_every_product(name, tmp_path):
    if name not in ("scipy", *NAMES):
        pytest.skip(f"the {name} GEMM provider is not installed")
    code = ("import numpy as np; from symprop.runtime.kernels import load; "
            "from symprop.runtime import gemm_providers as G; D = load('dense'); "
            "print(G.provider_of(False, True, False, True, 128, 256, 784), G.report()['forced'])")
    r = _run(code, SYMPROP_GEMM=name, SYMPROP_CACHE=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [name, name]


@pytest.mark.slow   # compiles or runs the CLI many times: the default suite's 5 minutes
def test_symprop_tune_prints_the_choice_per_class(tmp_path):
    """`symprop tune --json` on a fresh cache: the CPU, and per built-in class the times of every
    installed provider and the choice (none when only SciPy's BLAS is installed)."""
    import shutil
    exe = shutil.which("symprop") or pytest.skip("the symprop command is not installed")
    r = subprocess.run([exe, "tune", "--json"], capture_output=True, text=True, timeout=300, cwd="/",
                       env={**{k: v for k, v in os.environ.items() if k != "SYMPROP_GEMM"},
                            "SYMPROP_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["cpu"] == G.cpu() and set(rep["providers"]) == set(NAMES)
    if NAMES:
        assert len(rep["classes"]) == len({D._gemm_class(False, *b) for b in G.BUILTIN})
        for c in rep["classes"]:
            assert set(c["us"]) == {"scipy", *NAMES} and c["choice"] in c["us"]
            assert c["choice"] == "scipy" or c["us"][c["choice"]] < 0.95 * c["us"]["scipy"]
    r = subprocess.run([exe, "tune"], capture_output=True, text=True, timeout=60, cwd="/",
                       env={**os.environ, "SYMPROP_GEMM": "mkl"})
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert ("unset it to tune" if "mkl" in NAMES else "not installed") in r.stderr
