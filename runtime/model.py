"""``Sequential``: a stack of layers with a loss, trained by mini-batch optimization."""
from __future__ import annotations

import threading

import contextlib

import numpy as np

from . import arena, checkpoint
from .layer import EVAL, Context, Layer
from .layers import custom_object, from_config
from .losses import get_loss
from .memory import tune_allocator
from .optimizers import Optimizer
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


class Tape:
    """What one forward pass of a :class:`Sequential` saved, per call: each layer use's record,
    the network output, the loss and its context (e.g. softmax probabilities) and, after
    :meth:`Sequential.backward` with ``keep_output_grads``, each layer's output gradient.
    Nothing per-call lives on layers or the model, so models and layers are reentrant."""

    __slots__ = ("records", "out", "y", "loss", "loss_ctx", "grad_out", "gs")

    def __init__(self, records, out, y, loss, loss_ctx, grad_out):
        self.records, self.out, self.y = records, out, y
        self.loss, self.loss_ctx, self.grad_out = loss, loss_ctx, grad_out
        self.gs = None


#: backward roles (what vjp_rvjp may run) as the manifest names them
_BACKWARD_ROLES = ("vjp", "rvjp", "vjp+rvjp")


def _backward_reads_input_tangent(layer) -> bool:
    """Whether ``layer``'s pullback or R-op may read the tangent of its input (``Rx``): True
    unless it is an activation or pooling layer whose generated backward roles (fused or
    separate) take no ``R<input>`` argument per the manifest (their R-op is linear in ``Rg``
    and the saved record), so the forward sweep need not keep that tangent alive."""
    from .activation import Activation
    from .conv import AvgPool2D, MaxPool2D
    K = getattr(layer, "kernels", None)
    if not isinstance(layer, (Activation, MaxPool2D, AvgPool2D)) or not hasattr(K, "roles"):
        return True
    name = "R" + K.input
    return any(name in role.arrays for r, role in K.roles.items() if r.split(":")[0] in _BACKWARD_ROLES)


def _sum_uses(acc: list, slots, values) -> None:
    """Add a layer's per-parameter results into ``acc`` at the parameters' slots (a shared
    parameter sums over its uses); a None value (no direction reached it) adds nothing."""
    for i, a in zip(slots, values):
        if a is not None:
            acc[i] = a if acc[i] is None else acc[i] + a


def _zeros_where_none(values: list, params: list) -> list:
    return [np.zeros_like(p) if v is None else v for p, v in zip(params, values)]


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
        out, recs = X, []
        for layer in self.layers:
            out, r = layer.forward(out, ctx)
            recs.append(r)
        return out, recs

    def forward(self, X) -> np.ndarray:
        """Network outputs (logits for classification), in the model's current mode; in train
        mode this updates running statistics, as a PyTorch forward does."""
        return self._forward(self._check_X(X), self._context(update_buffers=True))[0]

    def loss_and_grad(self, X, y):
        """Mean loss over the batch and its gradients, aligned with :meth:`parameters`."""
        tape = self.trace(X, y)
        return tape.loss, self.backward(tape)

    # ------------------------------------------------------------ the passes, on a tape
    def trace(self, X, y, checked: bool = False, update_buffers: bool = True) -> Tape:
        """Forward pass and loss on a batch: the :class:`Tape` every later pass reads.
        ``checked``: X and y are already validated (the fit loop validates once);
        ``update_buffers``: a train-mode pass updates running statistics (second-order calls
        pass False)."""
        if not checked:
            X, y = self._check_batch(X, y)
        out, recs = self._forward(X, self._context(update_buffers))
        loss, g, ctx = self.loss.value_and_grad(out, y)
        return Tape(recs, out, y, float(loss) + self.penalty_value(), ctx, g)

    # ------------------------------------------------------------ penalties
    def _penalty(self):
        """``(kernels, scalars, indices of penalized parameters)`` or None without a penalty."""
        if not (self.l1 or self.l2):
            return None
        from .kernels import SpecKernels, load
        params, _ = self.param_slots()
        index = {id(p): i for i, p in enumerate(params)}
        seen, idx = set(), []
        for layer in self.layers:
            for p in layer.penalized():
                if id(p) not in seen and id(p) in index:
                    seen.add(id(p))
                    idx.append(index[id(p)])
        return SpecKernels(load("activations"), "penalty"), {"l1": self.l1, "l2": self.l2}, idx

    def _penalty_role(self, role, i, **arrays):
        K, sc, _ = self._penalty()
        p = self.parameters()[i]
        return K.run(role, {"x": p, **arrays}, p.dtype, sc, {"x": p.shape, "y": p.shape})

    def penalty_value(self) -> float:
        """``l1·Σ|W| + (l2/2)·Σ W²`` over Dense and Conv2D weights (each shared weight once)."""
        pen = self._penalty()
        if pen is None:
            return 0.0
        return float(sum(self._penalty_role("forward", i).sum(dtype=np.float64) for i in pen[2]))

    def add_penalty_terms(self, out: list, role: str, **direction):
        """Add the penalty's gradient (``vjp:x``), HVP (``rvjp:x``) or Hessian diagonal
        (``residual``) kernel output to ``out`` (aligned with parameters())."""
        pen = self._penalty()
        if pen is None:
            return out
        for i in pen[2]:
            p = self.parameters()[i]
            one = np.ones_like(p)
            if role == "rvjp:x":
                r = self._penalty_role(role, i, g=one, Rx=direction["v"][i], Rg=np.zeros_like(p))
            else:
                r = self._penalty_role(role, i, g=one)
            if r is not None:
                out[i] = out[i] + r
        return out

    def backward(self, tape: Tape, keep_output_grads: bool = False) -> list[np.ndarray]:
        """Gradients of the tape's loss, aligned with :meth:`parameters` (summed over the uses
        of a shared parameter). ``keep_output_grads`` keeps each layer's output gradient on the
        tape for :meth:`rop` and the Hessian diagonals."""
        params, slots = self.param_slots()
        grads = [None] * len(params)
        g = tape.grad_out
        gs = [None] * len(self.layers)
        for k in range(len(self.layers) - 1, -1, -1):
            gs[k] = g
            g, pg = self.layers[k].vjp(tape.records[k], g, need_input=k > 0)
            _sum_uses(grads, slots[k], pg)
        if keep_output_grads:
            tape.gs = gs
        return self.add_penalty_terms(grads, "vjp:x")

    def rop(self, tape: Tape, v: list[np.ndarray]) -> list[np.ndarray]:
        """Exact Hessian-vector product at the tape's point (after ``backward(tape,
        keep_output_grads=True)``): push ``v`` forward (JVPs), through the loss Hessian, and
        back (the R-op of every pullback). ``v`` is aligned with :meth:`parameters`."""
        if tape.gs is None:
            raise ValueError("Sequential.rop: call backward(tape, keep_output_grads=True) first")
        v = self._check_direction(v)
        params, slots = self.param_slots()
        parts = [[v[i] for i in s] for s in slots]
        Rxs, Rx = [], None
        for layer, rec, Rp in zip(self.layers, tape.records, parts):
            Rxs.append(Rx)
            Rx = layer.jvp(rec, Rx, Rp)
        Rg = self.loss.hvp(tape.loss_ctx, tape.out, tape.y, Rx if Rx is not None else np.zeros_like(tape.out))
        Hv = [None] * len(params)
        for k in range(len(self.layers) - 1, -1, -1):
            Rg, Rp = self.layers[k].rvjp(tape.records[k], tape.gs[k], Rg, Rxs[k], parts[k], need_input=k > 0)
            _sum_uses(Hv, slots[k], Rp)
        Hv = _zeros_where_none(Hv, params)
        return self.add_penalty_terms(Hv, "rvjp:x", v=v)

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
        params, slots = self.param_slots()
        parts = [[v[i] for i in s] for s in slots]
        ctx = self._context(update_buffers)
        out, Rx, recs, Rxs = X, None, [], []
        for layer, Rp in zip(self.layers, parts):
            # a tangent no backward role reads is not kept (kept with the tape: rop may want it)
            Rxs.append(Rx if keep_tape or _backward_reads_input_tangent(layer) else None)
            out, Rx, rec = layer.forward_jvp(out, Rx, Rp, ctx)
            recs.append(rec)
        loss, g, lctx = self.loss.value_and_grad(out, y)
        tape = Tape(recs, out, y, float(loss) + self.penalty_value(), lctx, g)
        Rg = self.loss.hvp(lctx, out, y, Rx if Rx is not None else np.zeros_like(out))
        grads, Hv = [None] * len(params), [None] * len(params)
        gs = [None] * len(self.layers)
        if not keep_tape:
            tape.records = tape.out = tape.loss_ctx = tape.grad_out = None
            out = Rx = None
        for k in range(len(self.layers) - 1, -1, -1):
            if keep_tape:
                gs[k] = g
            # without a tape nothing reads g, Rg after this layer: its outputs may reuse them
            with arena.donated(g, Rg) if not keep_tape and arena.may_donate(self.layers[k]) else contextlib.nullcontext():
                g, pg, Rg, Rp = self.layers[k].vjp_rvjp(recs[k], g, Rg, Rxs[k], parts[k], need_input=k > 0)
            if not keep_tape:
                recs[k] = Rxs[k] = None
            _sum_uses(grads, slots[k], pg)
            _sum_uses(Hv, slots[k], Rp)
        tape.gs = gs if keep_tape else None
        Hv = _zeros_where_none(Hv, params)
        return tape, self.add_penalty_terms(grads, "vjp:x"), self.add_penalty_terms(Hv, "rvjp:x", v=v)

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
        shape, rows, seen = self.input_shape, [], {}
        for k, layer in enumerate(self.layers):
            shape = layer.output_shape(shape) if shape is not None else None
            if id(layer) in seen:
                rows.append((layer.name, shape, 0, f"shared with layer {seen[id(layer)]}"))
                continue
            seen[id(layer)] = k
            n = sum(p.size for p in layer.parameters()) if shape is not None or layer.parameters_known() else 0
            rows.append((layer.name, shape, n, ""))
        return rows

    def specs(self) -> tuple[list[str], list]:
        """``(built-in spec names, user specs)`` of every layer and the loss, in model order
        (what :meth:`latex` documents)."""
        from .kernels import SpecKernels
        names, extra = [], []

        def visit(obj):
            if isinstance(obj, (list, tuple)):
                for o in obj:
                    visit(o)
                return
            if not isinstance(obj, Layer):
                return
            spec = getattr(obj, "spec", None)
            if spec is not None and hasattr(spec, "hash"):
                if all(spec is not e for e in extra):
                    extra.append(spec)
                return
            for v in vars(obj).values():
                if isinstance(v, SpecKernels) and v.spec not in names:
                    names.append(v.spec)
                elif isinstance(v, (Layer, list, tuple)):
                    visit(v)
        visit(self.layers)
        if getattr(self.loss, "spec", None) is not None:
            extra.append(self.loss.spec)
        return names, extra

    def latex(self, path=None) -> str:
        """A LaTeX document of this model's layers and loss — built-ins and user specs alike —
        with their derived chain rules and the forms the kernels compute (``path``: also write it)."""
        from .. import document as tex   # lazy: the runtime does not depend on the document backend
        names, extra = self.specs()
        known = set(tex.builtin_layer_names())
        text = tex.document([n for n in names if n in known], extra)
        if path is not None:   # atomically: a reader never sees half a document
            import os
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        return text

    def summary(self, print_fn=print) -> None:
        """Print the layers, their output shapes and parameter counts, and the total (as Keras's
        ``model.summary()``; pass ``print_fn`` to collect the lines instead)."""
        rows = self.layer_table()
        head = ("#", "layer", "output shape", "params")
        cells = [(str(k), name + (f"  ({note})" if note else ""),
                  "(N, " + ", ".join(map(str, shape)) + ")" if shape is not None else "(not built)", f"{n:,}")
                 for k, (name, shape, n, note) in enumerate(rows)]
        w = [max(len(r[i]) for r in cells + [head]) for i in range(4)]
        fmt = lambda r: f"{r[0]:>{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}"  # noqa: E731
        total = sum(r[2] for r in rows)
        inp = "(N, " + ", ".join(map(str, self.input_shape)) + ")" if self.input_shape else "(not built yet)"
        rule = "-" * len(fmt(head))
        lines = [f"Sequential: input {inp}, loss {self.loss.name}, {self.dtype.name}", rule, fmt(head), rule]
        lines += [fmt(r) for r in cells]
        lines += [rule, f"total parameters: {total:,} ({total * self.dtype.itemsize / 1024:,.1f} KiB)"]
        for line in lines:
            print_fn(line)

    def __repr__(self):
        inner = "".join(f"\n    {la!r}," for la in self.layers)
        shape = f", input_shape={self.input_shape}" if self.input_shape is not None else ""
        return f"Sequential([{inner}\n], loss={self.loss.name!r}, dtype={self.dtype.name!r}{shape})"

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

    # ------------------------------------------------------------ persistence
    def save(self, path):
        """Write the architecture, weights and buffers to ``path`` (.npz, atomically)."""
        if self.input_shape is None:
            raise ValueError("Sequential.save: the model is not built yet (its input shape is unknown); "
                             "pass input_shape= or run fit/forward first")
        for i, a in enumerate(self.parameters() + self.buffers()):
            if not np.isfinite(a).all():
                raise ValueError(f"Sequential.save: array {i} holds NaN or inf values; refusing to write a "
                                 f"checkpoint that cannot be loaded")
        first, cfgs = {}, []
        for k, layer in enumerate(self.layers):   # a layer used again is stored as a reference
            cfgs.append({"type": "Shared", "index": first[id(layer)]} if id(layer) in first else layer.config())
            first.setdefault(id(layer), k)
        cfg = {"layers": cfgs, "loss": self.loss.name, "dtype": self.dtype.name, "seed": self.seed,
               "input_shape": list(self.input_shape), "l1": self.l1, "l2": self.l2}
        if getattr(self.loss, "spec", None) is not None:   # a user loss: loaded back by name and hash
            cfg["loss_hash"] = self.loss.spec.hash
        buffers = self.buffers()
        cfg["n_buffers"] = len(buffers)
        return checkpoint.save(path, cfg, self.parameters() + buffers)

    @classmethod
    def load(cls, path, custom_objects: dict | None = None) -> "Sequential":
        """Rebuild a model saved by :meth:`save` (no pickle). The architecture comes from the
        JSON config; every array's declared shape and dtype is checked against it before the
        array is read; malformed files raise ValueError naming the file."""
        with checkpoint.Checkpoint(path) as ck:
            model = cls._from_checkpoint_config(ck.path, ck.config, custom_objects)
            nb = ck.config.get("n_buffers", 0)
            if isinstance(nb, bool) or not isinstance(nb, int) or not 0 <= nb <= ck.n:
                raise ValueError(f"{path}: invalid buffer count {nb!r} in the checkpoint")
            params, buffers = model.parameters(), model.buffers()
            if buffers and not nb:
                raise ValueError(f"{path}: the model has buffers (running statistics) the checkpoint does not hold")
            targets = params + buffers
            if len(targets) != ck.n:
                raise ValueError(f"{path}: checkpoint has {ck.n} arrays, the model {len(targets)}")
            values = [ck.array(i, p.shape, p.dtype) for i, p in enumerate(targets)]
        for p, a in zip(targets, values):
            p[...] = a
        for layer in model.layers:
            check = getattr(layer, "check_state", None)
            if check is not None:
                check(str(path))
        return model

    @classmethod
    def _from_checkpoint_config(cls, path, cfg: dict, custom_objects):
        def need(key, kinds, what):
            v = cfg.get(key)
            if not isinstance(v, kinds) or isinstance(v, bool):
                raise ValueError(f"{path}: config entry {key!r} must be {what}, got {v!r:.80}")
            return v
        layer_cfgs = need("layers", list, "a list of layer configs")
        need("loss", str, "a loss name")
        need("dtype", str, "a dtype name")
        shape = need("input_shape", list, "a list of positive integers")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise ValueError(f"{path}: config entry 'input_shape' must be positive integers, got {shape!r:.80}")
        layers = []
        for c in layer_cfgs:
            if not isinstance(c, dict):
                raise ValueError(f"{path}: a layer config is a {type(c).__name__}, not an object")
            if c.get("type") == "Shared":
                k = c.get("index")
                if not isinstance(k, int) or not 0 <= k < len(layers):
                    raise ValueError(f"{path}: shared-layer reference {c} points at no earlier layer")
                layers.append(layers[k])
                continue
            try:
                layers.append(from_config(c, custom_objects))
            except (KeyError, TypeError, AttributeError, RecursionError) as exc:
                raise ValueError(f"{path}: malformed layer config {str(c)[:120]} "
                                 f"({type(exc).__name__}: {exc})") from exc
        if cfg.get("loss_hash") is None:
            loss = get_loss(cfg["loss"], custom_objects)
        else:   # a user loss, or its spec (compiled, or taken from the cache, only once the hash matched)
            loss = custom_object("loss", cfg["loss"], cfg["loss_hash"], custom_objects)
            if hasattr(loss, "canonical"):
                from .losses import from_sympy
                loss = from_sympy(loss.name, loss.expr, loss.z, loss.t)
        try:
            return cls(layers, loss=loss, dtype=cfg["dtype"], seed=cfg.get("seed", 0),
                       input_shape=tuple(shape), l1=cfg.get("l1", 0.0), l2=cfg.get("l2", 0.0))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path}: the config does not describe a model ({type(exc).__name__}: {exc})") from exc
