"""Compiler settings for every generated extension (imported by setup.py and codegen.build).

Kept free of imports so the build backend can load it without the package's dependencies.
"""
import os
import platform
import sys


def _isa_flags() -> list:
    """The widest of x86-64-v4 (AVX-512) and x86-64-v3 (AVX2+FMA) the building CPU has: libmvec's
    8-wide tanhf/expf are ~3x faster than the SSE ones, and its 16-wide AVX-512 ones faster
    again (32k floats on the Xeon family 6 model 207: tanhf 27.2 -> 10.9 us, expf 13.2 -> 8.1,
    log1pf 29.3 -> 15.9, expm1f 31.2 -> 13.5). Kernels are compiled where they run (pip install
    from source; the compile cache keys modules by these flags too, ``compile_tag``); set
    SYMPROP_PORTABLE=1 to build for any x86-64."""
    if os.environ.get("SYMPROP_PORTABLE") or platform.machine() != "x86_64":
        return []
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read(100000)
    except OSError:
        return []
    v3 = ("avx2", "fma", "bmi2", "movbe")
    v4 = v3 + ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
    for level, need in (("x86-64-v4", v4), ("x86-64-v3", v3)):
        if all(f" {n}" in info for n in need):
            return [f"-march={level}"]
    return []


def compile_tag() -> str:
    """The compile flags of every module (:func:`extension_kwargs`), as text: part of a cached
    module's name, so a cache folder shared by machines of different CPUs (or flags) never hands
    one an instruction set it lacks."""
    return " ".join(extension_kwargs()["extra_compile_args"])


def _alias_check_flags() -> list:
    """GCC vectorizes a loop over arrays it cannot prove distinct by checking at run time that
    they do not overlap, but gives up past 10 such checks (``vect-max-version-for-alias-checks``):
    a kernel writing 4 arrays while reading 8 (an order-4 Taylor role per direction, a pullback
    of several outputs) stayed scalar. Raised, the order-4 tanh Taylor loop over 262k floats
    ran 1.38 -> 0.54 ms (AVX-512, Xeon family 6 model 207). GCC only (clang has no such limit)."""
    return ["--param=vect-max-version-for-alias-checks=200"] if _is_gcc() else []


def _is_gcc() -> bool:
    import sysconfig
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "gcc").split()[0]
    return "clang" not in os.path.basename(cc) and "icx" not in os.path.basename(cc)


def extension_kwargs() -> dict:
    """-O3 and -fno-math-errno let GCC vectorize libm calls through libmvec; never -ffast-math.

    -fstrict-aliasing overrides Python's -fno-strict-aliasing: without it a float store in a
    kernel loop may alias the loop bound, which GCC then reloads every iteration and the loop
    stays scalar. -fno-trapping-math lets GCC if-convert selects such as ``g·[x > 0]`` (it only
    gives up observing FP exception flags; NaN/inf results are unchanged). Measured: the ReLU
    pullback went from a branchy scalar loop (5 ns/element on random signs) to vector code.
    """
    args = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fstrict-aliasing", "-Wno-unused-function", "-Wno-unreachable-code"]
    args += _alias_check_flags()
    args += _isa_flags()
    extra = os.environ.get("SYMPROP_CFLAGS", "").split()
    libraries = ["m"]
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        libraries = ["mvec", "m"]
    # OpenMP: kernels split samples, GEMM blocks and long arrays over threads (_macros.pyx.j2)
    return {"extra_compile_args": args + ["-fopenmp"] + extra, "extra_link_args": ["-fopenmp"],
            "libraries": libraries}


#: emit_code_comments=False: no copy of every .pyx line as a C comment (they doubled the C);
#: binding=False: the few def functions of a generated module are plain builtins (no CyFunction
#: support code, ~85 kB of C per module); auto_pickle=False: kernel objects hold C function
#: pointers and must not be pickled anyway
CYTHON_DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False,
                     "initializedcheck": False, "cdivision": True, "emit_code_comments": False,
                     "binding": False, "auto_pickle": False}


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def build_jobs() -> int:
    """Parallel Cython and C compiler jobs: every core (``SYMPROP_BUILD_JOBS`` overrides)."""
    env = os.environ.get("SYMPROP_BUILD_JOBS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return usable_cores()
