"""The GEMM tuner checks its choice where it will run: split products timed at the kernels'
thread count, and a model's whole step timed with the tuned providers against SciPy's BLAS
before the choice is kept (``gemm_providers.validate``); a class a step runs slower with is
overruled to SciPy's BLAS, in the process and in the cache."""
import ctypes
import json

import numpy as np
import pytest

from symprop import layers as L
from symprop.runtime import gemm_providers as G
from symprop.runtime.kernels import load
from symprop.runtime.model import Sequential

D = load("dense")


class _SciPyUnderAnotherName(G.Provider):
    """SciPy's own sgemm/dgemm as a provider named "openblas": real addresses, so installing
    it is safe, and its results are SciPy's bit for bit."""

    def __init__(self):
        from scipy.linalg import cython_blas
        caps = cython_blas.__pyx_capi__
        api = ctypes.pythonapi
        api.PyCapsule_GetPointer.restype, api.PyCapsule_GetPointer.argtypes = ctypes.c_void_p, [ctypes.py_object,
                                                                                                ctypes.c_char_p]
        api.PyCapsule_GetName.restype, api.PyCapsule_GetName.argtypes = ctypes.c_char_p, [ctypes.py_object]
        s, d = (api.PyCapsule_GetPointer(caps[n], api.PyCapsule_GetName(caps[n])) for n in ("sgemm", "dgemm"))
        super().__init__("openblas", "test", s, d, "scipy")


@pytest.fixture
def tuned(monkeypatch, tmp_path):
    """A fresh configuration with one fake provider that every per-product measurement finds
    twice as fast as SciPy's, cached under tmp_path; the real configuration restored after."""
    fake = [_SciPyUnderAnotherName()]
    monkeypatch.setenv("SYMPROP_CACHE", str(tmp_path))
    monkeypatch.delenv("SYMPROP_GEMM", raising=False)
    monkeypatch.setenv("SYMPROP_GEMM_TUNE", "0")
    monkeypatch.setattr(G, "available", lambda: fake)
    monkeypatch.setattr(G, "measure", lambda shape, providers, **kw: {"scipy": 2.0, "openblas": 1.0})
    G._reset_for_tests()
    G.setup()
    yield fake
    monkeypatch.undo()
    G._reset_for_tests()
    G.setup()


def _mlp():
    model = Sequential([L.Dense(784, 256), L.Tanh(), L.Dense(256, 128), L.Tanh(), L.Dense(128, 10)],
                       dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    return model, rng.standard_normal((128, 784)).astype(np.float32), rng.integers(0, 10, 128)


def _tune_for(model, batch, fake):
    shapes = [s for _, _, s in G.layer_products(model, batch)]
    return G.tune(classes=shapes, builtin=False, providers=fake, seen=False)


def _layer_keys(model, batch):
    keys = {}
    for name, _, shape in G.layer_products(model, batch):
        if G._work(shape) >= G.MIN_WORK:
            keys.setdefault(name, set()).add(D._gemm_class(*shape))
    return keys


def test_split_products_are_timed_at_the_run_thread_count_and_per_sample_ones_alone(monkeypatch):
    calls = []
    real = D._gemm_time
    monkeypatch.setattr(D, "_gemm_time", lambda *a: calls.append(a[-2]) or real(*a))
    G.measure((False, True, False, True, 64, 64, 64), [], threads=3, rounds=1)
    assert calls and set(calls) == {3}
    calls.clear()
    G.measure((False, False, False, True, 64, 64, 64), [], threads=3, rounds=1)
    assert calls and set(calls) == {1}
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert G.run_threads() == 5


@pytest.mark.parametrize("seed", range(5))
def test_the_per_product_choice_is_never_slower_than_scipy(seed):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        times = dict(zip(G.NAMES, rng.uniform(0.5, 1.5, 3)))
        chosen = G.choose(times)
        assert times[chosen] <= times["scipy"]
        assert chosen == "scipy" or times[chosen] < (1 - G.MARGIN) * times["scipy"]


def test_a_step_slower_with_the_tuned_providers_overrules_them(tuned, monkeypatch):
    model, X, y = _mlp()
    _tune_for(model, len(X), tuned)
    keys = set().union(*_layer_keys(model, len(X)).values())
    assert keys and all(G._state["choices"][k] == 1 for k in keys)
    monkeypatch.setattr(G, "_time_configs", lambda fn, configs, rounds=7: {
        n: (1.0 if n == "scipy" else 1.02) for n in configs})          # every tuned table slower
    r = G.validate(model, X, y)
    assert set(r["overruled"]) == keys and r["kept"] == []
    assert all(G.provider_of(*s) == "scipy" for _, _, s in G.layer_products(model, len(X)))
    cached = G.read_cache(providers=tuned)["classes"]                    # later processes keep it
    assert all(cached[k]["choice"] == "scipy" and cached[k]["overruled"]["tuned_chose"] == "openblas"
               for k in keys)
    G._reset_for_tests()
    G.setup()
    assert all(G._state["choices"].get(k, 0) == 0 for k in keys)


def test_a_choice_within_noise_of_scipy_is_not_kept(tuned, monkeypatch):
    model, X, y = _mlp()
    _tune_for(model, len(X), tuned)
    monkeypatch.setattr(G, "_time_configs", lambda fn, configs, rounds=7: {
        n: (1.0 if n == "scipy" else 1.0 - G.MARGIN / 2) for n in configs})
    assert G.validate(model, X, y)["kept"] == []


def test_only_the_layers_whose_tuned_products_speed_the_step_up_are_kept(tuned, monkeypatch):
    model, X, y = _mlp()
    _tune_for(model, len(X), tuned)
    by_layer = _layer_keys(model, len(X))
    first = list(by_layer)[0]
    times = {"scipy": 1.0, "tuned": 0.97, f"only {first}": 0.8}      # every other layer alone: 1.1
    monkeypatch.setattr(G, "_time_configs", lambda fn, configs, rounds=7: {n: times.get(n, 1.1) for n in configs})
    r = G.validate(model, X, y, save=False)
    assert r["kept"] == [first] and len(by_layer) > 1
    assert set(r["overruled"]) == set().union(*by_layer.values()) - by_layer[first]
    assert all(G._state["choices"][k] == 1 for k in by_layer[first])


def test_validation_times_the_real_step_and_leaves_the_model_as_it_was(tuned):
    model, X, y = _mlp()
    _tune_for(model, len(X), tuned)
    before = [p.copy() for p in model.parameters()]
    r = G.validate(model, X, y, rounds=1, save=False)
    assert {"scipy", "tuned"} <= set(r["ms"]) and all(v > 0 for v in r["ms"].values())
    assert all(np.array_equal(a, b) for a, b in zip(before, model.parameters()))


def test_nothing_to_check_when_a_provider_is_forced(monkeypatch):
    monkeypatch.setenv("SYMPROP_GEMM", "scipy")
    G._reset_for_tests()
    try:
        model, X, y = _mlp()
        assert G.validate(model, X, y) == {"model": G.validate(model, X, y)["model"], "batch": 128, "ms": {},
                                           "kept": [], "overruled": [], "classes": []}
    finally:
        monkeypatch.undo()
        G._reset_for_tests()
        G.setup()


def test_an_overruled_entry_survives_the_cache_and_a_corrupt_one_is_remeasured(tuned, monkeypatch):
    model, X, y = _mlp()
    _tune_for(model, len(X), tuned)
    monkeypatch.setattr(G, "_time_configs", lambda fn, configs, rounds=7: {
        n: (1.0 if n == "scipy" else 2.0) for n in configs})
    G.validate(model, X, y)
    path = G.cache_path()
    data = json.loads(path.read_text())
    assert any(e.get("overruled") for e in data["classes"].values())
    data["classes"] = {"x": 1, "7": {"choice": "nonsense", "times": {}}}
    path.write_text(json.dumps(data))
    assert G.read_cache(providers=tuned)["classes"] == {}                # unusable entries dropped, no crash
    path.write_text("{broken")
    assert G.read_cache(providers=tuned) == {"classes": {}, "seen": []}
