"""Losses: validate targets and call the generated loss kernels."""
from __future__ import annotations

import numpy as np

from .kernels import load

_losses = load("losses")


class Loss:
    name = "loss"
    classification = False

    def value_and_grad(self, out: np.ndarray, y: np.ndarray):
        """``(loss, ∂loss/∂out, ctx)``; ``ctx`` is what :meth:`hvp` needs at this point (per call:
        losses keep no state)."""
        raise NotImplementedError

    def check_targets(self, y, n: int, out_shape: tuple) -> np.ndarray:
        raise NotImplementedError

    def hvp(self, ctx, out: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Loss Hessian (w.r.t. the outputs, at the point ``ctx`` came from) times ``v``."""
        raise NotImplementedError

    def hessian_blocks(self, ctx, out: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Per-sample loss Hessians ``(N, K, K)`` (outputs flattened to K per sample), built
        from the generated HVP kernel applied to the K unit directions."""
        n, k = out.shape[0], out[0].size
        H = np.empty((n, k, k), out.dtype)
        e = np.zeros_like(out)
        flat = e.reshape(n, k)
        for j in range(k):
            flat[:, j] = 1
            H[:, :, j] = self.hvp(ctx, out, y, e).reshape(n, k)
            flat[:, j] = 0
        return H


class SoftmaxCrossEntropy(Loss):
    """Mean over the batch of ``logsumexp(z) − z[label]``; labels are integers (N,)."""
    name = "softmax_cross_entropy"
    classification = True

    def check_targets(self, y, n, out_shape):
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"{self.name}: labels must have shape ({n},), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{self.name}: labels must be integers of shape ({n},), got dtype {y.dtype}"
                             + (" containing NaN" if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any() else ""))
        k = out_shape[-1]
        if n and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{self.name}: labels must lie in [0, {k}), got [{y.min()}, {y.max()}]")
        return np.ascontiguousarray(y, dtype=np.int64)

    def value_and_grad(self, out, y):
        grad, probs = np.empty_like(out), np.empty_like(out)
        loss = _losses.softmax_cross_entropy(out, y, grad, probs)
        return loss, grad, probs

    def value(self, out, y):
        return _losses.softmax_cross_entropy(out, y)

    def hvp(self, ctx, out, y, v):
        return _losses.softmax_cross_entropy_hvp(ctx, np.ascontiguousarray(v), np.empty_like(out))


class MSE(Loss):
    """Mean squared error over all elements (as ``torch.nn.functional.mse_loss``)."""
    name = "mse"

    def check_targets(self, y, n, out_shape):
        y = np.asarray(y)
        if y.shape != (n,) + tuple(out_shape[1:]):
            if y.ndim == 1 and out_shape[1:] == (1,) and y.shape[0] == n:
                y = y.reshape(n, 1)
            else:
                raise ValueError(f"{self.name}: targets must have shape {(n,) + tuple(out_shape[1:])}, got {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError(f"{self.name}: targets of shape {y.shape} contain NaN or inf")
        return y

    def value_and_grad(self, out, y):
        y = np.ascontiguousarray(y, dtype=out.dtype)
        grad = np.empty_like(out)
        return _losses.mse(out, y, grad), grad, None

    def value(self, out, y):
        return _losses.mse(out, np.ascontiguousarray(y, dtype=out.dtype))

    def hvp(self, ctx, out, y, v):
        return _losses.mse_hvp(out, np.ascontiguousarray(y, dtype=out.dtype), np.ascontiguousarray(v),
                               np.empty_like(out))


LOSSES = {"softmax_cross_entropy": SoftmaxCrossEntropy, "cross_entropy": SoftmaxCrossEntropy,
          "mse": MSE}


def get_loss(name) -> Loss:
    if isinstance(name, Loss):
        return name
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    return LOSSES[name]()
