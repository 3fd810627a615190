"""GEMM providers chosen by measurement, per CPU and shape class.

The generated dense and window kernels multiply through a table of ``?gemm`` function pointers
(``gemm_kernels`` in ``codegen/templates/_macros.pyx.j2``). Slot 0 is SciPy's BLAS
(``scipy.linalg.cython_blas``, what every kernel called before); this module adds the providers
a user installed as optional extras:

- ``openblas``: the ``scipy-openblas32`` wheel (``pip install 'symprop[openblas]'``), the newest
  OpenBLAS SciPy builds against, symbols ``scipy_sgemm_``/``scipy_dgemm_``;
- ``mkl``: Intel MKL from the ``mkl`` wheel (``pip install 'symprop[mkl]'``), ``libmkl_rt``
  switched to its sequential threading layer (the kernels thread a GEMM themselves, in
  fixed blocks, and hold every BLAS at one thread while they run).

A product's *shape class* is its dtype, transposes, whether a dense kernel splits it over
threads (``_pgemm``) or a window kernel calls it per sample, and M, N, K each rounded up to
2^k or 3·2^(k-1). The first time symprop's kernels load on a CPU model (no cache yet for it
and the installed provider versions, ``$SYMPROP_CACHE/gemm/``), the built-in models' classes
are timed, every available provider interleaved on the same product, and the fastest is
chosen when it beats SciPy's by more than :data:`MARGIN` (so the choice is never slower than
the old default by more than noise). Later processes read the cache. The kernels mark every
class they meet that is not in the table as *seen* (it runs on SciPy's BLAS) and the seen
classes are saved at exit; ``symprop tune`` (:func:`tune`) measures them, or
``SYMPROP_GEMM_TUNE=seen`` measures them at the next start. The table never changes while a
process runs, and by default only when the cache is first written or ``symprop tune`` runs:
a shape runs on one provider, so results stay bitwise the same on any thread count and from
one process to the next (measuring newly seen classes at each start would change a class's
provider, and so the last bits of its products, between two runs).

A split product is timed at the thread count the kernels will run it at (:func:`run_threads`),
its blocks side by side. Per-product timings still do not see a whole step (products and
elementwise kernels in turn, caches, threads side by side): on the Xeon family 6 model 207 the
first tuner's one-thread timings chose MKL for the MLP's products and the whole SGD step ran
slower at 2 threads. So ``symprop tune`` then times each built-in model's step
(:func:`validate_builtin`; :func:`validate` for any model) with the tuned providers, with each
layer's alone and with SciPy's only, and keeps a provider on a model's classes only where the
step is faster by more than :data:`MARGIN`; the rest are *overruled* to SciPy's in the cache.

``SYMPROP_GEMM=scipy|openblas|mkl`` forces one provider for every product (an absent one is an
error); ``SYMPROP_GEMM_TUNE=0`` turns the measuring at start-up off (cached choices still apply).
A cache file that is unreadable, of another format, or written on another CPU model is measured
anew and replaced, never trusted.
"""
from __future__ import annotations

import atexit
import ctypes
import glob
import hashlib
import importlib
import json
import os
import sys
import threading
from pathlib import Path

from . import conv_lowering

#: provider names in slot order after SciPy's (slot 0)
NAMES = ("scipy", "openblas", "mkl")
#: an alternative must be this much faster than SciPy's BLAS (relative time) to be chosen
MARGIN = 0.05
#: products below this many multiply-adds are not worth a provider switch: SciPy's, never timed
MIN_WORK = 1 << 17
#: cache file format
FORMAT = 1
#: seconds of measuring at one start-up at most (the classes left are measured at the next)
TUNE_SECONDS_AT_START = 2.0
#: classes remembered as seen and not measured, at most
MAX_SEEN = 512

_lock = threading.RLock()
_modules: list = []          # generated modules with a GEMM table, as registered
_state: dict = {}            # "providers": [Provider], "choices": {key: slot}, "active", "default", "forced"
_configured = [False]
_at_exit = [False]           # _save_seen registered


class Provider:
    """One loaded GEMM provider: name, version, the addresses of its ``sgemm``/``dgemm`` (Fortran
    interface, 32-bit ints) and the library they come from."""

    def __init__(self, name, version, sgemm, dgemm, path, handle=None):
        self.name, self.version, self.sgemm, self.dgemm, self.path = name, version, sgemm, dgemm, path
        self._handle = handle    # keeps the library loaded

    def __repr__(self):
        return f"<GEMM provider {self.name} {self.version} ({self.path})>"


def _version(dist: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _address(lib, name):
    fn = getattr(lib, name, None)
    return None if fn is None else ctypes.cast(fn, ctypes.c_void_p).value


def _load_openblas():
    """The ``scipy-openblas32`` wheel's OpenBLAS, or None when it is not installed."""
    try:
        import scipy_openblas32
    except ImportError:
        return None
    libdir = scipy_openblas32.get_lib_dir()
    paths = sorted(glob.glob(os.path.join(libdir, f"lib{scipy_openblas32.get_library()}*.so*")))
    if not paths:
        return None
    lib = ctypes.CDLL(paths[0])
    s, d = _address(lib, "scipy_sgemm_"), _address(lib, "scipy_dgemm_")
    if not s or not d:
        return None
    core = getattr(lib, "scipy_openblas_get_corename", None)
    version = _version("scipy-openblas32")
    if core is not None:
        core.restype = ctypes.c_char_p
        version += f" ({core().decode()})"
    return Provider("openblas", version, s, d, paths[0], lib)


def _mkl_paths():
    """Where the ``mkl`` wheel puts ``libmkl_rt`` (``<prefix>/lib``)."""
    roots = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))}
    found = []
    for root in roots:
        found += glob.glob(os.path.join(root, "lib", "libmkl_rt.so*"))   # .so.2 (2024), .so.3 (2025-)
    return sorted(set(found), key=len)


def _load_mkl():
    """MKL's ``libmkl_rt`` from the ``mkl`` wheel, sequential, 32-bit ints; None if absent."""
    try:
        from importlib import metadata
        metadata.version("mkl")
    except Exception:
        return None
    for path in _mkl_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # before any other MKL call: LP64 interface (0), sequential threading layer (1)
        for fn, value in (("MKL_Set_Interface_Layer", 0), ("MKL_Set_Threading_Layer", 1)):
            f = getattr(lib, fn, None)
            if f is not None:
                f.argtypes, f.restype = [ctypes.c_int], ctypes.c_int
                f(value)
        s, d = _address(lib, "sgemm_"), _address(lib, "dgemm_")
        if s and d:
            return Provider("mkl", _version("mkl"), s, d, path, lib)
    return None


_LOADERS = {"openblas": _load_openblas, "mkl": _load_mkl}
_INSTALL_HINT = {"openblas": "pip install 'symprop[openblas]' (the scipy-openblas32 wheel)",
                 "mkl": "pip install 'symprop[mkl]' (the mkl wheel)"}
_loaded: dict = {}


def load(name: str):
    """The provider ``name`` ("openblas" or "mkl") if installed, else None (loaded once)."""
    if name not in _LOADERS:
        raise ValueError(f"unknown GEMM provider {name!r}; known: {', '.join(NAMES)}")
    if name not in _loaded:
        try:
            _loaded[name] = _LOADERS[name]()
        except OSError:
            _loaded[name] = None
    return _loaded[name]


def available() -> list:
    """The extra providers installed here, in slot order (SciPy's, slot 0, is always there)."""
    return [p for p in (load(n) for n in NAMES[1:]) if p is not None]


def scipy_blas() -> str:
    """SciPy's BLAS as threadpoolctl sees it: ``"openblas 0.3.28 (SkylakeX)"`` or the like."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib.get("user_api") == "blas" and "scipy.libs" in lib.get("filepath", ""):
                return f"{lib.get('internal_api')} {lib.get('version')} ({lib.get('architecture')})"
    except Exception:
        pass
    return "unknown"


# ------------------------------------------------------------------ the CPU and the cache

def cpu() -> dict:
    """This CPU model: vendor, family, model, name and the ISA extensions that pick kernels."""
    info = {"vendor": "", "family": "", "model": "", "name": "", "isa": []}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read().split("\n\n")[0]
    except OSError:
        import platform
        info["name"] = platform.processor() or platform.machine()
        return info
    fields = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    flags = set(fields.get("flags", "").split())
    info.update(vendor=fields.get("vendor_id", ""), family=fields.get("cpu family", ""),
                model=fields.get("model", ""), name=fields.get("model name", ""),
                isa=[f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                                 "avx512_fp16", "amx_tile", "amx_bf16", "neon", "asimd") if f in flags])
    return info


def cpu_id(info=None) -> str:
    info = info or cpu()
    digest = hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:10]
    return f"{info['vendor'] or 'cpu'}-{info['family']}-{info['model']}-{digest}"


def cache_path() -> Path:
    from ..codegen.build_cache import cache_dir
    return cache_dir() / "gemm" / f"{cpu_id()}.json"


def read_cache(path=None, providers=None) -> dict:
    """The cached measurements for this CPU and these provider versions: ``{"classes": {key:
    {...}}, "seen": [...]}``; empty when the file is absent, unreadable, of another format,
    written on another CPU model, or for other provider versions (those are measured anew)."""
    path = Path(path or cache_path())
    empty = {"classes": {}, "seen": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return empty
    if (not isinstance(data, dict) or data.get("format") != FORMAT or data.get("cpu") != cpu()
            or not isinstance(data.get("classes"), dict) or not isinstance(data.get("seen"), list)):
        return empty
    if providers is not None and data.get("providers") != _versions(providers):
        return {"classes": {}, "seen": [k for k in data["seen"] if isinstance(k, int)]}
    classes = {}
    for key, entry in data["classes"].items():
        try:
            k = int(key)
            if isinstance(entry, dict) and entry.get("choice") in NAMES and isinstance(entry.get("times"), dict):
                classes[k] = entry
        except (TypeError, ValueError):
            continue
    return {"classes": classes, "seen": [k for k in data["seen"] if isinstance(k, int)]}


def write_cache(cache: dict, providers, path=None):
    """Write the measurements atomically (a temporary file renamed); errors only warn."""
    path = Path(path or cache_path())
    data = {"format": FORMAT, "cpu": cpu(), "providers": _versions(providers),
            "classes": {str(k): v for k, v in sorted(cache["classes"].items())},
            "seen": sorted(set(cache["seen"]) - set(cache["classes"]))[:MAX_SEEN]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as e:
        import warnings
        warnings.warn(f"symprop: could not write the GEMM tuning cache {path}: {e}", RuntimeWarning, stacklevel=2)


def _versions(providers) -> dict:
    return {"scipy": _version("scipy"), **{p.name: p.version for p in providers}}


# ------------------------------------------------------------------ shape classes

def _class_value(c: int) -> int:
    """The largest size in dimension class ``c``: 1, -, 2, 3, 4, 6, 8, 12, 16, ... for c = 0, 1, 2,
    ... (``_dim_class`` in the kernels: 2^k is class 2k, 3·2^(k-1) class 2k+1; 1 is unused)."""
    if c == 0:
        return 1
    k = (c + 1) // 2
    return 2 if c <= 2 else (1 << k if c % 2 == 0 else 3 << (k - 2))


def decode(key: int) -> tuple:
    """``(f64, split, ta, tb, M, N, K)`` of a class key, with M, N, K the class's largest sizes."""
    k = key - 1
    return (bool(k >> 21 & 1), bool(k >> 20 & 1), bool(k >> 19 & 1), bool(k >> 18 & 1),
            _class_value(k >> 12 & 63), _class_value(k >> 6 & 63), _class_value(k & 63))


#: the built-in models' products (``benchmarks/bench.py``'s shapes), measured at the first start:
#: (split, ta, tb, M, N, K) in float32 — the MLP 784-256-128-10 at batch 128 (forward, input and
#: weight pullbacks), the digits MLP 64-512-10 at batch 200, the CIFAR CNN's per-sample im2col
#: products (conv2) and its fc 4096->256 at batch 64; then the Taylor-mode stacks of a PINN's
#: width-64 MLP at 4,096 points (``benchmarks/pinn_bench.py``: the forward Laplacian at d = 2,
#: 5 and 10 pushes 4, 7 and 12 coefficient blocks of ~4,100 rows through each 64x64 layer —
#: its pushforward, input and weight pullbacks; MKL ran these 15-25 % faster than SciPy's
#: OpenBLAS on the Xeon family 6 model 207)
BUILTIN = (
    (1, 0, 1, 128, 256, 784), (1, 0, 0, 128, 784, 256), (1, 1, 0, 256, 784, 128),
    (1, 0, 1, 128, 128, 256), (1, 0, 0, 128, 256, 128), (1, 1, 0, 128, 256, 128),
    (1, 1, 0, 128, 128, 128), (1, 0, 1, 128, 10, 128), (1, 0, 1, 256, 256, 784),
    (1, 0, 1, 200, 512, 64), (1, 0, 0, 200, 64, 512), (1, 1, 0, 512, 64, 200),
    (1, 0, 1, 64, 256, 4096), (1, 0, 0, 64, 4096, 256), (1, 1, 0, 256, 4096, 64),
    (0, 0, 0, 64, 256, 288), (0, 1, 0, 288, 256, 64), (0, 0, 1, 64, 288, 256),
    (0, 0, 0, 32, 1024, 27), (0, 0, 1, 32, 27, 1024),
    (1, 0, 1, 16400, 64, 64), (1, 0, 0, 16400, 64, 64), (1, 1, 0, 64, 64, 16400),
    (1, 0, 1, 28700, 64, 64), (1, 0, 0, 28700, 64, 64), (1, 1, 0, 64, 64, 28700),
    (1, 0, 1, 49200, 64, 64), (1, 0, 0, 49200, 64, 64), (1, 1, 0, 64, 64, 49200),
)


def _tuning_module():
    # any module with a GEMM table runs the same GEMM code; the built-in dense one is always there
    return importlib.import_module("symprop.generated.dense")


def run_threads() -> int:
    """The threads the kernels' parallel loops will use: ``OMP_NUM_THREADS`` if set, else the
    cores this process may run on (what libgomp's ``omp_get_max_threads`` starts from)."""
    from ..codegen.flags import usable_cores
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return usable_cores()


def measure(shape, providers, threads=None, rounds=7, target=2e-3) -> dict:
    """Seconds per product of ``shape`` = (f64, split, ta, tb, M, N, K) on SciPy's BLAS and each
    provider: every provider timed in turn, ``rounds`` times, the least time kept (about
    ``target`` seconds a timing), with every BLAS held at one thread as the kernels hold it.

    A split product (a dense kernel's) is timed the way the kernels run it: its blocks side by
    side on ``threads`` threads (default :func:`run_threads`). Timing the blocks one after the
    other on one thread, as the first tuner did, ranked MKL first on the MLP's 784->256 and
    256->128 products while the whole SGD step at 2 threads ran slower with them (1.36 vs
    1.09 ms on the Xeon family 6 model 207): a provider's speed on one block alone does not
    say how two blocks run side by side (shared caches and memory bandwidth, the two vCPUs'
    placement on the host). A per-sample product (a window kernel's) is one call."""
    from ..blas_threads import one_thread
    f64, split, ta, tb, M, N, K = shape
    mod = _tuning_module()
    _install_into(mod, providers, {}, False, 0)
    T = max(1, int(threads or run_threads())) if split else 1
    names = ["scipy"] + [p.name for p in providers]
    with one_thread():
        t1 = mod._gemm_time(0, f64, split, ta, tb, M, N, K, T, 1)    # warm-up; sizes the timing
        reps = max(1, min(2000, int(target / max(t1, 1e-7))))
        best = {n: float("inf") for n in names}
        for _ in range(rounds):
            for slot, n in enumerate(names):
                best[n] = min(best[n], mod._gemm_time(slot, f64, split, ta, tb, M, N, K, T, reps) / reps)
    return best


def choose(times: dict) -> str:
    """The provider to use given its times: the fastest, unless it beats SciPy's by less than
    :data:`MARGIN`."""
    name = min(times, key=times.get)
    return name if times[name] < (1 - MARGIN) * times["scipy"] else "scipy"


def tune(classes=None, builtin=True, force=False, providers=None, budget=None, seconds=None, log=None,
         seen=True, threads=None) -> dict:
    """Measure the providers on the shape classes not measured yet on this CPU (all of them with
    ``force``): the built-in models' classes, those the kernels marked as seen, and ``classes``
    (keys or ``(f64, split, ta, tb, M, N, K)`` shapes); save the cache and install the choices.
    ``budget``: at most this many classes; ``seconds``: stop measuring after this long;
    ``threads``: the thread count split products are timed at (default :func:`run_threads`).
    The built-in models' whole steps are checked afterwards by :func:`validate_builtin`
    (``symprop tune`` runs it). Returns ``{key: entry}`` of the cache (entry: shape, times, choice)."""
    with _lock:
        providers = available() if providers is None else providers
        threads = max(1, int(threads or run_threads()))
        cache = read_cache(providers=providers)
        if force:
            cache["classes"] = {}
        mod = _tuning_module()
        todo = {}
        if builtin:
            for split, ta, tb, M, N, K in BUILTIN:
                todo.setdefault(mod._gemm_class(False, split, ta, tb, M, N, K), (False, split, ta, tb, M, N, K))
        for key in (list(cache["seen"]) + _seen_now()) if seen else ():
            todo.setdefault(key, decode(key))
        for c in classes or ():
            shape = decode(c) if isinstance(c, int) else tuple(c)
            todo.setdefault(mod._gemm_class(*shape), shape)
        todo = {k: s for k, s in todo.items() if k not in cache["classes"] and _work(s) >= MIN_WORK}
        if budget is not None:
            todo = dict(list(todo.items())[:budget])
        if providers:
            import time
            start = time.perf_counter()
            for key, shape in todo.items():
                if seconds is not None and time.perf_counter() - start > seconds:
                    break
                times = measure(shape, providers, threads=threads)
                entry = {"shape": [int(v) for v in shape], "times": times, "choice": choose(times),
                         "threads": int(threads) if shape[1] else 1}
                cache["classes"][key] = entry
                if log:
                    log(entry)
        cache["seen"] = sorted(set(cache["seen"]) | set(_seen_now()))
        if todo or force:
            write_cache(cache, providers)
        _install(providers, cache["classes"])
        return cache["classes"]


# ------------------------------------------------------------------ installing into the modules

def _install_into(mod, providers, choices, active, default):
    mod._gemm_providers_install([(p.sgemm, p.dgemm) for p in providers], choices, active, default)


def _install(providers, classes):
    names = ["scipy"] + [p.name for p in providers]
    choices = {k: names.index(e["choice"]) for k, e in classes.items() if e["choice"] in names}
    _state.update(providers=list(providers), choices=choices, active=bool(providers), default=0,
                  forced=None, classes=dict(classes))
    for mod in _modules:
        _install_into(mod, providers, choices, bool(providers), 0)
    if _modules or providers:
        _install_into(_tuning_module(), providers, choices, bool(providers), 0)


def _seen_now() -> list:
    """Classes the kernels marked as seen and not measured, big enough to be worth measuring."""
    seen = set()
    for mod in _modules:
        seen.update(k for k, slot in mod._gemm_classes().items()
                    if slot is None and _work(decode(k)) >= MIN_WORK)
    return sorted(seen)


def _work(shape) -> int:
    return shape[4] * shape[5] * shape[6]


def forced() -> str | None:
    """The provider ``SYMPROP_GEMM`` forces, or None; ValueError for an unknown name."""
    name = os.environ.get("SYMPROP_GEMM", "").strip().lower()
    if not name or name == "auto":
        return None
    if name not in NAMES:
        raise ValueError(f"SYMPROP_GEMM={name!r}: the GEMM providers are {', '.join(NAMES)} (or auto)")
    return name


def setup():
    """Load the providers and install the choice (once per process; before the BLAS thread
    controls are read, so a provider's own thread pool is held at one thread like SciPy's).

    ``SYMPROP_GEMM`` forces a provider (RuntimeError if it is not installed); otherwise the
    cached choices apply. ``SYMPROP_GEMM_TUNE``: unset (default), measure the built-in classes
    when this CPU has no cache yet; ``seen``, also measure the classes seen in earlier processes
    (at most :data:`TUNE_SECONDS_AT_START` a start); ``0``, never measure at start-up."""
    with _lock:
        if _configured[0]:
            return
        name = forced()
        if name is not None:
            _configured[0] = True
            if name == "scipy":
                _state.update(providers=[], choices={}, active=False, default=0, forced=name, classes={})
                for mod in _modules:
                    _install_into(mod, [], {}, False, 0)
                return
            p = load(name)
            if p is None:
                _configured[0] = False
                raise RuntimeError(f"SYMPROP_GEMM={name}: the {name} GEMM provider is not installed; "
                                   f"{_INSTALL_HINT[name]}, or unset SYMPROP_GEMM")
            _state.update(providers=[p], choices={}, active=False, default=1, forced=name, classes={})
            for mod in _modules:
                _install_into(mod, [p], {}, False, 1)
            return
        providers = available()
        _configured[0] = True
        if not providers:   # nothing to choose from
            _state.update(providers=[], choices={}, active=False, default=0, forced=None, classes={})
            return
        try:
            mode = os.environ.get("SYMPROP_GEMM_TUNE", "").strip().lower()
            cached = read_cache(providers=providers)["classes"]
            if mode == "seen" or (not cached and mode not in ("0", "no", "off", "false")):
                tune(providers=providers, seconds=TUNE_SECONDS_AT_START, seen=mode == "seen")
            else:
                _install(providers, cached)
        except Exception as e:      # a failed measurement must not stop the kernels: SciPy's BLAS
            import warnings
            warnings.warn(f"symprop: GEMM provider tuning failed ({type(e).__name__}: {e}); "
                          f"using SciPy's BLAS", RuntimeWarning, stacklevel=2)
            _install([], {})
        if not _at_exit[0]:
            atexit.register(_save_seen)
            _at_exit[0] = True


def attach(module):
    """Give a newly registered generated module the current providers and choices."""
    if not hasattr(module, "_gemm_providers_install"):
        return module
    with _lock:
        if module not in _modules:
            _modules.append(module)
            if _state:
                _install_into(module, _state["providers"], _state["choices"], _state["active"], _state["default"])
    return module


def _save_seen():
    """At exit: remember the classes the kernels marked as seen, to be measured at the next start."""
    try:
        providers = _state.get("providers") or []
        if not providers or _state.get("forced"):
            return
        seen = _seen_now()
        if not seen:
            return
        cache = read_cache(providers=providers)
        new = set(seen) - set(cache["seen"]) - set(cache["classes"])
        if new:
            cache["seen"] = sorted(set(cache["seen"]) | new)
            write_cache(cache, providers)
    except Exception:     # never fail an exit over a cache
        pass


def report() -> dict:
    """Where the GEMMs run: CPU, SciPy's BLAS, the providers loaded, the forced one if any, and
    per measured class its shape, times, choice and the time saved against SciPy's BLAS."""
    classes = []
    for key, e in sorted(_state.get("classes", {}).items()):
        t = e["times"]
        f64, split, ta, tb, M, N, K = e["shape"]
        classes.append({"key": key, "dtype": "float64" if f64 else "float32", "split": bool(split),
                        "op": f"{'T' if ta else 'N'}{'T' if tb else 'N'}", "M": M, "N": N, "K": K,
                        "choice": e["choice"], "us": {n: round(v * 1e6, 2) for n, v in t.items()},
                        "saved": round(1 - t[e["choice"]] / t["scipy"], 3) if t.get("scipy") else 0.0,
                        "threads": e.get("threads", 1), "overruled": e.get("overruled")})
    return {"cpu": cpu(), "scipy_blas": scipy_blas(),
            "providers": {p.name: {"version": p.version, "path": p.path} for p in _state.get("providers", [])},
            "forced": _state.get("forced"), "classes": classes}


def provider_of(f64, split, ta, tb, M, N, K) -> str:
    """The provider a product of this shape runs on in this process."""
    names = ["scipy"] + [p.name for p in _state.get("providers", [])]
    if not _state.get("active"):
        return names[_state.get("default", 0)] if _state else "scipy"
    key = _tuning_module()._gemm_class(f64, split, ta, tb, M, N, K)
    return names[_state["choices"].get(key, 0)]


class using:
    """Context: every product on provider ``name`` (as ``SYMPROP_GEMM=name`` would), the
    process's choice restored on exit; for benchmarks comparing providers in one run."""

    def __init__(self, name: str):
        if name not in NAMES:
            raise ValueError(f"unknown GEMM provider {name!r}; known: {', '.join(NAMES)}")
        self.name = name

    def __enter__(self):
        setup()
        providers = list(_state.get("providers", []))
        if self.name != "scipy" and self.name not in [p.name for p in providers]:
            p = load(self.name)
            if p is None:
                raise RuntimeError(f"the {self.name} GEMM provider is not installed; {_INSTALL_HINT[self.name]}")
            providers.append(p)
        slot = 0 if self.name == "scipy" else 1 + [p.name for p in providers].index(self.name)
        with _lock:
            for mod in _modules + [_tuning_module()]:
                _install_into(mod, providers, {}, False, slot)
        return self

    def __exit__(self, *exc):
        with _lock:
            st = _state
            for mod in _modules + [_tuning_module()]:
                _install_into(mod, st.get("providers", []), st.get("choices", {}), st.get("active", False),
                              st.get("default", 0))
        return False


def layer_products(model, batch: int) -> list:
    """The GEMMs of a model's dense and convolution layers for a batch, as the kernels call them:
    ``(layer name, role, (f64, split, ta, tb, M, N, K))``: a dense layer's forward x·Wᵀ, input
    pullback g·W and weight pullback gᵀ·x (whole batch, split over threads); a convolution's
    per-sample im2col products (forward W·cols, weight pullback cols·gᵀ, column pullback
    Wᵀ·g; one call each, samples over threads) — those its direct lowering does not replace
    (``conv_lowering.takes_direct``)."""
    from . import layers as L
    f64 = str(getattr(model, "dtype", "float32")) == "float64"
    out, shape = [], model.input_shape
    for la in model.layers:
        nxt = la.output_shape(shape)
        if isinstance(la, L.Dense):
            i, o = la.in_features, la.out_features
            out += [(la.name, "forward", (f64, True, False, True, batch, o, i)),
                    (la.name, "vjp x", (f64, True, False, False, batch, i, o)),
                    (la.name, "vjp W", (f64, True, True, False, o, i, batch))]
        elif isinstance(la, L.Conv2D):
            kh, kw = la.kernel_size
            ckk, hw, o = la.in_channels * kh * kw, nxt[1] * nxt[2], la.out_channels
            for role, label, shape in (("forward", "forward/sample", (o, hw, ckk)),
                                       ("vjp W", "vjp W/sample", (ckk, o, hw)),
                                       ("vjp x", "vjp cols/sample", (ckk, hw, o))):
                if not conv_lowering.takes_direct(role, la.stride, o, ckk):
                    out.append((la.name, label, (f64, False, role == "vjp x", role == "vjp W") + shape))
        shape = nxt
    return out


def _apply(choices: dict):
    """Install ``choices`` (``{class key: slot}``) over the loaded providers in every module."""
    providers = _state.get("providers", [])
    for mod in _modules + [_tuning_module()]:
        _install_into(mod, providers, choices, bool(providers), 0)


def _time_configs(fn, configs: dict, rounds: int = 7, min_round: float = 0.01) -> dict:
    """``{name: seconds per call}`` of ``fn`` under each table in ``configs``: the configurations
    take turns, ``rounds`` times, each turn as many calls as last about ``min_round`` seconds;
    the least mean over the turns (another process can only slow a turn down)."""
    import time
    fn()
    t0 = time.perf_counter()
    fn()
    number = max(1, int(min_round / max(time.perf_counter() - t0, 1e-7)))
    best = {name: float("inf") for name in configs}
    try:
        for _ in range(rounds):
            for name, choices in configs.items():
                _apply(choices)
                fn()
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - t0) / number)
    finally:
        _apply(_state.get("choices", {}))
    return best


def _training_step(model, X, y):
    """One gradient evaluation of ``model`` on (X, y) (forward and backward, what an optimizer
    step multiplies), with its parameters and buffers restored afterwards."""
    from .optimizers import SGD
    opt = SGD(lr=0.0)
    Xv = model._check_X(X)
    yv = model.loss.check_targets(y, len(Xv), (len(Xv),) + tuple(model.output_shape))
    saved = [(b, b.copy()) for b in model.parameters() + model.buffers()]

    def step():
        opt.loss_and_grad(model, Xv, yv)

    def restore():
        for b, c in saved:
            b[...] = c
    return step, restore


def validate(model, X, y, step=None, rounds=7, save=True, label=None) -> dict:
    """Check the tuned choice on a whole step of ``model`` before keeping it: the step (default
    one gradient evaluation on (X, y), the multiplications of an SGD step) is timed, interleaved,
    with the tuned providers on this model's products, with each layer's tuned products alone
    and with all of them on SciPy's BLAS. The fastest of those tables is kept if it beats
    SciPy's by more than :data:`MARGIN`; otherwise SciPy's. The model's classes left out are
    *overruled*: set to SciPy's in this process and (``save``) in the cache, with the step
    times, so later processes keep them on SciPy's too. The per-product measurement cannot see
    what a whole step does (products side by side on threads, caches between a product and the
    elementwise kernels around it); this is the check that the choice is never slower than
    SciPy's BLAS on the model that runs it.

    Returns ``{"model", "batch", "ms": {table: ms}, "kept": [layer], "overruled": [class
    key], "classes": [class key]}``."""
    with _lock:
        setup()
        label = label or f"{type(model).__name__} {model.input_shape} b{len(X)}"
        result = {"model": label, "batch": len(X), "ms": {}, "kept": [], "overruled": [], "classes": []}
        if not _state.get("active"):
            return result
        mod = _tuning_module()
        choices = dict(_state["choices"])
        by_layer = {}
        for name, _role, shape in layer_products(model, len(X)):
            key = mod._gemm_class(*shape)
            if choices.get(key, 0) != 0:
                by_layer.setdefault(name, set()).add(key)
        keys = set().union(*by_layer.values()) if by_layer else set()
        result["classes"] = sorted(keys)
        if not keys:
            return result
        base = {k: v for k, v in choices.items() if k not in keys}
        configs = {"scipy": base, "tuned": choices}
        if len(by_layer) > 1:
            for name, ks in by_layer.items():
                configs[f"only {name}"] = {**base, **{k: choices[k] for k in ks}}
        restore = None
        if step is None:
            step, restore = _training_step(model, X, y)
        try:
            times = _time_configs(step, configs, rounds)
        finally:
            if restore is not None:
                restore()
        result["ms"] = {name: round(1e3 * t, 4) for name, t in times.items()}
        best = min(times, key=times.get)
        if times[best] >= (1 - MARGIN) * times["scipy"]:
            best = "scipy"
        kept = {k for k, v in configs[best].items() if k in keys}
        result["kept"] = [name for name, ks in by_layer.items() if ks <= kept]
        result["overruled"] = sorted(keys - kept)
        if result["overruled"]:
            classes = dict(_state.get("classes", {}))
            for k in result["overruled"]:
                entry = dict(classes.get(k, {"shape": list(decode(k)), "times": {}}))
                entry["overruled"] = {"model": label, "tuned_chose": entry.get("choice"),
                                      "step_ms": result["ms"]}
                entry["choice"] = "scipy"
                classes[k] = entry
            providers = _state["providers"]
            _install(providers, classes)
            if save:
                cache = read_cache(providers=providers)
                cache["classes"].update({k: classes[k] for k in result["overruled"]})
                write_cache(cache, providers)
        return result


def builtin_models() -> list:
    """The built-in models whose products :data:`BUILTIN` lists, with a random batch each:
    ``(label, model, X, y)`` (the MLP 784-256-128-10 at batch 128, the digits MLP 64-512-10
    at 200, LeNet-5 and the CIFAR-style CNN at 64)."""
    import numpy as np
    from . import layers as L
    from .model import Sequential
    from .named_models import cifar_cnn, lenet
    rng = np.random.default_rng(0)

    def batch(shape, n, classes=10):
        return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, classes, n)
    mlp = Sequential([L.Dense(784, 256), L.Tanh(), L.Dense(256, 128), L.Tanh(), L.Dense(128, 10)],
                     dtype="float32", seed=0)
    digits = Sequential([L.Dense(64, 512), L.ReLU(), L.Dense(512, 10)], dtype="float32", seed=0)
    return [("mlp 784-256-128-10 b128", mlp, *batch((784,), 128)),
            ("digits mlp 64-512-10 b200", digits, *batch((64,), 200)),
            ("lenet-5 b64", lenet((1, 28, 28), dtype="float32", seed=0), *batch((1, 28, 28), 64)),
            ("cifar cnn b64", cifar_cnn((3, 32, 32), dtype="float32", seed=0), *batch((3, 32, 32), 64))]


def validate_builtin(log=None, rounds=7) -> list:
    """:func:`validate` on each of :func:`builtin_models` (what ``symprop tune`` runs after
    measuring): a class a model's step runs slower with is overruled to SciPy's BLAS."""
    out = []
    for label, model, X, y in builtin_models():
        r = validate(model, X, y, rounds=rounds, label=label)
        out.append(r)
        if log:
            log(r)
    return out


def layer_report(model, batch: int) -> list:
    """:func:`layer_products` with the provider each runs on in this process."""
    return [{"layer": name, "role": role, "shape": "x".join(map(str, s[4:])),
             "op": f"{'T' if s[2] else 'N'}{'T' if s[3] else 'N'}", "provider": provider_of(*s)}
            for name, role, s in layer_products(model, batch)]


def _reset_for_tests():
    """Forget the configuration (tests switch SYMPROP_GEMM and the cache between cases)."""
    with _lock:
        _configured[0] = False
        _state.clear()
        for mod in list(_modules) + [_tuning_module()]:
            mod._gemm_providers_install([], {}, False, 0)
