"""Which single-precision GEMM from PyPI is fastest here, on the benchmark's shapes?

Times ``sgemm`` of several BLAS builds a user can ``pip install``, called from a C loop
(``_gemm_harness.c``, compiled on the fly with the system C compiler) through a function
pointer, so that a 3 µs product is not drowned by Python's call cost:

- ``scipy``       SciPy's bundled OpenBLAS (``scipy.libs``) — what the generated kernels call
                  today, through ``scipy.linalg.cython_blas`` (``scipy-cython_blas`` times that
                  exact capsule pointer);
- ``numpy``       NumPy's bundled OpenBLAS (ILP64, ``numpy.libs``);
- ``openblas32``  the ``scipy-openblas32`` wheel (the newest OpenBLAS SciPy builds against);
- ``blis``        BLIS from the ``blis`` wheel (cython-blis; ``bli_sgemm``, single-threaded build);
- ``mkl``         Intel MKL from the ``mkl`` wheel (``libmkl_rt``, its own OpenMP runtime);
- ``torch-mkl``   the MKL linked into PyTorch (``sgemm_`` exported by ``libtorch_cpu``), and
  ``torch.mm``    PyTorch's Python-level product (with its dispatch cost) as the reference;
- ``scipy@CORE``  SciPy's OpenBLAS with ``OPENBLAS_CORETYPE=CORE`` (kernel choice forced).

Each library runs in its own subprocess (so two MKLs or OpenBLAS kernel choices never meet)
in three modes: the library at 1 thread (``1t``), at 2 threads (``2t``), and ``split``: two
OpenMP threads each computing half of C with the library at one thread, which is how the
generated dense kernels thread a GEMM (``_pgemm`` in ``codegen/templates``). Shapes are
row-major ``C[M,N] = op(A)·op(B)`` as the kernels call them: the MLP's forward, input-gradient
and weight-gradient products at batch 128, LeNet's and the CIFAR CNN's per-sample im2col
products (what the window kernels call, once per sample) and their whole-batch im2col
equivalents (what a batched im2col would call), and the dense layers of both CNNs at batch 64.

Libraries outside the running environment are found in a scratch venv given by
``--extra-site`` (default ``/work/venv-gemm``; create it with
``python3 -m venv /work/venv-gemm && /work/venv-gemm/bin/pip install numpy scipy threadpoolctl
scipy-openblas32 blis mkl``) and run with that venv's Python. Prints GFLOP/s per shape per
library and mode, the best per shape, and the install size of each extra wheel.

    python benchmarks/gemm_survey.py [--extra-site /work/venv-gemm] [--libs ...] [--json]
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))

#: (label, ta, tb, M, N, K) as the generated kernels call _gemm (row-major C = op(A) op(B))
SHAPES = [
    ("mlp fwd 128x784.784x256", 0, 1, 128, 256, 784),
    ("mlp dx 128x256.256x784", 0, 0, 128, 784, 256),
    ("mlp dW 256x128.128x784", 1, 0, 256, 784, 128),
    ("mlp fwd 128x256.256x128", 0, 1, 128, 128, 256),
    ("mlp dx 128x128.128x256", 0, 0, 128, 256, 128),
    ("mlp dW 128x128.128x256", 1, 0, 128, 256, 128),
    ("mlp fwd 128x128.128x10", 0, 1, 128, 10, 128),
    ("mlp dx 128x10.10x128", 0, 0, 128, 128, 10),
    ("mlp dW 10x128.128x128", 1, 0, 10, 128, 128),
    # LeNet-5 b64: conv1 6@5x5 pad 2 on 1x28x28 (per sample: W 6x25 . cols 25x784)
    ("lenet c1 fwd/sample 6x25.25x784", 0, 0, 6, 784, 25),
    ("lenet c1 dW/sample 6x784.784x25", 0, 1, 6, 25, 784),
    ("lenet c2 fwd/sample 16x150.150x100", 0, 0, 16, 100, 150),
    ("lenet c2 dcols/sample 150x16.16x100", 1, 0, 150, 100, 16),
    ("lenet c2 dW/sample 16x100.100x150", 0, 1, 16, 150, 100),
    ("lenet c1 fwd/batch 6x25.25x50176", 0, 0, 6, 50176, 25),
    ("lenet c2 fwd/batch 16x150.150x6400", 0, 0, 16, 6400, 150),
    ("lenet c2 dW/batch 16x6400.6400x150", 0, 1, 16, 150, 6400),
    ("lenet fc 64x400.400x120", 0, 1, 64, 120, 400),
    ("lenet fc 64x120.120x84", 0, 1, 64, 84, 120),
    # CIFAR CNN b64: conv1 32@3x3 pad 1 on 3x32x32, conv2 64@3x3 pad 1 on 32x16x16, fc 4096->256
    ("cifar c1 fwd/sample 32x27.27x1024", 0, 0, 32, 1024, 27),
    ("cifar c1 dW/sample 32x1024.1024x27", 0, 1, 32, 27, 1024),
    ("cifar c2 fwd/sample 64x288.288x256", 0, 0, 64, 256, 288),
    ("cifar c2 dcols/sample 288x64.64x256", 1, 0, 288, 256, 64),
    ("cifar c2 dW/sample 64x256.256x288", 0, 1, 64, 288, 256),
    ("cifar c1 fwd/batch 32x27.27x65536", 0, 0, 32, 65536, 27),
    ("cifar c2 fwd/batch 64x288.288x16384", 0, 0, 64, 16384, 288),
    ("cifar c2 dW/batch 64x16384.16384x288", 0, 1, 64, 288, 16384),
    ("cifar fc 64x4096.4096x256", 0, 1, 64, 256, 4096),
    ("cifar fc dW 256x64.64x4096", 1, 0, 256, 4096, 64),
    ("square 1024", 0, 0, 1024, 1024, 1024),
]

MODES = ("1t", "2t", "split")

#: short column names for the tables
SHORT = {"scipy": "scipy", "scipy-cython_blas": "cyblas", "numpy": "numpy", "torch-mkl": "t-mkl",
         "torch.mm": "t.mm", "scipy@Haswell": "s@HSW", "scipy@Zen": "s@ZEN", "scipy@SkylakeX": "s@SKX",
         "scipy@Cooperlake": "s@CPL", "openblas32": "ob32", "blis": "blis", "mkl": "mkl",
         "openblas32@Haswell": "ob32@H"}


# ------------------------------------------------------------------ harness
def harness() -> ctypes.CDLL:
    """The compiled C timing loop (cached in the temp directory by source hash)."""
    src = os.path.join(HERE, "_gemm_harness.c")
    with open(src, "rb") as f:
        h = hashlib.sha1(f.read()).hexdigest()[:12]
    so = os.path.join(tempfile.gettempdir(), f"symprop_gemm_harness_{h}.so")
    if not os.path.exists(so):
        tmp = so + f".{os.getpid()}"
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-fopenmp", "-shared", "-fPIC", src, "-o", tmp], check=True)
        os.replace(tmp, so)
    lib = ctypes.CDLL(so)
    lib.time_gemm.restype = ctypes.c_double
    lib.time_gemm.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                              ctypes.c_int]
    return lib


def _addr(dll, name):
    fn = getattr(dll, name, None)
    return None if fn is None else ctypes.cast(fn, ctypes.c_void_p).value


# ------------------------------------------------------------------ libraries (worker side)
def _site_lib(site: str, pattern: str) -> str:
    hits = sorted(glob.glob(os.path.join(site, pattern)))
    if not hits:
        raise FileNotFoundError(f"no {pattern} under {site}")
    return hits[0]


def _python_site() -> str:
    import scipy
    return os.path.dirname(os.path.dirname(scipy.__file__))


def open_library(name: str):
    """``(sgemm address, kind, set_threads(n) or None, info dict)`` for a library name."""
    site = _python_site()
    base = name.split("@")[0]
    info = {}
    if base in ("scipy", "openblas32", "numpy"):
        path = {"scipy": lambda: _site_lib(site, "scipy.libs/libscipy_openblas*.so"),
                "openblas32": lambda: _site_lib(site, "scipy_openblas32/lib/libscipy_openblas*.so"),
                "numpy": lambda: _site_lib(site, "numpy.libs/libscipy_openblas64_*.so")}[base]()
        dll = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
        suf = "64_" if base == "numpy" else ""
        fn = _addr(dll, f"scipy_sgemm_{suf}")
        setter = getattr(dll, f"scipy_openblas_set_num_threads{suf}")
        setter.argtypes = [ctypes.c_int]   # (int64 for ILP64 is passed in a register either way)
        core = getattr(dll, f"scipy_openblas_get_corename{suf}")
        core.restype = ctypes.c_char_p
        conf = getattr(dll, f"scipy_openblas_get_config{suf}", None)
        if conf is not None:
            conf.restype = ctypes.c_char_p
            info["config"] = conf().decode()
        info.update(path=path, core=core().decode())
        return fn, 1 if base == "numpy" else 0, setter, info
    if base == "scipy-cython_blas":
        from scipy.linalg import cython_blas
        cap = cython_blas.__pyx_capi__["sgemm"]
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        getname = ctypes.pythonapi.PyCapsule_GetName
        getname.restype, getname.argtypes = ctypes.c_char_p, [ctypes.py_object]
        fn = get(cap, getname(cap))
        path = _site_lib(site, "scipy.libs/libscipy_openblas*.so")
        dll = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
        setter = dll.scipy_openblas_set_num_threads
        setter.argtypes = [ctypes.c_int]
        info["path"] = "scipy.linalg.cython_blas capsule 'sgemm'"
        return fn, 0, setter, info
    if base == "blis":
        path = _site_lib(site, "blis/cy.*.so")
        dll = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
        from blis import about
        info.update(path=path, version=about.__version__, note="cython-blis is built single-threaded")
        return _addr(dll, "bli_sgemm"), 2, None, info
    if base == "mkl":
        prefix = os.path.dirname(os.path.dirname(os.path.dirname(site)))   # <venv>/lib/pythonX.Y/site-packages
        path = _site_lib(os.path.join(prefix, "lib"), "libmkl_rt.so*")
        dll = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
        setter = dll.MKL_Set_Num_Threads
        setter.argtypes = [ctypes.c_int]
        buf = ctypes.create_string_buffer(256)
        dll.MKL_Get_Version_String(buf, 256)
        info.update(path=path, version=buf.value.decode())
        return _addr(dll, "sgemm_"), 0, setter, info
    if base in ("torch-mkl", "torch.mm"):
        import torch
        path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
        dll = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL) if hasattr(os, "RTLD_NOLOAD") else ctypes.CDLL(path)
        info.update(path=path, version=torch.__version__)
        return _addr(dll, "sgemm_"), 0, torch.set_num_threads, info
    raise ValueError(f"unknown library {name!r}")


def _best_rate(time_once, flops: float, repeat: int = 5, min_round: float = 0.015) -> float:
    """GFLOP/s of the fastest of ``repeat`` rounds of about ``min_round`` seconds
    (``time_once(reps) -> seconds``). The fastest, not the median: on a shared machine other
    processes only ever slow a round down; run the survey several times for the spread."""
    time_once(2)
    one = max(time_once(1), 1e-7)
    reps = max(1, int(min_round / one))
    ts = [time_once(reps) / reps for _ in range(repeat)]
    return flops / float(min(ts)) / 1e9


def worker(name: str, shapes: list, modes: list) -> dict:
    fn, kind, setter, info = open_library(name)
    if not fn:
        raise RuntimeError(f"{name}: no sgemm symbol")
    h = harness()
    rng = np.random.default_rng(0)
    out = {}
    for label, ta, tb, M, N, K in shapes:
        A = rng.random(M * K, dtype=np.float32)
        B = rng.random(K * N, dtype=np.float32)
        C = np.zeros(M * N, np.float32)
        flops = 2.0 * M * N * K
        row = {}
        if name == "torch.mm":
            import torch
            a = torch.from_numpy(A.reshape((K, M) if ta else (M, K)))
            b = torch.from_numpy(B.reshape((N, K) if tb else (K, N)))
            a, b = (a.t() if ta else a), (b.t() if tb else b)
            c = torch.from_numpy(C.reshape(M, N))
            for mode in modes:
                if mode == "split":
                    continue
                torch.set_num_threads(1 if mode == "1t" else 2)

                def once(reps):
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        torch.mm(a, b, out=c)
                    return time.perf_counter() - t0
                row[mode] = _best_rate(once, flops)
            out[label] = row
            continue
        ref = (A.reshape((K, M) if ta else (M, K)).T if ta else A.reshape(M, K)).astype(np.float64) @ \
              (B.reshape((N, K)).T if tb else B.reshape(K, N)).astype(np.float64)
        for mode in modes:
            if mode == "2t" and setter is None:
                continue
            threads = 2 if mode == "2t" else 1
            if setter is not None:
                setter(threads)
            split = 2 if mode == "split" else 1

            def once(reps, split=split):
                return h.time_gemm(fn, kind, ta, tb, M, N, K, A.ctypes.data, B.ctypes.data, C.ctypes.data, reps, split)
            C[:] = 0
            once(1)
            err = float(np.abs(C.reshape(M, N) - ref).max() / max(1.0, np.abs(ref).max()))
            if err > 1e-4:
                raise RuntimeError(f"{name} {label} {mode}: wrong product (relative error {err:.2e})")
            row[mode] = _best_rate(once, flops)
        out[label] = row
    return {"lib": name, "info": info, "gflops": out}


# ------------------------------------------------------------------ parent
def install_size(site: str, dists: list) -> dict:
    """Bytes on disk of each named distribution's installed files in ``site``."""
    from importlib import metadata
    sizes = {}
    for d in metadata.distributions(path=[site]):
        name = d.metadata["Name"].lower()
        if name in dists:
            total = 0
            for f in d.files or ():
                p = f.locate()
                if os.path.isfile(p) and not os.path.islink(p):
                    total += os.path.getsize(p)
            sizes[name] = total
    return sizes


def lib_plan(extra_site: str | None, extra_python: str | None) -> dict:
    """library name -> (python executable, extra environment)."""
    me = sys.executable
    plan = {"scipy": (me, {}), "scipy-cython_blas": (me, {}), "numpy": (me, {}), "torch-mkl": (me, {}),
            "torch.mm": (me, {})}
    for core in ("Haswell", "Zen", "SkylakeX", "Cooperlake"):
        plan[f"scipy@{core}"] = (me, {"OPENBLAS_CORETYPE": core})
    if extra_site and extra_python and os.path.isdir(extra_site):
        for lib in ("openblas32", "blis", "mkl"):
            if glob.glob(os.path.join(extra_site, {"openblas32": "scipy_openblas32", "blis": "blis",
                                                   "mkl": "../../../lib/libmkl_rt.so*"}[lib])):
                plan[lib] = (extra_python, {})
        plan["openblas32@Haswell"] = (extra_python, {"OPENBLAS_CORETYPE": "Haswell"})
    return plan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extra-site", default="/work/venv-gemm", help="venv (or its site-packages) holding the extra wheels")
    ap.add_argument("--libs", default=None, help="comma-separated subset of the libraries")
    ap.add_argument("--shapes", default=None, help="substring filter on shape labels")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=20.0,
                    help="seconds to wait, before each library, for other processes to use < 20%% of the machine")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = [s for s in SHAPES if args.shapes is None or args.shapes in s[0]]
    modes = args.modes.split(",")
    if args.worker:
        print(json.dumps(worker(args.worker, shapes, modes)))
        return
    site, py = args.extra_site, None
    if site and os.path.isdir(site) and not site.rstrip("/").endswith("site-packages"):
        py = os.path.join(site, "bin", "python")
        site = (glob.glob(os.path.join(site, "lib", "python3*", "site-packages")) or [site])[0]
    elif site and os.path.isdir(site):
        py = os.path.join(site, "..", "..", "..", "bin", "python")
    plan = lib_plan(site, py)
    libs = args.libs.split(",") if args.libs else list(plan)
    results, errors = [], {}
    harness()   # compile once, before the workers
    import _machine
    for lib in libs:
        busy = _machine.wait_quiet(timeout=args.wait_quiet)
        exe, env = plan[lib]
        cmd = [exe, os.path.abspath(__file__), "--worker", lib, "--modes", ",".join(modes)]
        if args.shapes:
            cmd += ["--shapes", args.shapes]
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, cwd=tempfile.gettempdir())
        if p.returncode:
            errors[lib] = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
            continue
        results.append({**json.loads(p.stdout.strip().splitlines()[-1]), "busy": busy})
    sizes = install_size(site, ["mkl", "intel-openmp", "tbb", "tcmlib", "umf", "intel-cmplr-lib-ur", "blis",
                                "scipy-openblas32", "numpy", "scipy"]) if site and os.path.isdir(site) else {}
    out = {"results": results, "errors": errors, "install_bytes": sizes}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print_tables(out, shapes, modes)


def print_tables(out, shapes, modes):
    res = out["results"]
    for r in res:
        info = r["info"]
        desc = ", ".join(f"{k} {v}" for k, v in info.items() if k in ("core", "version", "note") and v)
        print(f"# {r['lib']} [{SHORT.get(r['lib'], r['lib'])}]: {desc} ({info.get('path', '')})"
              + (f"; other processes busy {100 * r['busy']:.0f}% of the machine before it" if r.get("busy") is not None else ""))
    for lib, e in out["errors"].items():
        print(f"# {lib}: FAILED: {e}")
    for mode in modes:
        libs = [r for r in res if any(mode in v for v in r["gflops"].values())]
        if not libs:
            continue
        w = 7
        print(f"\nGFLOP/s, mode {mode} ({'library at 1 thread' if mode == '1t' else 'library at 2 threads' if mode == '2t' else '2 OpenMP threads x library at 1 thread, C split in halves'})")
        print(f"{'shape':38s} " + " ".join(f"{SHORT.get(r['lib'], r['lib'])[:w]:>{w}s}" for r in libs) + "  best")
        for label, *_ in shapes:
            vals = [r["gflops"].get(label, {}).get(mode) for r in libs]
            best = max((v, r["lib"]) for v, r in zip(vals, libs) if v is not None) if any(v is not None for v in vals) else None
            print(f"{label:38s} " + " ".join(f"{v:{w}.1f}" if v is not None else f"{'-':>{w}s}" for v in vals)
                  + (f"  {best[1]}" if best else ""))
    print("\nbest of any mode per shape (library, mode):")
    for label, *_ in shapes:
        cands = [(v, r["lib"], m) for r in res for m, v in r["gflops"].get(label, {}).items()]
        if cands:
            cands.sort(reverse=True)
            sc = max((v for v, lib, m in cands if lib == "scipy"), default=None)
            s = ", ".join(f"{lib}/{m} {v:.0f}" for v, lib, m in cands[:3])
            print(f"  {label:38s} {s}" + (f"   (scipy best {sc:.0f})" if sc else ""))
    if out["install_bytes"]:
        print("\ninstall size of the extra wheels (bytes on disk): " +
              ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sorted(out["install_bytes"].items())))


if __name__ == "__main__":
    main()
