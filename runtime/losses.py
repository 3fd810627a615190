"""Losses: validate targets and run the generated loss kernels by role (``value``,
``value+grad``, ``hvp``) through the manifest executor, as layers run theirs."""
from __future__ import annotations

import numpy as np

from .kernels import SpecKernels

_builtin: dict = {}


def _kernels(spec: str) -> SpecKernels:
    """The roles of the built-in loss ``spec`` (``generated/losses``, loaded at first use)."""
    K = _builtin.get(spec)
    if K is None:
        K = _builtin[spec] = SpecKernels("losses", spec)
    return K


class Loss:
    name = "loss"
    classification = False
    #: the loss's scalar arguments (Huber's delta) -> values, passed to its kernels
    scalars: dict = {}

    def value_and_grad(self, out: np.ndarray, y: np.ndarray):
        """``(loss, ∂loss/∂out, ctx)``; ``ctx`` is what :meth:`hvp` needs at this point (per call:
        losses keep no state)."""
        raise NotImplementedError

    def check_targets(self, y, n: int, out_shape: tuple) -> np.ndarray:
        raise NotImplementedError

    def hvp(self, ctx, out: np.ndarray, y: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Loss Hessian (w.r.t. the outputs, at the point ``ctx`` came from) times ``v``."""
        raise NotImplementedError

    def predict(self, out: np.ndarray) -> np.ndarray:
        """What ``model.predict`` returns for network outputs ``out``."""
        return out

    def correct(self, out, y) -> tuple[int, int] | None:
        """``(correct predictions, predictions)`` for accuracy, or None (regression)."""
        return None

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
    """Mean over the batch of ``logsumexp(z) − Σ t·z``: integer labels (N,) (t one-hot) or
    probability targets (N, K) whose rows sum to 1."""
    name = "softmax_cross_entropy"
    classification = True

    def check_targets(self, y, n, out_shape):
        y = np.asarray(y)
        k = out_shape[-1]
        if y.ndim == 2:
            return self._check_probabilities(y, n, k)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"{self.name}: labels must have shape ({n},) or probabilities ({n}, {k}), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{self.name}: labels must be integers of shape ({n},), got dtype {y.dtype}"
                             + (" containing NaN" if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any() else ""))
        if n and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{self.name}: labels must lie in [0, {k}), got [{y.min()}, {y.max()}]")
        return np.ascontiguousarray(y, dtype=np.int64)

    def _check_probabilities(self, y, n, k):
        if y.shape != (n, k):
            raise ValueError(f"{self.name}: probability targets must have shape ({n}, {k}), got {y.shape}")
        if not np.issubdtype(y.dtype, np.floating):
            raise TypeError(f"{self.name}: probability targets must be floats, got dtype {y.dtype}")
        if not np.isfinite(y).all() or y.min() < 0 or y.max() > 1:
            raise ValueError(f"{self.name}: probability targets must lie in [0, 1]")
        rows = y.sum(axis=1, dtype=np.float64)
        # the derived gradient p − t and HVP assume Σt = 1: a row off by δ would shift the
        # gradient by δ·p, so sums must be 1 to the targets' own rounding
        tol = 4 * k * float(np.finfo(y.dtype).eps)
        if np.abs(rows - 1).max() > tol:
            raise ValueError(f"{self.name}: probability target rows must sum to 1 (within {tol:.1e} for "
                             f"{y.dtype}), got sums in [{rows.min():.17g}, {rows.max():.17g}]; "
                             f"normalize them, e.g. t / t.sum(axis=1, keepdims=True)")
        return np.ascontiguousarray(y)

    def _targets(self, out, y) -> tuple:
        """The role suffix and environment of targets ``y``: labels, or probabilities (``:soft``)."""
        if y.ndim == 2:
            return ":soft", {"z": out, "t": np.ascontiguousarray(y, dtype=out.dtype)}
        return "", {"z": out, "labels": y}

    def value_and_grad(self, out, y):
        soft, env = self._targets(out, y)
        loss, grad, probs = _kernels(self.name).run("value+grad" + soft, env, out.dtype)
        return loss, grad, probs

    def value(self, out, y):
        soft, env = self._targets(out, y)
        return _kernels(self.name).run("value" + soft, env, out.dtype)

    def hvp(self, ctx, out, y, v):
        return _kernels(self.name).run("hvp", {"probs": ctx, "v": np.ascontiguousarray(v), "z": out}, out.dtype)

    def predict(self, out):
        return out.argmax(axis=1)

    def correct(self, out, y) -> tuple[int, int]:
        labels = y.argmax(axis=1) if y.ndim == 2 else y
        return int((out.argmax(axis=1) == labels).sum()), len(labels)


class ElementwiseMeanLoss(Loss):
    """A loss that is the mean over all elements of ``ℓ(z, t)``, real targets ``t`` shaped like
    the output: its spec's ``value``, ``value+grad`` and ``hvp`` roles (MSE, sigmoid
    cross-entropy, losses from :func:`from_sympy`)."""
    name = None

    def check_targets(self, y, n, out_shape):
        y = np.asarray(y)
        if y.shape != (n,) + tuple(out_shape[1:]):
            if y.ndim == 1 and out_shape[1:] == (1,) and y.shape[0] == n:
                y = y.reshape(n, 1)
            else:
                raise ValueError(f"{self.name}: targets must have shape {(n,) + tuple(out_shape[1:])}, got {y.shape}")
        if not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
            raise TypeError(f"{self.name}: targets must be real numbers, got dtype {y.dtype}")
        if not np.isfinite(y).all():
            raise ValueError(f"{self.name}: targets of shape {y.shape} contain NaN or inf")
        return y

    def kernels(self) -> SpecKernels:
        return _kernels(self.name)

    def value_and_grad(self, out, y):
        loss, grad = self.kernels().run("value+grad", {"z": out, "t": np.ascontiguousarray(y, dtype=out.dtype)},
                                        out.dtype, self.scalars)
        return loss, grad, None

    def value(self, out, y):
        return self.kernels().run("value", {"z": out, "t": np.ascontiguousarray(y, dtype=out.dtype)}, out.dtype,
                                  self.scalars)

    def hvp(self, ctx, out, y, v):
        env = {"z": out, "t": np.ascontiguousarray(y, dtype=out.dtype), "v": np.ascontiguousarray(v)}
        return self.kernels().run("hvp", env, out.dtype, self.scalars)

    def config(self) -> dict:
        """The scalar arguments a checkpoint keeps (empty for a loss without any)."""
        return dict(self.scalars)


class MSE(ElementwiseMeanLoss):
    """Mean squared error over all elements (as ``torch.nn.functional.mse_loss``)."""
    name = "mse"


class SigmoidCrossEntropy(ElementwiseMeanLoss):
    """Binary/multi-label cross-entropy of logits, mean over all elements (PyTorch's
    ``binary_cross_entropy_with_logits``): float targets in [0, 1] of the output's shape.
    Accuracy counts elements where ``logit > 0`` agrees with ``target > 0.5``."""
    name = "sigmoid_cross_entropy"
    classification = True

    def check_targets(self, y, n, out_shape):
        y = super().check_targets(y, n, out_shape)
        if not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
            raise TypeError(f"{self.name}: targets must be real numbers, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"{self.name}: targets must lie in [0, 1], got [{y.min()}, {y.max()}]")
        return y

    def predict(self, out):
        return (out > 0).astype(np.int64)

    def correct(self, out, y):
        return int(((out > 0) == (y > 0.5)).sum()), y.size


def _scalar_values(owner: str, defaults: dict, given: dict) -> dict:
    """``defaults`` updated with ``given``: known names only, finite real numbers."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"{owner}: unknown argument(s) {unknown}; it takes "
                        + (", ".join(f"{k}={v:g}" for k, v in defaults.items()) or "none"))
    values = {}
    for k, v in {**defaults, **given}.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{owner}: {k} must be a real number, got {v!r}")
        if not np.isfinite(v):
            raise ValueError(f"{owner}: {k} must be finite, got {v!r}")
        values[k] = float(v)
    return values


class SpecLoss(ElementwiseMeanLoss):
    """A built-in loss written exactly as a user writes one — a :class:`PointwiseLossSpec` in
    ``derive/losses.py``'s ``POINTWISE_LOSSES`` — whose kernels ``symprop generate`` emits into the
    built-in losses module: usable by name, no compile at run time. Its scalar arguments are
    keyword arguments (``Huber(delta=2.0)``, ``get_loss("huber", delta=2.0)``), kept by checkpoints."""
    builtin = True
    #: the spec's scalars -> defaults (``tests/losses/test_builtin_pointwise_losses.py`` checks
    #: they are the spec's; the runtime reads no SymPy)
    defaults: dict = {}

    def __init__(self, **scalars):
        self.scalars = _scalar_values(type(self).__name__, self.defaults, scalars)

    @property
    def spec(self):
        """The loss's :class:`PointwiseLossSpec` (imports SymPy: documents, checkpoints' hash)."""
        from ..derive.losses import POINTWISE_LOSSES
        return POINTWISE_LOSSES[self.name]

    def __repr__(self):
        args = ", ".join(f"{k}={v:g}" for k, v in self.scalars.items())
        return f"{type(self).__name__}({args})"


class Huber(SpecLoss):
    """Huber loss, mean over all elements (PyTorch's ``nn.HuberLoss(reduction="mean", delta=...)``):
    (z − t)²/2 within ``delta`` of the target, δ·(|z − t| − δ/2) beyond."""
    name = "huber"
    defaults = {"delta": 1.0}

    def __init__(self, delta: float = 1.0, **others):
        super().__init__(delta=delta, **others)
        if not self.scalars["delta"] > 0:
            raise ValueError(f"Huber: delta must be positive (as PyTorch's HuberLoss), got {delta!r}")


class LogCosh(SpecLoss):
    """Log-cosh loss ``log(cosh(z − t))``, mean over all elements; computed in the stable form
    |z − t| + log1p(exp(−2|z − t|)) − log 2 the rewriter chose (cosh overflows beyond 89 in float32)."""
    name = "log_cosh"


class PointwiseLoss(ElementwiseMeanLoss):
    """A loss ``ℓ(z, t)`` written in SymPy (:func:`from_sympy`): mean over all elements of
    predictions ``z`` and real targets ``t`` of the output's shape; its gradient and Hessian
    term are derived and compiled like the built-ins'."""

    def __init__(self, spec, module, **scalars):
        self.spec, self.module, self.name = spec, module, spec.name
        self.scalars = _scalar_values(f"loss {spec.name!r}", spec.defaults(), scalars)
        self._K = SpecKernels(module, spec.name)

    def with_scalars(self, **scalars) -> "PointwiseLoss":
        """The same compiled loss with other scalar values."""
        return PointwiseLoss(self.spec, self.module, **{**self.scalars, **scalars})

    @property
    def hash(self) -> str:
        return self.spec.hash

    def kernels(self) -> SpecKernels:
        return self._K

    def __repr__(self):
        return f"losses.from_sympy({self.name!r}, {self.spec.expr})"


def from_sympy(name: str, expr, z, t, verbose: bool = False, scalars: dict | None = None) -> PointwiseLoss:
    """Derive, generate and compile (cached by the spec's hash) an elementwise loss
    ``ℓ(z, t)`` of a prediction ``z`` and a target ``t``, averaged over all elements::

        z, t = sp.symbols("z t"); d = z - t
        huber = losses.from_sympy("huber", sp.Piecewise((d**2 / 2, sp.Abs(d) <= 1), (sp.Abs(d) - sp.S.Half, True)), z, t)
        Sequential([...], loss=huber)

    Usable wherever a loss name is (``fit``, ``hvp``, every Hessian diagonal); checkpoints
    store its name and hash, and :meth:`Sequential.load` takes it back through
    ``custom_objects={"huber": huber}``. ``scalars``: name -> default of symbols of ``expr`` that
    are arguments of the loss (``{"delta": 1.0}``), set per loss with ``loss.with_scalars(delta=2.0)``.
    The name of a built-in written the same way (``huber``, ``log_cosh``) may be reused: checkpoints
    tell the two apart by the spec's hash."""
    from ..codegen.build import compile_spec
    from ..codegen.losses import render_pointwise_losses_module
    from ..derive.elementwise import SpecError
    from ..derive.losses import PointwiseLossSpec, derive_user_loss

    if name in LOSSES and not issubclass(LOSSES[name], SpecLoss):
        # its kernels come from no PointwiseLossSpec: no spec hash would tell a checkpoint's two apart
        raise SpecError(f"losses.from_sympy: {name!r} is a built-in loss; choose another name")
    if scalars is not None and not isinstance(scalars, dict):
        raise SpecError(f"losses.from_sympy: scalars must be a dict of name -> default, got {type(scalars).__name__}")
    spec = PointwiseLossSpec(name, expr, z, t, scalars=tuple((scalars or {}).items()))
    stem = f"loss_{name}"
    module, _, _ = compile_spec(stem, spec, derive_user_loss, render_pointwise_losses_module, verbose)
    return PointwiseLoss(spec, module)


LOSSES = {"softmax_cross_entropy": SoftmaxCrossEntropy, "cross_entropy": SoftmaxCrossEntropy,
          "mse": MSE, "sigmoid_cross_entropy": SigmoidCrossEntropy, "huber": Huber, "log_cosh": LogCosh}


def get_loss(name, custom_objects: dict | None = None, **scalars) -> Loss:
    """The loss ``name`` (a built-in, or in ``custom_objects``); ``scalars``: its arguments
    (``get_loss("huber", delta=2.0)``). A :class:`Loss` is returned as it is."""
    if isinstance(name, Loss):
        if scalars:
            raise TypeError(f"get_loss: arguments {sorted(scalars)} go to the loss's constructor, not with a "
                            f"loss object ({name!r})")
        return name
    if custom_objects and isinstance(custom_objects.get(name), Loss):
        loss = custom_objects[name]
        return loss.with_scalars(**scalars) if scalars and hasattr(loss, "with_scalars") else loss
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}, or a loss from "
                         f"symprop.losses.from_sympy (to load a checkpoint: custom_objects={{{name!r}: loss}})")
    cls = LOSSES[name]
    if scalars and not issubclass(cls, SpecLoss):
        raise TypeError(f"loss {name!r} takes no arguments, got {sorted(scalars)}")
    return cls(**scalars)
