"""Buffers a sweep gives up, reused for the outputs of the next elementwise kernel.

Grad + HVP's working memory peaks where a backward sweep passes an activation after a large
convolution: the pooling pullback's two outputs (the gradient and its R-op, 32 MiB each on
the CIFAR CNN at batch 256) are alive while the activation's fused pullback writes two more
of the same size, though the sweep never reads the first two again. The sweep says so
(:class:`donated` around the call); the kernel-calling layer (``SpecKernels._call``) then
takes an output buffer from the donated arrays instead of allocating one, for kernels that
may write over their inputs: elementwise kernels without parameters, which read every input
at index ``e`` into registers before writing any output at ``e``. A donated array is used at
most once and only if it has the output's shape and dtype, is C-contiguous, writeable and
owns its memory (a view could alias an array still in use).
"""
from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def _stack() -> list:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


class donated:
    """Context: ``arrays`` (None skipped) will not be read again by the caller; kernels called
    inside may write their outputs into them (per thread; nested contexts see only their own)."""

    def __init__(self, *arrays):
        self.arrays = [a for a in arrays if isinstance(a, np.ndarray)]

    def __enter__(self):
        _stack().append(self.arrays)
        return self

    def __exit__(self, *exc):
        _stack().pop()
        return False


def may_donate(layer) -> bool:
    """Whether a sweep may offer ``layer`` the gradients it passes in: the layer runs one
    elementwise kernel without parameters and nothing else (a container such as a residual
    block passes its gradient to inner layers *and* keeps it for the skip path)."""
    return bool(getattr(getattr(layer, "kernels", None), "alias_safe", False))


def take(shape, dtype):
    """A donated array of this shape and dtype (removed from the offer), or None."""
    s = getattr(_local, "stack", None)
    if not s:
        return None
    pool = s[-1]
    dtype = np.dtype(dtype)
    shape = tuple(shape)
    for i, a in enumerate(pool):
        if (a.shape == shape and a.dtype == dtype and a.base is None and a.flags.c_contiguous
                and a.flags.writeable):
            return pool.pop(i)
    return None
