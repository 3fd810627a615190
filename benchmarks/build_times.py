"""How long a user waits on the compiler: a spec compiled on the fly, and the size of the C.

Prints, each in a fresh process with an empty compile cache (``SYMPROP_CACHE`` in a temporary
folder), the wall time from the call to the first gradient of

- ``L.Activation.from_sympy`` (GELU written by hand): derivation, rendering, Cython, gcc, import;
- a user layer with parameters: a bias-free linear layer ``y[n,o] = Σ_i x[n,i]·W[o,i]``
  derived as a contraction spec and compiled through ``codegen.build.load_or_build`` (the path
  a user contraction takes before L.from_spec gave it a public call);

then the same call again (a cache hit), and the bytes of C that Cython makes of every module of
``generated/`` (with the compiler directives of the install). Run it from the checkout::

    python benchmarks/build_times.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ACTIVATION = """
import time; t0 = time.perf_counter()
import numpy as np, sympy as sp
from symprop import Sequential, layers as L
x = sp.Symbol("x")
act = L.Activation.from_sympy("gelu_user", x * (1 + sp.erf(x / sp.sqrt(2))) / 2, x)
m = Sequential([L.Dense(4, 8), act, L.Dense(8, 3)], seed=0)
m.loss_and_grad(np.ones((5, 4), "f4"), np.array([0, 1, 2, 0, 1]))
print(time.perf_counter() - t0, act.compiled)
"""

LINEAR = """
import time; t0 = time.perf_counter()
import numpy as np, sympy as sp
from symprop.derive.indexed import ContractionSpec, derive_contraction
from symprop.codegen.contraction import render_contraction_module
from symprop.codegen.build import load_or_build
from symprop.runtime.kernels import SpecKernels
n, o, i = sp.symbols("n o i", integer=True)
N, O, I = sp.symbols("N O I", integer=True, positive=True)
x, W = sp.IndexedBase("x"), sp.IndexedBase("W")
spec = ContractionSpec(name="linear_nobias", output="y", out_indices=(n, o),
                       expr=sp.Sum(x[n, i] * W[o, i], (i, 0, I - 1)), inputs={"x": (n, i)},
                       params={"W": (o, i)}, extents={n: N, o: O, i: I})
text = render_contraction_module("user_linear", [derive_contraction(spec)])
module, compiled = load_or_build("user_linear", text, "linear_nobias")
k = SpecKernels(module, "linear_nobias")
X, Wv = np.ones((5, 4)), np.ones((3, 4))
y = k.run("forward", {"x": X, "W": Wv}, np.float64, shapes={"y": (5, 3)})
gW = k.run("vjp:W", {"x": X, "W": Wv, "g": np.ones_like(y)}, np.float64)
assert np.allclose(gW, 5.0)
print(time.perf_counter() - t0, compiled)
"""


def timed(code: str, cache: str) -> tuple[float, str]:
    env = {**os.environ, "SYMPROP_CACHE": cache}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    secs, compiled = r.stdout.split()[-2:]
    return float(secs), compiled


def c_sizes() -> dict:
    sys.path.insert(0, str(ROOT / "codegen"))
    import flags  # codegen/flags.py: the install's compiler directives
    from Cython.Build import cythonize
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for pyx in sorted((ROOT / "generated").glob("*.pyx")):
            dst = Path(tmp) / pyx.name
            dst.write_bytes(pyx.read_bytes())
            (Path(tmp) / "symprop_math.h").write_bytes((ROOT / "generated" / "symprop_math.h").read_bytes())
            cythonize([str(dst)], compiler_directives=flags.CYTHON_DIRECTIVES, quiet=True)
            sizes[pyx.name] = dst.with_suffix(".c").stat().st_size
    return sizes


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    print(f"{cpu_name()}, {os.cpu_count()} cores")
    for label, code in (("from_sympy activation (GELU)", ACTIVATION), ("user layer with parameters (linear, no bias)", LINEAR)):
        with tempfile.TemporaryDirectory() as cache:
            miss, c1 = timed(code, cache)
            hit, c2 = timed(code, cache)
        print(f"{label}: cache miss {miss:.1f} s to the first gradient (compiled={c1}); cache hit {hit:.1f} s")
    sizes = c_sizes()
    for name, size in sizes.items():
        print(f"  {name:18s} {size / 1e6:6.2f} MB of C")
    print(f"generated C, all modules: {sum(sizes.values()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
