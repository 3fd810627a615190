"""Layers from composite specs (``generated/composite.pyx``): BatchNorm1D/2D and Softmax.

A composite layer views its input as (A, C, B) with the group on the middle axis and runs
the spec's fused kernels by role (forward, vjp, jvp, rvjp) through the manifest executor.
The layer itself keeps only constructor arguments, parameters, buffers and the bookkeeping
of running statistics (PyTorch's update rule), which is not a derivative.
"""
from __future__ import annotations

import threading

import numpy as np

from .kernels import SpecKernels, load
from .layer import EVAL, Context, Layer, _backprop_batch_columns, batch_columns, check_float_input, check_positive_int


class CompositeLayer(Layer):
    """Runs the roles of composite specs on (A, C, B) views of its input."""

    def _kernels(self, spec: str) -> SpecKernels:
        return SpecKernels(load("composite"), spec, owner=self.name)

    def layout(self, shape: tuple) -> tuple:
        raise NotImplementedError

    def scalars(self) -> dict:
        return {}

    def check_input(self, x):
        return check_float_input(self, x)

    def _run(self, K: SpecKernels, role: str, env: dict, rec: dict):
        A, C, B = rec["_layout"]
        return K.run(role, env, rec["_dtype"], {**self.scalars(), "A": A, "C": C, "B": B}, rec["_shapes"])

    def _record(self, x, K) -> dict:
        A, C, B = self.layout(x.shape)
        return {"_layout": (A, C, B), "_dtype": x.dtype, "_K": K,
                "_shapes": {"x": x.shape, "y": x.shape, "group": (C,)}}

    def _env(self, rec, **arrays):
        env = {k: v for k, v in rec.items() if not k.startswith("_")}
        env.update(self._spec_arrays())
        env.update(arrays)
        return env

    def _spec_arrays(self) -> dict:
        return {}

    def trainable(self) -> tuple:
        return ()

    def _directions(self, Rx, Rparams) -> dict:
        d = {"Rx": None if Rx is None else np.ascontiguousarray(Rx)}
        for p, v in zip(self.trainable(), Rparams):
            d["R" + p] = v
        return d

    def vjp(self, rec, g, need_input=True):
        outs = self._run(rec["_K"], "vjp", self._env(rec, g=np.ascontiguousarray(g)), rec)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return (outs[0] if need_input else None), list(outs[1:])

    def input_vjp(self, rec, g):
        return self.vjp(rec, g, True)[0]

    def jvp(self, rec, Rx, Rparams):
        return self._run(rec["_K"], "jvp", self._env(rec, **self._directions(Rx, Rparams)), rec)

    def rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        env = self._env(rec, g=np.ascontiguousarray(g), Rg=Rg, **self._directions(Rx, Rparams))
        outs = self._run(rec["_K"], "rvjp", env, rec)
        if outs is None:
            return None, [np.zeros_like(p) for p in self.param_uses()]
        outs = outs if isinstance(outs, tuple) else (outs,)
        return (outs[0] if need_input else None), list(outs[1:])


class _BatchNorm(CompositeLayer):
    ndim = None   # per-sample input rank(s) accepted

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        kind = type(self).__name__
        self.num_features = check_positive_int(kind, "num_features", num_features)
        for nm, v, lo in (("eps", eps, 0.0), ("momentum", momentum, 0.0)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
                    not np.isfinite(v) or v < lo or (nm == "eps" and v == 0) or (nm == "momentum" and v > 1):
                raise ValueError(f"{kind}: {nm} must be a finite number in "
                                 f"{'(0, inf)' if nm == 'eps' else '[0, 1]'}, got {v!r}")
        self.eps, self.momentum = float(eps), float(momentum)
        self.gamma = self.beta = self.running_mean = self.running_var = None
        self._stats_lock = threading.Lock()   # one forward's running-statistics update at a time
        self.train_kernels = self._kernels("batchnorm")
        self.eval_kernels = self._kernels("batchnorm_eval")

    @property
    def name(self):
        return f"{type(self).__name__}({self.num_features})"

    def config(self):
        return {"type": type(self).__name__, "num_features": self.num_features, "eps": self.eps,
                "momentum": self.momentum}

    def init_parameters(self, dtype, rng):
        if self.gamma is None:
            C = self.num_features
            self.gamma, self.beta = np.ones(C, dtype), np.zeros(C, dtype)
            self.running_mean, self.running_var = np.zeros(C, dtype), np.ones(C, dtype)

    def parameters(self):
        return [self.gamma, self.beta]

    def buffers(self):
        return [self.running_mean, self.running_var]

    def trainable(self):
        return ("gamma", "beta")

    def _spec_arrays(self):
        return {"gamma": self.gamma, "beta": self.beta}

    def scalars(self):
        return {"eps": self.eps}

    def output_shape(self, input_shape):
        if len(input_shape) not in self.ndim or input_shape[0] != self.num_features:
            want = " or ".join(f"(N, {self.num_features}{', ...' * (k - 1)})" if k > 1 else f"(N, {self.num_features})"
                               for k in self.ndim)
            raise ValueError(f"{self.name}: expected input of shape {want}, got per-sample shape "
                             f"{tuple(input_shape)}")
        return tuple(input_shape)

    def layout(self, shape):
        return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))

    def forward(self, x, ctx: Context = EVAL):
        x = self.check_input(x)
        self.output_shape(x.shape[1:])
        if not ctx.training:
            rec = self._record(x, self.eval_kernels)
            env = {"x": x, **self._spec_arrays(), "running_mean": self.running_mean, "running_var": self.running_var}
            y, xhat, rstd = self._run(self.eval_kernels, "forward", env, rec)
            rec.update(xhat=xhat, rstd=rstd)
            return y, rec
        rec = self._record(x, self.train_kernels)
        A, C, B = rec["_layout"]
        if A * B < 2:
            raise ValueError(f"{self.name}: batch statistics need more than one value per channel in "
                             f"training, got input of shape {x.shape}")
        y, xhat, rstd, mu, var = self._run(self.train_kernels, "forward", {"x": x, **self._spec_arrays()}, rec)
        if not np.isfinite(var).all():   # computed in double; only its float32 copy can overflow
            c = int(np.argmin(np.isfinite(var)))
            raise ValueError(f"{self.name}: the batch variance of channel {c} exceeds {x.dtype} (inputs up to "
                             f"{float(np.abs(x).max()):.3g}); scale the inputs or use dtype='float64'")
        rec.update(xhat=xhat, rstd=rstd)
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
        return y, rec

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


class BatchNorm1D(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) (PyTorch's BatchNorm1d): per channel,
    ``γ·(x − mean)/sqrt(var + eps) + β`` with batch statistics in train mode (biased
    variance) and the running statistics in eval mode; every train-mode forward updates
    ``running_mean``/``running_var`` with ``momentum`` (unbiased variance). γ, β are
    parameters; the running statistics are buffers (saved in checkpoints)."""
    ndim = (1, 2)


class BatchNorm2D(_BatchNorm):
    """Batch normalization over (N, C, H, W) (PyTorch's BatchNorm2d); see BatchNorm1D."""
    ndim = (3,)


class Softmax(CompositeLayer):
    """``L.Softmax()``: softmax over axis 1 of (N, K) inputs, shifted by each row's maximum.
    For classification prefer the fused loss ``softmax_cross_entropy`` on logits."""

    name = "Softmax"

    def __init__(self):
        self.K = self._kernels("softmax")

    def config(self):
        return {"type": "Softmax"}

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Softmax: expects inputs of shape (N, K), got per-sample shape {tuple(input_shape)}")
        return tuple(input_shape)

    def layout(self, shape):
        return 1, shape[0], shape[1]

    def forward(self, x, ctx: Context = EVAL):
        x = self.check_input(x)
        self.output_shape(x.shape[1:])
        rec = self._record(x, self.K)
        y = self._run(self.K, "forward", {"x": x}, rec)
        rec["y"] = y
        return y, rec

    def factor_backprop(self, rec, groups, g, exact, need_input=True):
        if exact and need_input:
            raise ValueError("hessian_diagonal: method='exact' is not available below Softmax (its second "
                             "derivative couples the classes of a sample); use method='gauss_newton' or "
                             "'hutchinson'")
        return super().factor_backprop(rec, groups, g, False, need_input)

    def bl(self, rec, h, g):
        raise ValueError("Softmax: the Becker-LeCun diagonal is not available through a softmax layer; use "
                         "method='gauss_newton' or 'hutchinson'")
