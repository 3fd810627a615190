"""Image layers (NCHW): Conv2D, MaxPool2D, AvgPool2D (specs of the window family) and Flatten.

Conv and pooling run the generated window kernels, whose input gradients come from the
derived adjoint of the window's index map. Flatten is a movement op: its pullback is the
inverse reshape (no arithmetic).
"""
from __future__ import annotations

import numpy as np

from .kernels import load
from .layer import Layer, SpecLayer, check_positive_int


def _pair(name: str, layer: str, v, minimum: int) -> tuple[int, int]:
    vals = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(vals) != 2 or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a >= minimum
                                 for a in vals):
        raise ValueError(f"{layer}: {name} must be an integer >= {minimum} or a pair of them, got {v!r}")
    return int(vals[0]), int(vals[1])


def out_size(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """PyTorch's output size ⌊(H + 2p − d(k − 1) − 1)/s⌋ + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class _Window(SpecLayer):
    channels = None   # input channels, when the layer fixes them

    def _spatial_out(self, input_shape, k, s, p, d=(1, 1)) -> tuple[int, int]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expects per-sample inputs (C, H, W), got {tuple(input_shape)}")
        H, W = input_shape[1:]
        ho, wo = out_size(H, k[0], s[0], p[0], d[0]), out_size(W, k[1], s[1], p[1], d[1])
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.name}: input of spatial size {H}x{W} is too small for kernel {k}, "
                             f"stride {s}, padding {p}, dilation {d} (output would be {ho}x{wo})")
        return ho, wo

    def check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.name}: input must be a numpy array, got {type(x).__name__}")
        if x.ndim != 4 or (self.channels is not None and x.shape[1] != self.channels):
            want = f"(N, {self.channels}, H, W)" if self.channels is not None else "(N, C, H, W)"
            raise ValueError(f"{self.name}: expected input of shape {want}, got {x.shape}")
        return super().check_input(x)


class Conv2D(_Window):
    """2-D convolution (cross-correlation as in PyTorch); weight (out, in, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True):
        self.in_channels = check_positive_int("Conv2D", "in_channels", in_channels)
        self.out_channels = check_positive_int("Conv2D", "out_channels", out_channels)
        self.kernel_size = _pair("kernel_size", "Conv2D", kernel_size, 1)
        self.stride = _pair("stride", "Conv2D", stride, 1)
        self.padding = _pair("padding", "Conv2D", padding, 0)
        self.dilation = _pair("dilation", "Conv2D", dilation, 1)
        self.bias = bool(bias)
        self.channels = self.in_channels
        self.W = self.b = None
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        self._scalars = {"s_h": sh, "s_w": sw, "p_h": ph, "p_w": pw, "d_h": dh, "d_w": dw}
        self._bind(load("window"), "conv2d")

    @property
    def name(self):
        return f"Conv2D({self.in_channels} -> {self.out_channels}, {self.kernel_size[0]}x{self.kernel_size[1]})"

    def config(self):
        return {"type": "Conv2D", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation), "bias": self.bias}

    def scalars(self):
        return self._scalars

    def init_parameters(self, dtype, rng):
        dtype = np.dtype(dtype)
        if self.W is not None:
            if self.W.dtype != dtype:
                raise TypeError(f"{self.name}: already initialised as {self.W.dtype}, cannot join a {dtype} model")
            return
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / np.sqrt(fan_in)   # PyTorch's nn.Conv2d default init
        self.W = rng.uniform(-bound, bound, (self.out_channels, self.in_channels) + self.kernel_size).astype(dtype)
        self.b = (rng.uniform(-bound, bound, self.out_channels) if self.bias
                  else np.zeros(self.out_channels)).astype(dtype)

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"{self.name}: expects per-sample inputs ({self.in_channels}, H, W), "
                             f"got {tuple(input_shape)}")
        return (self.out_channels,) + self._spatial_out(input_shape, self.kernel_size, self.stride,
                                                        self.padding, self.dilation)

    def spec_arrays(self):
        return {"W": self.W, "b": self.b}

    def penalized(self):
        return [self.W]

    def trainable(self):
        return ("W", "b") if self.bias else ("W",)


class _Pool2D(_Window):
    spec = ""

    def __init__(self, kernel_size, stride=None, padding=0):
        cls = type(self).__name__
        self.kernel_size = _pair("kernel_size", cls, kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _pair("stride", cls, stride, 1)
        self.padding = _pair("padding", cls, padding, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{cls}: padding {self.padding} must be at most half the kernel size "
                             f"{self.kernel_size} (as in PyTorch)")
        (sh, sw), (ph, pw), (kh, kw) = self.stride, self.padding, self.kernel_size
        self._scalars = {"s_h": sh, "s_w": sw, "p_h": ph, "p_w": pw, "K_h": kh, "K_w": kw}
        self._bind(load("window"), self.spec)

    @property
    def name(self):
        return f"{type(self).__name__}({self.kernel_size[0]}x{self.kernel_size[1]})"

    def config(self):
        return {"type": type(self).__name__, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding)}

    def scalars(self):
        return self._scalars

    def output_shape(self, input_shape):
        return (input_shape[0],) + self._spatial_out(input_shape, self.kernel_size, self.stride, self.padding)


class MaxPool2D(_Pool2D):
    """Max pooling; ties go to the first maximum in row-major window order (PyTorch's choice)."""
    spec = "maxpool2d"


class AvgPool2D(_Pool2D):
    """Average pooling; zero padding counts in the mean (PyTorch's ``count_include_pad=True``)."""
    spec = "avgpool2d"


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
