"""Thread-count switches of the loaded BLAS libraries, for the generated kernels' parallel loops.

Generated kernels thread their own loops with OpenMP: a window kernel (conv) runs one sample per
thread, each calling GEMM on that sample's small matrices, and a dense kernel gives each thread a
block of the GEMM. A BLAS with its own thread pool beside ours oversubscribes the cores (its idle
workers spin after each call), and a per-sample conv GEMM ran 1.3x faster with the BLAS at one
thread than at two even serially. So every kernel that calls BLAS holds every BLAS library at one
thread through the ``(get, set)`` function addresses found here, and restores the previous counts
afterwards (``_parallel_enter``/``_parallel_leave`` in ``codegen/templates/_macros.pyx.j2``).

If a BLAS library is loaded whose thread count cannot be set this way (or none is found),
:func:`controls` returns ``None`` and the kernels that call BLAS run serially, which is always correct.
The number of threads is OpenMP's (``OMP_NUM_THREADS``, ``threadpoolctl.threadpool_limits``).
"""
from __future__ import annotations

import ctypes
import itertools
import os

#: (get, set) thread-count functions per BLAS implementation, as ``threadpoolctl`` names them;
#: each get is ``int f(void)`` and each set ``void f(int)``.
_SYMBOLS = {
    "openblas": [(f"{p}openblas_get_num_threads{s}", f"{p}openblas_set_num_threads{s}")
                 for p, s in itertools.product(("", "scipy_"), ("", "64_", "_64"))],
    "mkl": [("MKL_Get_Max_Threads", "MKL_Set_Num_Threads")],
    "blis": [("bli_thread_get_num_threads", "bli_thread_set_num_threads")],
    "flexiblas": [("flexiblas_get_num_threads", "flexiblas_set_num_threads")],
}


def _address(dynlib, name: str) -> int | None:
    fn = getattr(dynlib, name, None)
    return None if fn is None else ctypes.cast(fn, ctypes.c_void_p).value


def controls() -> tuple[tuple[int, int], ...] | None:
    """``(get, set)`` addresses for every loaded BLAS library, or ``None`` if one of them has
    no known thread-count functions (then kernels must not call BLAS from parallel loops)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    found = []
    for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
        try:   # already loaded: this only finds the handle
            dynlib = ctypes.CDLL(lib.filepath, mode=getattr(os, "RTLD_NOLOAD", 0))
        except OSError:
            return None
        for get_name, set_name in _SYMBOLS.get(lib.internal_api, ()):
            get, set_ = _address(dynlib, get_name), _address(dynlib, set_name)
            if get and set_:
                found.append((get, set_))
                break
        else:
            return None
    return tuple(found) or None   # none found: the BLAS in use is not one we can see


def one_thread():
    """A context in which NumPy's BLAS and LAPACK calls (e.g. Newton's eigensolve) run on one
    thread, as the kernels hold BLAS: results independent of the thread count, and no BLAS
    pool spinning beside the kernels' OpenMP threads."""
    import contextlib
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
