"""Bound how long idle OpenMP threads spin before they sleep, so a busy machine does not
stall the kernels.

The generated kernels run their parallel loops on libgomp's threads. Between two loops
libgomp's idle workers spin for ``GOMP_SPINCOUNT`` iterations (300 000 by default) before
sleeping. When another process holds one of the cores, a spinning worker burns its time
slice while the thread that has the work waits for a CPU, at every barrier. Measured on
2 cores beside one busy process, an MLP 784-256-128-10 SGD step took 100-160 ms with the
default spin, 4-7 ms with 3000 spins, 3.5-5 ms with 1000 (1.8 ms on one thread). On an idle
machine 3000 spins cost nothing measurable; 1000 cost about 10 % on grad+HVP and 0 (sleep at
once) 60 %, since a sleeping worker takes tens of microseconds to wake for the next loop.

libgomp reads the variable once, when it is loaded, which is when the first generated
module is imported; :func:`bound_spin` runs before that (``symprop.runtime``'s import). It
never overrides a user's ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``; ``SYMPROP_OPENMP_SPIN=default``
leaves libgomp's default alone.
"""
from __future__ import annotations

import os

#: spins before an idle libgomp worker sleeps (libgomp's default: 300 000)
SPINCOUNT = 3000


def bound_spin(environ=os.environ) -> bool:
    """Set ``GOMP_SPINCOUNT`` unless the user chose a spin or wait policy; True if it set it."""
    own = environ.get("SYMPROP_OPENMP_SPIN")
    if own == "default" or "GOMP_SPINCOUNT" in environ or "OMP_WAIT_POLICY" in environ:
        return False
    count = SPINCOUNT
    if own:
        if not own.isdigit():
            raise ValueError(f"SYMPROP_OPENMP_SPIN must be a non-negative integer or 'default', got {own!r}")
        count = int(own)
    environ["GOMP_SPINCOUNT"] = str(count)
    return True
