"""Image layers (NCHW): Conv2D, MaxPool2D, AvgPool2D and Flatten.

Conv and pooling call the generated window kernels (``symprop.generated.window``), whose
input gradients come from the derived adjoint of the window's index map. Flatten is a
movement op: its pullback is the inverse reshape (no arithmetic).
"""
from __future__ import annotations

import numpy as np

from ..generated import window as _win
from .layers import Layer, weight_bias


def _pair(name: str, layer: str, v, minimum: int) -> tuple[int, int]:
    vals = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(vals) != 2 or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and a >= minimum
                                 for a in vals):
        raise ValueError(f"{layer}: {name} must be an integer >= {minimum} or a pair of them, got {v!r}")
    return int(vals[0]), int(vals[1])


def out_size(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """PyTorch's output size ⌊(H + 2p − d(k − 1) − 1)/s⌋ + 1."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class _Window(Layer):
    def _check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.name}: input must be a numpy array, got {type(x).__name__}")
        if x.ndim != 4 or x.shape[1:] != self.in_shape:
            raise ValueError(f"{self.name}: expected input of shape (N, {', '.join(map(str, self.in_shape))}), "
                             f"got {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"{self.name}: input dtype {x.dtype} does not match the layer's {self.dtype}")
        return np.ascontiguousarray(x)

    def _spatial_out(self, input_shape, k, s, p, d=(1, 1)) -> tuple[int, int]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expects per-sample inputs (C, H, W), the previous layer gives "
                             f"{tuple(input_shape)}")
        H, W = input_shape[1:]
        ho, wo = out_size(H, k[0], s[0], p[0], d[0]), out_size(W, k[1], s[1], p[1], d[1])
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.name}: input of spatial size {H}x{W} is too small for kernel {k}, "
                             f"stride {s}, padding {p}, dilation {d} (output would be {ho}x{wo})")
        return ho, wo


class Conv2D(_Window):
    """2-D convolution (cross-correlation as in PyTorch); weight (out, in, kh, kw)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True):
        for nm, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Conv2D: {nm} must be a positive integer, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair("kernel_size", "Conv2D", kernel_size, 1)
        self.stride = _pair("stride", "Conv2D", stride, 1)
        self.padding = _pair("padding", "Conv2D", padding, 0)
        self.dilation = _pair("dilation", "Conv2D", dilation, 1)
        self.bias = bool(bias)
        self.W = self.b = None

    @property
    def name(self):
        return f"Conv2D({self.in_channels} -> {self.out_channels}, {self.kernel_size[0]}x{self.kernel_size[1]})"

    def config(self):
        return {"type": "Conv2D", "in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation), "bias": self.bias}

    @property
    def geometry(self) -> dict:
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        return {"s_h": sh, "s_w": sw, "p_h": ph, "p_w": pw, "d_h": dh, "d_w": dw}

    def build(self, input_shape, dtype, rng):
        self.dtype = np.dtype(dtype)
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"{self.name}: expects per-sample inputs ({self.in_channels}, H, W), "
                             f"the previous layer gives {tuple(input_shape)}")
        ho, wo = self._spatial_out(input_shape, self.kernel_size, self.stride, self.padding, self.dilation)
        self.in_shape, self.out_shape = tuple(input_shape), (self.out_channels, ho, wo)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / np.sqrt(fan_in)   # PyTorch's nn.Conv2d default init
        self.W = rng.uniform(-bound, bound, (self.out_channels, self.in_channels) + self.kernel_size).astype(self.dtype)
        self.b = (rng.uniform(-bound, bound, self.out_channels) if self.bias
                  else np.zeros(self.out_channels)).astype(self.dtype)
        return self.out_shape

    def parameters(self):
        return [self.W, self.b] if self.bias else [self.W]

    def forward(self, x):
        self.x = self._check_input(x)
        y = np.empty((x.shape[0],) + self.out_shape, self.dtype)
        return _win.conv2d_forward(self.x, self.W, self.b, y, **self.geometry)

    def backward(self, g, need_input_grad=True):
        g = np.ascontiguousarray(g)
        gW = _win.conv2d_vjp_W(x=self.x, g=g, gW=np.empty_like(self.W), **self.geometry)
        grads = [gW, _win.conv2d_vjp_b(g=g, gb=np.empty_like(self.b))] if self.bias else [gW]
        gx = self.input_vjp(g) if need_input_grad else None
        return gx, grads

    def jvp(self, Rx, Rparams):
        RW, Rb = weight_bias(Rparams, self.bias)
        Ry = np.empty((self.x.shape[0],) + self.out_shape, self.dtype)
        return _win.conv2d_jvp(self.x, self.W, Rx=Rx, RW=RW, Rb=Rb, Ry=Ry, **self.geometry)

    def rvjp(self, g, Rg, Rx, Rparams, need_input_grad=True):
        RW, _ = weight_bias(Rparams, self.bias)
        g = np.ascontiguousarray(g)
        RgW = _win.conv2d_rvjp_W(self.x, g, Rx=Rx, Rg=Rg, RgW=np.empty_like(self.W), **self.geometry)
        Rgrads = [RgW, _win.conv2d_rvjp_b(Rg=Rg, Rgb=np.empty_like(self.b))] if self.bias else [RgW]
        Rgx = _win.conv2d_rvjp_x(self.W, g, RW=RW, Rg=Rg, Rgx=np.empty_like(self.x), **self.geometry) \
            if need_input_grad else None
        return Rgx, Rgrads

    def input_vjp(self, g):
        return _win.conv2d_vjp_x(W=self.W, g=np.ascontiguousarray(g), gx=np.empty_like(self.x), **self.geometry)

    def sq_param_grads(self, S, w):
        # a weight is shared across positions, so per-sample gradients are formed one by one
        gW, gb = np.zeros_like(self.W), np.zeros_like(self.b)
        tW, tb = np.empty_like(self.W), np.empty_like(self.b)
        for k in range(S.shape[0]):
            for n in range(S.shape[1]):
                if w[k, n] == 0:
                    continue
                s = np.ascontiguousarray(S[k, n:n + 1])
                _win.conv2d_vjp_W(x=self.x[n:n + 1], g=s, gW=tW, **self.geometry)
                gW += w[k, n] * tW * tW
                if self.bias:
                    _win.conv2d_vjp_b(g=s, gb=tb)
                    gb += w[k, n] * tb * tb
        return [gW, gb] if self.bias else [gW]

    def diag_backprop(self, h, g):
        h = np.ascontiguousarray(h)
        hx = _win.conv2d_vjp_x(W=self.W * self.W, g=h, gx=np.empty_like(self.x), **self.geometry)
        hW = _win.conv2d_vjp_W(x=self.x * self.x, g=h, gW=np.empty_like(self.W), **self.geometry)
        return hx, ([hW, _win.conv2d_vjp_b(g=h, gb=np.empty_like(self.b))] if self.bias else [hW])


class _Pool2D(_Window):
    kind = ""

    def __init__(self, kernel_size, stride=None, padding=0):
        cls = type(self).__name__
        self.kernel_size = _pair("kernel_size", cls, kernel_size, 1)
        self.stride = self.kernel_size if stride is None else _pair("stride", cls, stride, 1)
        self.padding = _pair("padding", cls, padding, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{cls}: padding {self.padding} must be at most half the kernel size "
                             f"{self.kernel_size} (as in PyTorch)")

    @property
    def name(self):
        return f"{type(self).__name__}({self.kernel_size[0]}x{self.kernel_size[1]})"

    def config(self):
        return {"type": type(self).__name__, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding)}

    @property
    def geometry(self) -> dict:
        (sh, sw), (ph, pw), (kh, kw) = self.stride, self.padding, self.kernel_size
        return {"s_h": sh, "s_w": sw, "p_h": ph, "p_w": pw, "K_h": kh, "K_w": kw}

    def build(self, input_shape, dtype, rng):
        self.dtype = np.dtype(dtype)
        ho, wo = self._spatial_out(input_shape, self.kernel_size, self.stride, self.padding)
        self.in_shape, self.out_shape = tuple(input_shape), (input_shape[0], ho, wo)
        return self.out_shape


class MaxPool2D(_Pool2D):
    """Max pooling; ties go to the first maximum in row-major window order (PyTorch's choice)."""

    def forward(self, x):
        x = self._check_input(x)
        self.x_shape = x.shape
        y = np.empty((x.shape[0],) + self.out_shape, self.dtype)
        self.M = np.empty(y.shape, np.int64)
        y, _ = _win.maxpool2d_forward(x, y, self.M, **self.geometry)
        return y

    def backward(self, g, need_input_grad=True):
        if not need_input_grad:
            return None, []
        gx = np.empty(self.x_shape, self.dtype)
        return _win.maxpool2d_vjp_x(g=np.ascontiguousarray(g), M=self.M, gx=gx, **self.geometry), []

    def jvp(self, Rx, Rparams):
        if Rx is None:
            return None
        Ry = np.empty(self.M.shape, self.dtype)
        return _win.maxpool2d_jvp(Rx=Rx, M=self.M, Ry=Ry, **self.geometry)

    def rvjp(self, g, Rg, Rx, Rparams, need_input_grad=True):
        if not need_input_grad or Rg is None:
            return None, []
        Rgx = np.empty(self.x_shape, self.dtype)
        return _win.maxpool2d_rvjp_x(Rg=Rg, M=self.M, Rgx=Rgx, **self.geometry), []

    def diag_backprop(self, h, g):
        return self.backward(h)[0], []    # Jacobian entries are 0 or 1: squares are the same


class AvgPool2D(_Pool2D):
    """Average pooling; zero padding counts in the mean (PyTorch's ``count_include_pad=True``)."""

    def forward(self, x):
        x = self._check_input(x)
        self.x_shape = x.shape
        y = np.empty((x.shape[0],) + self.out_shape, self.dtype)
        return _win.avgpool2d_forward(x, y, **self.geometry)

    def backward(self, g, need_input_grad=True):
        if not need_input_grad:
            return None, []
        gx = np.empty(self.x_shape, self.dtype)
        return _win.avgpool2d_vjp_x(g=np.ascontiguousarray(g), gx=gx, **self.geometry), []

    def jvp(self, Rx, Rparams):
        if Rx is None:
            return None
        Ry = np.empty((Rx.shape[0],) + self.out_shape, self.dtype)
        return _win.avgpool2d_jvp(Rx=Rx, Ry=Ry, **self.geometry)

    def rvjp(self, g, Rg, Rx, Rparams, need_input_grad=True):
        if not need_input_grad or Rg is None:
            return None, []
        Rgx = np.empty(self.x_shape, self.dtype)
        return _win.avgpool2d_rvjp_x(Rg=Rg, Rgx=Rgx, **self.geometry), []

    def diag_backprop(self, h, g):
        # Jacobian entries are 0 or the window weight c = 1/(K_h·K_w) of the AVGPOOL2D spec:
        # squared entries are c times the entries
        return self.backward(h)[0] / (self.kernel_size[0] * self.kernel_size[1]), []


class Flatten(Layer):
    """(N, C, H, W) -> (N, C·H·W); a movement op whose pullback is the inverse reshape."""

    name = "Flatten"

    def build(self, input_shape, dtype, rng):
        self.dtype = np.dtype(dtype)
        self.in_shape = tuple(input_shape)
        return (int(np.prod(input_shape)),)

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.shape[1:] != self.in_shape:
            raise ValueError(f"Flatten: expected input of shape (N, {', '.join(map(str, self.in_shape))}), "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
        return np.ascontiguousarray(x).reshape(x.shape[0], -1)

    def backward(self, g, need_input_grad=True):
        return (g.reshape((g.shape[0],) + self.in_shape) if need_input_grad else None), []

    def jvp(self, Rx, Rparams):
        return None if Rx is None else Rx.reshape(Rx.shape[0], -1)

    def rvjp(self, g, Rg, Rx, Rparams, need_input_grad=True):
        return self.backward(Rg, need_input_grad) if Rg is not None else (None, [])

    def diag_backprop(self, h, g):
        return self.backward(h)[0], []
