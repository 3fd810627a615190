"""Image layers (NCHW): Conv2D, MaxPool2D, AvgPool2D (specs of the window family) and Flatten.

Conv and pooling run the generated window kernels, whose input gradients come from the
derived adjoint of the window's index map. Flatten is a movement op: its pullback is the
inverse reshape (no arithmetic).
"""
from __future__ import annotations

import numpy as np

from .defined import DefinedLayer, defined
from .layer_base import Layer


def out_size(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """PyTorch's output size ⌊(H + 2p − d(k − 1) − 1)/s⌋ + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@defined("Conv2D")
class Conv2D(DefinedLayer):
    """2-D convolution (cross-correlation as in PyTorch); weight (out, in, kh, kw)."""


@defined("MaxPool2D")
class MaxPool2D(DefinedLayer):
    """Max pooling; ties go to the first maximum in row-major window order (PyTorch's choice)."""


@defined("AvgPool2D")
class AvgPool2D(DefinedLayer):
    """Average pooling; zero padding counts in the mean (PyTorch's ``count_include_pad=True``)."""


@defined("Flatten")
class Flatten(Layer):
    """(N, C, H, W) -> (N, C·H·W); a movement op whose pullback is the inverse reshape."""

    name = "Flatten"

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, ctx=None):
        if not isinstance(x, np.ndarray) or x.ndim < 2:
            raise ValueError(f"Flatten: expected a batch (N, ...), got {getattr(x, 'shape', type(x).__name__)}")
        x = np.ascontiguousarray(x)
        return x.reshape(x.shape[0], -1), {"shape": x.shape}

    def vjp(self, rec, g, need_input=True):
        return (g.reshape(rec["shape"]) if need_input else None), []

    def input_vjp(self, rec, g):
        return g.reshape(rec["shape"])

    def jvp(self, rec, Rx, Rparams):
        return None if Rx is None else Rx.reshape(Rx.shape[0], -1)

    def rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        return (Rg.reshape(rec["shape"]) if need_input and Rg is not None else None), []

    def bl(self, rec, h, g):
        return h.reshape(rec["shape"]), []
