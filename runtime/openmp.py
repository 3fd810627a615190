"""Bound how long idle OpenMP threads spin before they sleep, so a busy machine does not
stall the kernels.

The generated kernels run their parallel loops on libgomp's threads. Between two loops
libgomp's idle workers spin for ``GOMP_SPINCOUNT`` iterations (300 000 by default) before
sleeping. When another process holds one of the cores, a spinning worker burns its time
slice while the thread that has the work waits for a CPU, at every barrier. Measured on
2 cores beside one busy process, an MLP 784-256-128-10 SGD step took 100-160 ms with the
default spin, 4-7 ms with 3000 spins, 3.5-5 ms with 1000 (1.8 ms on one thread). On an idle
machine 3000 spins cost at most a few percent; 1000 cost about 10 % on grad+HVP and 0 (sleep
at once) 60 %, since a sleeping worker takes tens of microseconds to wake for the next loop.

libgomp reads the variable once, when it is first loaded into the process. :func:`bound_spin`
runs on ``import symprop.runtime``, before any generated module loads it, and sets the
variable only if no libgomp is loaded yet: after ``import torch`` (whose wheel ships its own
``libgomp.so.1``, which symprop's kernels then share) it would change nothing. The variable is
process-wide: an OpenMP library loaded later, and child processes, see it too. It never
overrides a user's ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``; ``SYMPROP_OPENMP_SPIN=default``
leaves libgomp's default alone and ``SYMPROP_OPENMP_SPIN=N`` uses N spins instead.
"""
from __future__ import annotations

import os
import warnings

#: spins before an idle libgomp worker sleeps (libgomp's default: 300 000)
SPINCOUNT = 3000


def libgomp_loaded() -> bool:
    """Whether a libgomp is already mapped into this process (Linux; False where unknown)."""
    try:
        with open("/proc/self/maps") as f:
            return "libgomp" in f.read()
    except OSError:
        return False


def bound_spin(environ=os.environ, loaded=libgomp_loaded) -> bool:
    """Set ``GOMP_SPINCOUNT`` unless the user chose a spin or wait policy or libgomp already
    read its settings; True if it set it."""
    own = environ.get("SYMPROP_OPENMP_SPIN")
    if own == "default" or "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return False
    count = SPINCOUNT
    if own:
        if own.isascii() and own.isdigit():
            count = int(own)
        else:
            warnings.warn(f"SYMPROP_OPENMP_SPIN must be a non-negative integer or 'default', got {own!r}; "
                          f"using {SPINCOUNT}", RuntimeWarning, stacklevel=2)
    if loaded():
        return False
    environ["GOMP_SPINCOUNT"] = str(count)
    return True
