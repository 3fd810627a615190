"""``Sequential``: a stack of layers with a loss, trained by mini-batch optimization.

This module holds the model's construction, validation and public API. The work is elsewhere:
the passes in ``passes.py`` (on the sweep engine, ``sweep.py``), the Hessian diagonals in
``curvature.py``, the training loop in ``training.py``, the penalty in ``penalty.py``,
persistence in ``persistence.py`` and the printed forms in ``summary.py``."""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import passes, persistence, summary
from .layer_base import EVAL, Context, Layer
from .losses import get_loss
from .memory import tune_allocator
from .optimizers import Optimizer
from .passes import Tape  # noqa: F401 (public here too)
from .penalty import Penalty
from .training import DIVERGENCE_FACTOR, TrainingDiverged  # noqa: F401 (public here too)


def _finite_array(a: np.ndarray, dtype, label: str) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype``; numeric and finite, or a clear error."""
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise TypeError(f"{label} must be real numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(a).all():
        raise ValueError(f"{label} of shape {a.shape} contains NaN or inf")
    return a


def check_seed(owner: str, seed):
    """A seed NumPy's generators accept: an integer >= 0 (not a bool), else a clear error."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{owner}: seed must be a non-negative integer, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{owner}: seed must be a non-negative integer, got {seed}")
    return int(seed)


@contextlib.contextmanager
def _memory_named(layer):
    """A MemoryError while allocating a layer's arrays, naming the layer."""
    try:
        yield
    except MemoryError as exc:
        raise MemoryError(f"{layer.name}: not enough memory for its parameters ({exc})") from exc
    except ValueError as exc:   # NumPy: "array is too big" (more bytes than an address space holds)
        if "too big" not in str(exc):
            raise
        raise MemoryError(f"{layer.name}: not enough memory for its parameters ({exc})") from exc


class Sequential:
    """Layers applied in order, then a loss that averages over the batch.

    A layer object may appear several times (its weights are shared: listed once in
    :meth:`parameters`, gradients summed over the uses) and may sit in several models.
    """

    def __init__(self, layers: list[Layer], loss="softmax_cross_entropy", dtype="float32",
                 seed: int = 0, input_shape: tuple | None = None, l1: float = 0.0, l2: float = 0.0):
        if not layers:
            raise ValueError("Sequential: needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: item {i} is {type(layer).__name__}, not a symprop layer")
        if dtype is None:
            raise TypeError("Sequential: dtype must be 'float32' or 'float64', got None")
        try:
            dt = np.dtype(dtype)
        except TypeError as exc:
            raise TypeError(f"Sequential: dtype must be 'float32' or 'float64', got {dtype!r}") from exc
        if dt not in (np.float32, np.float64):
            raise TypeError(f"Sequential: dtype must be float32 or float64, got {dt}")
        self.layers, self.loss, self.dtype, self.seed = list(layers), get_loss(loss), dt, check_seed("Sequential", seed)
        self.training = False
        for nm, v in (("l1", l1), ("l2", l2)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or \
                    not np.isfinite(v) or v < 0:
                raise ValueError(f"Sequential: {nm} must be a finite number >= 0, got {v!r}")
        self.l1, self.l2 = float(l1), float(l2)
        self.rng = np.random.default_rng(seed)
        self.penalty = Penalty(self)
        self._build_lock = threading.Lock()
        tune_allocator()
        seen = set()
        for layer in self.layers:   # parameters whose shapes the constructors fix, once per object
            if id(layer) not in seen:
                seen.add(id(layer))
                with _memory_named(layer):
                    layer.init_parameters(dt, self.rng)
        self.input_shape = self.output_shape = None
        self._slots = None
        if input_shape is None and hasattr(self.layers[0], "in_features"):
            input_shape = (self.layers[0].in_features,)
        if input_shape is not None:   # otherwise built from the first batch seen
            self.build(input_shape)

    def build(self, input_shape: tuple) -> "Sequential":
        """Infer every layer's shapes for per-sample inputs of ``input_shape`` (and create
        parameters that depend on them, e.g. a residual projection)."""
        with self._build_lock:
            if self.input_shape is not None:
                if tuple(input_shape) != self.input_shape:
                    raise ValueError(f"Sequential: already built for inputs {self.input_shape}, "
                                     f"not {tuple(input_shape)}")
                return self
            if not isinstance(input_shape, (tuple, list)) or not all(
                    isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in input_shape):
                raise ValueError(f"Sequential: input_shape must be a tuple of positive integers (per sample), "
                                 f"got {input_shape!r}")
            shape = tuple(int(s) for s in input_shape)
            for layer in self.layers:
                with _memory_named(layer):
                    shape = layer.build(shape, self.dtype, self.rng)
            self._slots = None
            self.output_shape = shape
            self.input_shape = tuple(int(s) for s in input_shape)
        return self

    # ------------------------------------------------------------ basics
    def parameters(self) -> list[np.ndarray]:
        """Every trainable array once, in layer order, weight before bias (live arrays)."""
        return self.param_slots()[0]

    def buffers(self) -> list[np.ndarray]:
        """Non-trainable state (BatchNorm running statistics), each once, in layer order."""
        seen, out = set(), []
        for layer in self.layers:
            for b in layer.buffers():
                if id(b) not in seen:
                    seen.add(id(b))
                    out.append(b)
        return out

    def param_slots(self):
        """``(parameters, slots)``: ``slots[k]`` maps layer k's ``param_uses()`` to indices of
        ``parameters()`` (a shared layer's uses point at the same entries)."""
        if self._slots is not None:
            return self._slots
        if self.input_shape is None and not all(la.parameters_known() for la in self.layers):
            raise ValueError("Sequential: not built yet; pass input_shape= or call build(), fit() or "
                             "forward() first (a layer's parameters depend on the input shape)")
        params, index, slots = [], {}, []
        for layer in self.layers:
            s = []
            for p in layer.param_uses():
                if id(p) not in index:
                    index[id(p)] = len(params)
                    params.append(p)
                s.append(index[id(p)])
            slots.append(s)
        result = (params, slots)
        if self.input_shape is not None:
            self._slots = result
        return result

    def shares_parameters(self) -> bool:
        """Whether a parameter is used more than once (tied weights)."""
        params, slots = self.param_slots()
        return sum(len(s) for s in slots) != len(params)

    def _check_X(self, X) -> np.ndarray:
        if not isinstance(X, np.ndarray):
            X = np.asarray(X)
        first = self.layers[0].name
        if self.input_shape is None:
            if X.ndim < 2:
                raise ValueError(f"{first}: expected a batch (N, ...), got shape {X.shape}")
            self.build(X.shape[1:])
        if X.ndim != len(self.input_shape) + 1 or X.shape[1:] != self.input_shape:
            raise ValueError(f"{first}: expected input of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{first}: empty batch (input shape {X.shape})")
        return _finite_array(X, self.dtype, f"{first}: input")

    def _check_batch(self, X, y):
        """Validated inputs and targets (targets shaped for the model's outputs)."""
        X = self._check_X(X)
        return X, self._check_targets(y, X.shape[0])

    def _check_targets(self, y, n: int):
        """The loss's target checks, plus: float targets must stay finite in the model's dtype
        (1e300 is finite in float64 but inf in a float32 model)."""
        y = self.loss.check_targets(y, n, (n,) + self.output_shape)
        if y.dtype.kind == "f" and y.dtype != self.dtype:
            with np.errstate(over="ignore"):
                if not np.isfinite(y.astype(self.dtype)).all():
                    raise ValueError(f"{self.loss.name}: targets up to {np.abs(y).max():.3g} overflow the model's "
                                     f"{self.dtype}; scale them or use dtype='float64'")
        return y

    # ------------------------------------------------------------ mode
    def train(self, mode: bool = True) -> "Sequential":
        """Train mode (as PyTorch): batch statistics, dropout masks. ``fit`` trains in train mode."""
        self.training = bool(mode)
        return self

    def eval(self) -> "Sequential":
        """Evaluation mode: running statistics, no dropout. ``predict``/``evaluate`` use it."""
        return self.train(False)

    def _context(self, update_buffers: bool) -> Context:
        return Context(self.training, self.training and update_buffers, self.rng) if self.training else EVAL

    def _forward(self, X: np.ndarray, ctx: Context = EVAL):
        return passes.forward(self, X, ctx)

    def forward(self, X) -> np.ndarray:
        """Network outputs (logits for classification), in the model's current mode; in train
        mode this updates running statistics, as a PyTorch forward does."""
        return self._forward(self._check_X(X), self._context(update_buffers=True))[0]

    def loss_and_grad(self, X, y):
        """Mean loss over the batch and its gradients, aligned with :meth:`parameters`."""
        tape = self.trace(X, y)
        return tape.loss, self.backward(tape)

    # ------------------------------------------------------------ the passes, on a tape (passes.py)
    def trace(self, X, y, checked: bool = False, update_buffers: bool = True) -> Tape:
        """Forward pass and loss on a batch: the :class:`Tape` every later pass reads.
        ``checked``: X and y are already validated (the fit loop validates once);
        ``update_buffers``: a train-mode pass updates running statistics (second-order calls
        pass False)."""
        if not checked:
            X, y = self._check_batch(X, y)
        return passes.trace(self, X, y, self._context(update_buffers))

    def penalty_value(self) -> float:
        """``l1·Σ|W| + (l2/2)·Σ W²`` over Dense and Conv2D weights (each shared weight once)."""
        return self.penalty.value()

    def add_penalty_terms(self, out: list, role: str, **direction):
        """Add the penalty's gradient (``vjp:x``), HVP (``rvjp:x``, direction ``v=``) or Hessian
        diagonal (``residual``) kernel output to ``out`` (aligned with parameters())."""
        return self.penalty.add(out, role, direction.get("v"))

    def backward(self, tape: Tape, keep_output_grads: bool = False) -> list[np.ndarray]:
        """Gradients of the tape's loss, aligned with :meth:`parameters` (summed over the uses
        of a shared parameter). ``keep_output_grads`` keeps each layer's output gradient on the
        tape for :meth:`rop` and the Hessian diagonals."""
        return passes.backward(self, tape, keep_output_grads)

    def rop(self, tape: Tape, v: list[np.ndarray]) -> list[np.ndarray]:
        """Exact Hessian-vector product at the tape's point (after ``backward(tape,
        keep_output_grads=True)``): push ``v`` forward (JVPs), through the loss Hessian, and
        back (the R-op of every pullback). ``v`` is aligned with :meth:`parameters`."""
        if tape.gs is None:
            raise ValueError("Sequential.rop: call backward(tape, keep_output_grads=True) first")
        return passes.rop(self, tape, self._check_direction(v))

    def forward_over_reverse(self, X, y, v: list[np.ndarray], update_buffers: bool = False, keep_tape: bool = True):
        """``(tape, grads, Hv)`` on a validated batch and direction, in two sweeps: every layer's
        forward and JVP together (one fused kernel per spec layer whose module has one), the
        loss with its gradient and Hessian-vector term, then every layer's pullback and its
        R-op together. The tape is what :meth:`trace` + :meth:`backward` with
        ``keep_output_grads`` would leave (further :meth:`rop` calls may use it). Without
        ``keep_tape`` the backward sweep drops each layer's record, tangent and output gradient
        once it has passed the layer, and the forward sweep keeps no input tangent that no
        backward role reads (activations, pooling); the tape then holds only the loss. On the
        CIFAR CNN at batch 256 that took grad+HVP's working memory from 411 to 203 MiB
        (PyTorch's double backward: 279 MiB; ``benchmarks/hvp_memory.py``)."""
        return passes.forward_over_reverse(self, X, y, v, self._context(update_buffers), keep_tape)

    # ------------------------------------------------------------ second order
    def _check_direction(self, v, what: str = "v") -> list[np.ndarray]:
        params = self.parameters()
        if not isinstance(v, (list, tuple)) or len(v) != len(params):
            raise ValueError(f"Sequential: {what} must be a list of {len(params)} arrays aligned with "
                             f"parameters(), got {type(v).__name__}"
                             + (f" of length {len(v)}" if isinstance(v, (list, tuple)) else ""))
        out = []
        for i, (a, p) in enumerate(zip(v, params)):
            a = np.asarray(a)
            if a.shape != p.shape:
                raise ValueError(f"Sequential: {what}[{i}] has shape {a.shape}, parameter {i} has {p.shape}")
            out.append(_finite_array(a, self.dtype, f"Sequential: {what}[{i}]"))
        return out

    def hvp(self, X, y, v, return_grad: bool = False):
        """Exact Hessian-vector product ``H v`` of the mean batch loss (Pearlmutter's R-operator
        through the generated JVP and R-op kernels); ``v`` is aligned with :meth:`parameters`.
        With ``return_grad`` returns ``(loss, grads, Hv)``; either way one forward+JVP sweep
        and one backward+R-op sweep (:meth:`forward_over_reverse`)."""
        X, y = self._check_batch(X, y)
        v = self._check_direction(v)
        tape, grads, hv = self.forward_over_reverse(X, y, v, update_buffers=False, keep_tape=False)
        return (tape.loss, grads, hv) if return_grad else hv

    def hessian_diagonal(self, X, y, method: str = "exact", samples: int = 100, seed: int | None = None):
        """Diagonal of the loss Hessian w.r.t. every parameter (list aligned with :meth:`parameters`).

        ``method``: ``"exact"`` (backprop of the loss Hessian's factor plus the activations'
        second-order residuals; memory grows with batch × units, meant for small models),
        ``"gauss_newton"`` (exact diagonal of the generalized Gauss–Newton matrix),
        ``"becker_lecun"`` (Becker & LeCun 1988: off-diagonal terms dropped while backpropagating)
        or ``"hutchinson"`` (``mean v ⊙ Hv`` over ``samples`` Rademacher ``v``, seeded by ``seed``).
        """
        from . import curvature
        X, y = self._check_batch(X, y)
        return curvature.hessian_diagonal(self, X, y, method, samples=samples, seed=seed)

    def hessian(self, X, y, max_params: int | None = None) -> np.ndarray:
        """The full (P × P) Hessian of the mean batch loss, one exact HVP per column.
        Refused above ``max_params`` (default :data:`curvature.MAX_FULL_HESSIAN_PARAMS`)."""
        from . import curvature
        X, y = self._check_batch(X, y)
        return curvature.full_hessian(self, X, y, max_params)[2]

    def input_derivatives(self, X, *which) -> dict:
        """Derivatives of the output with respect to the input X (N, d), by Taylor-mode sweeps
        of derived kernels (``runtime/taylor.py``): ``which`` among ``"u"``, ``"grad"``,
        ``"laplacian"`` (the default: all three) and pure partials as coordinate tuples,
        ``(0, 0, 0, 0)`` = ∂⁴u/∂x0⁴ (order ≤ 4). Returns ``{query: array}``."""
        from .taylor import input_derivatives
        return input_derivatives(self, X, *which)

    def outputs(self, X, batch_size: int = 1024) -> np.ndarray:
        """Raw network outputs (logits for classification) in evaluation mode, in batches."""
        from .optimizers import check_int
        batch_size = check_int("outputs", "batch_size", batch_size)
        X = self._check_X(X)
        return np.concatenate([self._forward(X[i:i + batch_size], EVAL)[0] for i in range(0, len(X), batch_size)])

    def predict(self, X, batch_size: int = 1024) -> np.ndarray:
        """Class labels for classification losses, raw outputs otherwise."""
        from .optimizers import check_int
        batch_size = check_int("predict", "batch_size", batch_size)
        return self.loss.predict(self.outputs(X, batch_size))

    def evaluate(self, X, y, batch_size: int = 1024, metrics=None) -> dict:
        """Mean loss (and accuracy for classification) in evaluation mode, plus ``metrics``:
        names (``f1``, ``precision_micro``, ``top_k_accuracy``, ``confusion_matrix``, ``mae``,
        ``r2``, ... see :mod:`symprop.metrics`) or functions ``f(y_true, y_pred)`` of the
        predictions :meth:`predict` returns; the values equal scikit-learn's."""
        from . import metrics as M
        from .optimizers import check_int
        batch_size = check_int("evaluate", "batch_size", batch_size)
        wanted = [M.check_applicable(m, self.loss) for m in M.get_metrics(metrics)]
        X = self._check_X(X)
        total, correct, count, outs, ys = 0.0, 0, 0, [], []
        for i in range(0, len(X), batch_size):
            out = self._forward(X[i:i + batch_size], EVAL)[0]
            yb = self._check_targets(y[i:i + batch_size], out.shape[0])
            total += self.loss.value(out, yb) * len(out)
            c = self.loss.correct(out, yb)
            if c is not None:
                correct, count = correct + c[0], count + c[1]
            if wanted:
                outs.append(out)
                ys.append(yb)
        res = {"loss": total / len(X) + self.penalty_value()}
        if self.loss.classification:
            res["accuracy"] = correct / max(count, 1)
        if wanted:
            res.update(M.compute(wanted, np.concatenate(ys), np.concatenate(outs), self.loss))
        return res

    def _metric_values(self, X, y, metrics) -> dict:
        """The metrics other than loss and accuracy on (X, y), in evaluation mode."""
        ev = self.evaluate(X, y, metrics=metrics)
        return {k: v for k, v in ev.items() if k not in ("loss", "accuracy")}

    # ------------------------------------------------------------ conveniences
    def predict_proba(self, X, batch_size: int = 1024) -> np.ndarray:
        """Class probabilities (softmax of the logits) for a classification loss."""
        if not self.loss.classification:
            raise ValueError(f"predict_proba: needs a classification loss, the model's is {self.loss.name!r}; "
                             f"use predict()")
        out = self.outputs(X, batch_size)
        e = np.exp(out - out.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def layer_table(self) -> list[tuple[str, tuple | None, int, str]]:
        """``(layer, per-sample output shape or None before building, parameter count, note)`` per
        layer use; a shared layer's parameters are counted at its first use."""
        return summary.layer_table(self)

    def specs(self) -> tuple[list[str], list]:
        """``(built-in spec names, user specs)`` of every layer and the loss, in model order
        (what :meth:`latex` documents)."""
        return summary.specs(self)

    def latex(self, path=None) -> str:
        """A LaTeX document of this model's layers and loss — built-ins and user specs alike —
        with their derived chain rules and the forms the kernels compute (``path``: also write it)."""
        return summary.latex(self, path)

    def summary(self, print_fn=print) -> None:
        """Print the layers, their output shapes and parameter counts, and the total (as Keras's
        ``model.summary()``; pass ``print_fn`` to collect the lines instead)."""
        summary.summary(self, print_fn)

    def __repr__(self):
        return summary.describe(self)

    # ------------------------------------------------------------ training
    def fit(self, X, y, epochs: int = 10, batch_size: int = 32, optimizer: Optimizer | str | None = None,
            validation_data=None, validation_split: float = 0.0, early_stopping: int | None = None,
            restore_best: bool = True, schedule=None, clip_norm: float | None = None,
            clip_value: float | None = None, verbose: int | None = None, seed: int | None = None,
            distributed=False, callbacks=None, metrics=None, augment=None,
            divergence_factor: float | None = DIVERGENCE_FACTOR) -> dict:
        """Shuffled mini-batch training; returns a history of per-epoch metrics.

        ``optimizer``: an :class:`Optimizer` (its state carries over between fit calls) or a name
        (``"adamw"``, ...; the defaults of :data:`symprop.optimizers.DEFAULTS`, the same as the
        CLI's). ``validation_split``: hold out this fraction of (X, y) — a fixed subset, the same
        in every call — for the ``val_*`` metrics, or give ``validation_data``.
        ``early_stopping``: stop after that many epochs without a lower validation loss
        (:class:`~symprop.callbacks.EarlyStopping`); ``restore_best`` then puts back the weights of
        the best epoch. ``schedule``: a :class:`~symprop.runtime.schedules.Schedule` or a name,
        applied per epoch to the optimizer's initial learning rate. ``clip_norm``/``clip_value``:
        clip the gradients by global L2 norm / elementwise before each step. ``verbose``: 1
        (default) a tqdm bar per epoch when stdout is a terminal, one line per epoch otherwise;
        0 silent. ``seed``: re-seed the shuffling generator (by default it continues across
        calls, starting from the model's seed).

        ``callbacks``: :mod:`symprop.callbacks` objects (hooks per epoch and batch; one may stop
        training). ``metrics``: names (``f1``, ``top_k_accuracy``, ``confusion_matrix``, ``r2``,
        ... see :mod:`symprop.metrics`) or functions ``f(y_true, y_pred)``, reported per epoch on
        the training batches and (``val_*``) on the validation data. ``augment``: a transform of
        :mod:`symprop.augment` or names such as ``"shift,rotate"``, applied to every training
        batch with the model's seeded generator.

        Divergence: a non-finite loss, or a batch loss above ``divergence_factor`` times the
        call's first batch loss (default 1e4; None turns that bound off), stops training with
        :class:`TrainingDiverged`, the weights before the step that led there kept.

        The history has per-epoch ``loss``, ``accuracy``, the metrics, ``val_*``, ``lr`` and
        ``time`` (seconds of training), plus ``best_epoch`` (lowest ``val_loss``) and
        ``stopped_epoch`` (1-based).

        ``distributed``: True (MPI.COMM_WORLD) or an mpi4py communicator: data-parallel training
        under ``mpiexec`` — every rank passes the same data and takes its contiguous shard of each
        global batch of ``batch_size``; gradients (and AdaHessian's curvature) are averaged with
        one Allreduce per step, so the result equals single-process training on the same global
        batches. See :mod:`symprop.runtime.distributed`.
        """
        from . import distributed as _dist
        from . import training
        dist = _dist.get(distributed)
        kw = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, validation_data=validation_data,
                  validation_split=validation_split, early_stopping=early_stopping, restore_best=restore_best,
                  schedule=schedule, clip_norm=clip_norm, clip_value=clip_value, seed=seed, callbacks=callbacks,
                  metrics=metrics, augment=augment, divergence_factor=divergence_factor)
        if dist is None or dist.size == 1:
            return training.fit(self, X, y, verbose=verbose, dist=None, **kw)
        try:
            return training.fit(self, X, y, verbose=verbose if dist.rank == 0 else 0, dist=dist, **kw)
        except BaseException as exc:  # noqa: BLE001 — one failing rank must not leave the others waiting
            dist.abort(exc)
            raise

    # ------------------------------------------------------------ persistence (persistence.py)
    def save(self, path):
        """Write the architecture, weights and buffers to ``path`` (.npz, atomically)."""
        return persistence.save(self, path)

    @classmethod
    def load(cls, path, custom_objects: dict | None = None) -> "Sequential":
        """Rebuild a model saved by :meth:`save` (no pickle). The architecture comes from the
        JSON config; every array's declared shape and dtype is checked against it before the
        array is read; malformed files raise ValueError naming the file."""
        return persistence.load(cls, path, custom_objects)
