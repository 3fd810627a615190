"""Layers from composite specs (``generated/composite.pyx``): BatchNorm1D/2D and Softmax.

A composite layer views its input as (A, C, B) with the group on the middle axis and runs
the spec's fused kernels by role (forward, vjp, jvp, rvjp) through the same executor as every
spec layer (:class:`~symprop.runtime.layer_base.SpecLayer`). Arguments, parameters, buffers and the
shape rule come from the layers' definitions (``derive/builtins.py``); the layer itself keeps
only the bookkeeping of running statistics (PyTorch's update rule), which is not a derivative.
"""
from __future__ import annotations

import threading

import numpy as np

from .defined import DefinedMixin, defined
from .kernels import SpecKernels
from .layer_base import EVAL, Context, SpecLayer, _backprop_batch_columns, batch_columns, check_float_input


class CompositeLayer(SpecLayer):
    """A layer of a composite spec: the spec executor of :class:`SpecLayer` on (A, C, B) views
    of the input (the group on the middle axis); the layout is a kernel scalar of each call."""

    def layout(self, shape: tuple) -> tuple:
        raise NotImplementedError

    @staticmethod
    def _fold(rec, grads):
        """The kernels' parameter pullbacks as the parameters' gradients (a user's group layer
        tiles its parameters per sample and sums them back)."""
        return list(grads)

    def call_scalars(self, shape, dtype=None):
        A, C, B = self.layout(shape)
        return {**self.scalars(), "A": A, "C": C, "B": B}

    def call_shapes(self, x):
        return {"x": x.shape, "y": x.shape, "group": (self.layout(x.shape)[1],)}

    def check_input(self, x):
        x = check_float_input(self, x)
        self.output_shape(x.shape[1:])
        return x


class _BatchNorm(DefinedMixin, CompositeLayer):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        self._define(num_features, eps, momentum)
        self._stats_lock = threading.Lock()   # one forward's running-statistics update at a time
        self._bind("composite", self.definition.spec.name)
        self.eval_kernels = SpecKernels("composite", self.definition.specs[0].name, owner=self.name)

    @property
    def train_kernels(self):
        return self.kernels

    def scalars(self):
        return {"eps": self.eps}

    def layout(self, shape):
        return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))

    def forward(self, x, ctx: Context = EVAL):
        if not ctx.training:
            env, rec = self.forward_call(x, K=self.eval_kernels)
            return env["y"], rec
        x = self.check_input(x)
        A, C, B = self.layout(x.shape)
        if A * B < 2:
            raise ValueError(f"{self.name}: batch statistics need more than one value per channel in "
                             f"training, got input of shape {x.shape}")
        env, rec = self.forward_call(x, K=self.train_kernels)
        mu, var = env["mu"], env["var"]
        if not np.isfinite(var).all():   # computed in double; only its float32 copy can overflow
            c = int(np.argmin(np.isfinite(var)))
            raise ValueError(f"{self.name}: the batch variance of channel {c} exceeds {x.dtype} (inputs up to "
                             f"{float(np.abs(x).max()):.3g}); scale the inputs or use dtype='float64'")
        if ctx.update_buffers:   # PyTorch: running ← (1 − m)·running + m·batch, unbiased variance
            m, n = self.momentum, A * B
            # in double, then stored: in float32 a momentum such as 1e-50 would round to 0 (the
            # statistics never move) and m·n/(n − 1)·var could overflow for a variance near the maximum
            with self._stats_lock:   # read-modify-write: threads sharing the layer must not interleave
                new_var = (1 - m) * self.running_var.astype(np.float64) + (m * n / (n - 1)) * var.astype(np.float64)
                if new_var.max(initial=0.0) > np.finfo(self.running_var.dtype).max:
                    c = int(np.argmax(new_var))
                    raise ValueError(f"{self.name}: the running variance of channel {c} would exceed "
                                     f"{self.running_var.dtype} (batch variance {float(var[c]):.3g} times "
                                     f"n/(n - 1) = {n / (n - 1):g}); scale the inputs or use dtype='float64'")
                new_mean = (1 - m) * self.running_mean.astype(np.float64) + m * mu.astype(np.float64)
                self.running_mean[...] = new_mean
                self.running_var[...] = new_var
        return env["y"], rec

    def check_state(self, where: str) -> None:
        """Refuse running statistics no training could produce (a damaged or edited checkpoint):
        a non-finite mean, or a variance that is negative or non-finite."""
        if not np.isfinite(self.running_mean).all():
            raise ValueError(f"{where}: {self.name} has a non-finite running_mean")
        bad = ~np.isfinite(self.running_var) | (self.running_var < 0)
        if bad.any():
            raise ValueError(f"{where}: {self.name} has a negative or non-finite running_var (channel "
                             f"{int(np.argmax(bad))}: {self.running_var[np.argmax(bad)]!r})")

    def factor_backprop(self, rec, groups, g, exact, need_input=True):
        """Batch statistics couple the samples: factor columns continue as whole-batch
        columns (:func:`batch_columns`). The exact diagonal would need BatchNorm's own
        second-order term, which is not diagonal: refused below a train-mode BatchNorm."""
        training = rec["_K"] is self.train_kernels
        if exact and need_input and training:
            raise ValueError(f"hessian_diagonal: method='exact' is not available below {self.name} in train "
                             f"mode (its second derivative couples the samples of a batch); use "
                             f"method='gauss_newton' or 'hutchinson'")
        if training:
            groups = [batch_columns(S, w) for S, w in groups]
        return super().factor_backprop(rec, groups, g, False, need_input)

    def bl(self, rec, h, g):
        raise ValueError(f"{self.name}: the Becker-LeCun diagonal is not available through batch "
                         f"normalization; use method='gauss_newton' or 'hutchinson'")

    def sq_param_grads(self, rec, S, w):
        # per-sample columns (eval mode): each column's parameter pullback as a whole-batch column
        diag = [np.zeros_like(p) for p in self.parameters()]
        _backprop_batch_columns(self, rec, *batch_columns(S, w), diag, need_input=False)
        return diag


@defined("BatchNorm1D")
class BatchNorm1D(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) (PyTorch's BatchNorm1d): per channel,
    ``γ·(x − mean)/sqrt(var + eps) + β`` with batch statistics in train mode (biased
    variance) and the running statistics in eval mode; every train-mode forward updates
    ``running_mean``/``running_var`` with ``momentum`` (unbiased variance). γ, β are
    parameters; the running statistics are buffers (saved in checkpoints)."""


@defined("BatchNorm2D")
class BatchNorm2D(_BatchNorm):
    """Batch normalization over (N, C, H, W) (PyTorch's BatchNorm2d); see BatchNorm1D."""


@defined("Softmax")
class Softmax(DefinedMixin, CompositeLayer):
    """``L.Softmax()``: softmax over axis 1 of (N, K) inputs, shifted by each row's maximum.
    For classification prefer the fused loss ``softmax_cross_entropy`` on logits."""

    def __init__(self):
        self._define()
        self._bind("composite", self.definition.spec.name)

    def layout(self, shape):
        return 1, shape[0], shape[1]

    def factor_backprop(self, rec, groups, g, exact, need_input=True):
        if exact and need_input:
            raise ValueError("hessian_diagonal: method='exact' is not available below Softmax (its second "
                             "derivative couples the classes of a sample); use method='gauss_newton' or "
                             "'hutchinson'")
        return super().factor_backprop(rec, groups, g, False, need_input)

    def bl(self, rec, h, g):
        raise ValueError("Softmax: the Becker-LeCun diagonal is not available through a softmax layer; use "
                         "method='gauss_newton' or 'hutchinson'")
