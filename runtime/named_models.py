"""Named model builders used by ``symprop train --model`` and the benchmarks."""
from __future__ import annotations

from . import layers as L
from .model import Sequential


def _flat_size(model_layers: list, input_shape: tuple, dtype) -> int:
    """Per-sample size after ``model_layers`` (shape arithmetic only; no data)."""
    import numpy as np
    shape = tuple(input_shape)
    rng = np.random.default_rng(0)
    for la in model_layers:
        shape = la.build(shape, dtype, rng)
    return int(np.prod(shape))


def _dropout(p: float) -> list:
    return [L.Dropout(p)] if p else []


def mlp(input_shape: tuple, classes: int = 10, hidden: int = 512, activation: str = "relu", dropout: float = 0.0,
        batchnorm: bool = False, **kw) -> Sequential:
    """One hidden layer (BatchNorm1D before its activation with ``batchnorm``; dropout after)."""
    act = lambda: L.Activation(activation)  # noqa: E731
    layers = [L.Flatten()] if len(input_shape) > 1 else []
    size = 1
    for s in input_shape:
        size *= s
    bn = [L.BatchNorm1D(hidden)] if batchnorm else []
    return Sequential(layers + [L.Dense(size, hidden)] + bn + [act()] + _dropout(dropout) + [L.Dense(hidden, classes)],
                      input_shape=input_shape, **kw)


def _features_then_head(features_fn, head_fn, input_shape, dtype, **kw) -> Sequential:
    n = _flat_size(features_fn(), input_shape, dtype)
    return Sequential(features_fn() + [L.Flatten()] + head_fn(n), input_shape=input_shape, dtype=dtype, **kw)


def cnn(input_shape: tuple, classes: int = 10, activation: str = "relu", dtype="float32", dropout: float = 0.0,
        batchnorm: bool = False, **kw) -> Sequential:
    """Small CNN for 8x8 digits (works for any size >= 4x4): two 3x3 conv blocks, a hidden layer
    (with dropout before the hidden and the output layer when ``dropout`` > 0; with
    ``batchnorm``, BatchNorm2D after each convolution and BatchNorm1D after the hidden layer,
    each before its activation)."""
    act = lambda: L.Activation(activation)  # noqa: E731
    bn2 = (lambda c: [L.BatchNorm2D(c)]) if batchnorm else (lambda c: [])
    bn1 = [L.BatchNorm1D(128)] if batchnorm else []
    C = input_shape[0]
    return _features_then_head(
        lambda: [L.Conv2D(C, 32, 3, padding=1), *bn2(32), act(), L.Conv2D(32, 64, 3, padding=1), *bn2(64), act(),
                 L.MaxPool2D(2)],
        lambda n: _dropout(dropout) + [L.Dense(n, 128)] + bn1 + [act()] + _dropout(dropout) + [L.Dense(128, classes)],
        input_shape, dtype, **kw)


def lenet(input_shape: tuple, classes: int = 10, dtype="float32", **kw) -> Sequential:
    """LeNet-5 style: conv 6@5x5 (pad 2) -> max pool -> conv 16@5x5 -> max pool -> 120 -> 84 -> classes."""
    C = input_shape[0]
    return _features_then_head(
        lambda: [L.Conv2D(C, 6, 5, padding=2), L.ReLU(), L.MaxPool2D(2), L.Conv2D(6, 16, 5), L.ReLU(),
                 L.MaxPool2D(2)],
        lambda n: [L.Dense(n, 120), L.ReLU(), L.Dense(120, 84), L.ReLU(), L.Dense(84, classes)],
        input_shape, dtype, **kw)


def cifar_cnn(input_shape: tuple, classes: int = 10, dtype="float32", **kw) -> Sequential:
    """CIFAR-style: conv 32@3x3 -> pool -> conv 64@3x3 -> pool -> fc 256 -> classes."""
    C = input_shape[0]
    return _features_then_head(
        lambda: [L.Conv2D(C, 32, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Conv2D(32, 64, 3, padding=1), L.ReLU(),
                 L.MaxPool2D(2)],
        lambda n: [L.Dense(n, 256), L.ReLU(), L.Dense(256, classes)], input_shape, dtype, **kw)


MODELS = {"mlp": mlp, "cnn": cnn, "lenet": lenet, "cifar_cnn": cifar_cnn}
