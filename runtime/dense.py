"""``Dense``: the fully connected layer ``y = x Wᵀ + b`` of the ``dense`` spec."""
from __future__ import annotations

import numpy as np

from .kernels import load
from .layer import SpecLayer, check_positive_int


class Dense(SpecLayer):
    """Fully connected layer ``y = x Wᵀ + b`` (PyTorch layout: W is (out, in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        self.in_features = check_positive_int("Dense", "in_features", in_features)
        self.out_features = check_positive_int("Dense", "out_features", out_features)
        self.bias = bool(bias)
        self.W = self.b = None
        self._bind(load("dense"), "dense")

    @property
    def name(self):
        return f"Dense({self.in_features} -> {self.out_features})"

    def config(self):
        return {"type": "Dense", "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias}

    def init_parameters(self, dtype, rng):
        dtype = np.dtype(dtype)
        if self.W is not None:
            if self.W.dtype != dtype:
                raise TypeError(f"{self.name}: already initialised as {self.W.dtype}, cannot join a {dtype} model")
            return
        bound = 1.0 / np.sqrt(self.in_features)   # PyTorch's nn.Linear default init
        self.W = rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(dtype)
        self.b = (rng.uniform(-bound, bound, (self.out_features,)) if self.bias
                  else np.zeros(self.out_features)).astype(dtype)   # bias=False: a constant zero

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self.name}: expects per-sample inputs of shape ({self.in_features},), "
                             f"got {tuple(input_shape)}")
        return (self.out_features,)

    def spec_arrays(self):
        return {"W": self.W, "b": self.b}

    def trainable(self):
        return ("W", "b") if self.bias else ("W",)

    def check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.name}: input must be a numpy array, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_features}), got {x.shape}")
        if x.dtype != self.W.dtype:
            raise TypeError(f"{self.name}: input dtype {x.dtype} does not match the layer's {self.W.dtype}")
        return np.ascontiguousarray(x)
