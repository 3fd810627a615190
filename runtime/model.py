"""``Sequential``: a stack of layers with a loss, trained by mini-batch optimization."""
from __future__ import annotations

import sys
import threading
import time

import numpy as np

from . import checkpoint
from .layer import EVAL, Context, Layer
from .layers import from_config
from .losses import get_loss
from .memory import tune_allocator
from .optimizers import Adam, Optimizer


def _finite_array(a: np.ndarray, dtype, label: str) -> np.ndarray:
    """``a`` as a C-contiguous array of ``dtype``; numeric and finite, or a clear error."""
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise TypeError(f"{label} must be real numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(a).all():
        raise ValueError(f"{label} of shape {a.shape} contains NaN or inf")
    return a


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
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"Sequential: dtype must be float32 or float64, got {dt}")
        self.layers, self.loss, self.dtype, self.seed = list(layers), get_loss(loss), dt, seed
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
            shape = tuple(int(s) for s in input_shape)
            for layer in self.layers:
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
        return X, self.loss.check_targets(y, X.shape[0], (X.shape[0],) + self.output_shape)

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
        return SpecKernels(load("penalties"), "penalty"), {"l1": self.l1, "l2": self.l2}, idx

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
            for i, a in zip(slots[k], pg):
                grads[i] = a if grads[i] is None else grads[i] + a
        if keep_output_grads:
            tape.gs = gs
        return self.add_penalty_terms(grads, "vjp:x")

    def rop(self, tape: Tape, v: list[np.ndarray]) -> list[np.ndarray]:
        """Exact Hessian-vector product at the tape's point (after ``backward(tape,
        keep_output_grads=True)``): push ``v`` forward (JVPs), through the loss Hessian, and
        back (the R-op of every pullback). ``v`` is aligned with :meth:`parameters`."""
        if tape.gs is None:
            raise ValueError("Sequential.rop: call backward(tape, keep_output_grads=True) first")
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
            for i, a in zip(slots[k], Rp):
                Hv[i] = a if Hv[i] is None else Hv[i] + a
        Hv = [np.zeros_like(p) if h is None else h for p, h in zip(params, Hv)]
        return self.add_penalty_terms(Hv, "rvjp:x", v=v)

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
        With ``return_grad`` returns ``(loss, grads, Hv)`` from one shared forward/backward."""
        X, y = self._check_batch(X, y)
        v = self._check_direction(v)
        tape = self.trace(X, y, checked=True, update_buffers=False)
        grads = self.backward(tape, keep_output_grads=True)
        hv = self.rop(tape, v)
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

    def predict(self, X, batch_size: int = 1024) -> np.ndarray:
        """Class labels for classification losses, raw outputs otherwise."""
        X = self._check_X(X)
        outs = [self._forward(X[i:i + batch_size], EVAL)[0] for i in range(0, len(X), batch_size)]
        out = np.concatenate(outs)
        return self.loss.predict(out)

    def evaluate(self, X, y, batch_size: int = 1024) -> dict:
        X = self._check_X(X)
        total, correct, count = 0.0, 0, 0
        for i in range(0, len(X), batch_size):
            out = self._forward(X[i:i + batch_size], EVAL)[0]
            yb = self.loss.check_targets(y[i:i + batch_size], out.shape[0], out.shape)
            total += self.loss.value(out, yb) * len(out)
            c = self.loss.correct(out, yb)
            if c is not None:
                correct, count = correct + c[0], count + c[1]
        res = {"loss": total / len(X) + self.penalty_value()}
        if self.loss.classification:
            res["accuracy"] = correct / max(count, 1)
        return res

    # ------------------------------------------------------------ training
    def fit(self, X, y, epochs: int = 10, batch_size: int = 32, optimizer: Optimizer | None = None,
            validation_data=None, verbose: int | None = None, seed: int | None = None) -> dict:
        """Shuffled mini-batch training; returns a history of per-epoch metrics."""
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"fit: epochs must be a positive integer, got {epochs!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"fit: batch_size must be a positive integer, got {batch_size!r}")
        X, y = self._check_batch(X, y)
        optimizer = optimizer or Adam()
        if verbose is None:
            verbose = 1 if sys.stdout.isatty() else 0
        rng = np.random.default_rng(self.seed if seed is None else seed)
        params = self.parameters()
        was_training = self.training
        self.train()
        try:
            return self._fit(X, y, epochs, batch_size, optimizer, validation_data, verbose, rng, params)
        finally:
            self.train(was_training)

    def _fit(self, X, y, epochs, batch_size, optimizer, validation_data, verbose, rng, params):
        hist = {"loss": [], "time": []}
        if self.loss.classification:
            hist["accuracy"] = []
        if validation_data is not None:
            hist["val_loss"] = []
            if self.loss.classification:
                hist["val_accuracy"] = []
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            order = rng.permutation(len(X))
            total, correct, count = 0.0, 0, 0
            for i in range(0, len(X), batch_size):
                idx = order[i:i + batch_size]
                xb, yb = X[idx], y[idx]
                loss, grads, tape = optimizer.loss_and_grad(self, xb, yb)   # X, y validated once above
                if not np.isfinite(loss):
                    raise FloatingPointError(f"fit: loss became {loss} in epoch {epoch}; lower the learning rate")
                c = self.loss.correct(tape.out, yb)
                if c is not None:
                    correct, count = correct + c[0], count + c[1]
                total += loss * len(idx)
                optimizer.step(params, grads)
            hist["loss"].append(total / len(X))
            hist["time"].append(time.perf_counter() - t0)
            msg = f"epoch {epoch}/{epochs}  loss {hist['loss'][-1]:.4f}"
            if self.loss.classification:
                hist["accuracy"].append(correct / max(count, 1))
                msg += f"  acc {hist['accuracy'][-1]:.4f}"
            if validation_data is not None:
                ev = self.evaluate(*validation_data)
                hist["val_loss"].append(ev["loss"])
                msg += f"  val_loss {ev['loss']:.4f}"
                if "accuracy" in ev:
                    hist["val_accuracy"].append(ev["accuracy"])
                    msg += f"  val_acc {ev['accuracy']:.4f}"
            if verbose:
                print(msg + f"  ({hist['time'][-1]:.2f} s)", flush=True)
        return hist

    # ------------------------------------------------------------ persistence
    def save(self, path):
        first, cfgs = {}, []
        for k, layer in enumerate(self.layers):   # a layer used again is stored as a reference
            cfgs.append({"type": "Shared", "index": first[id(layer)]} if id(layer) in first else layer.config())
            first.setdefault(id(layer), k)
        cfg = {"layers": cfgs, "loss": self.loss.name, "dtype": self.dtype.name, "seed": self.seed,
               "input_shape": list(self.input_shape), "l1": self.l1, "l2": self.l2}
        buffers = self.buffers()
        cfg["n_buffers"] = len(buffers)
        return checkpoint.save(path, cfg, self.parameters() + buffers)

    @classmethod
    def load(cls, path, custom_objects: dict | None = None) -> "Sequential":
        cfg, arrays = checkpoint.load(path)
        layers = []
        for c in cfg["layers"]:
            if c.get("type") == "Shared":
                k = c.get("index")
                if not isinstance(k, int) or not 0 <= k < len(layers):
                    raise ValueError(f"{path}: shared-layer reference {c} points at no earlier layer")
                layers.append(layers[k])
            else:
                layers.append(from_config(c, custom_objects))
        model = cls(layers, loss=cfg["loss"], dtype=cfg["dtype"], seed=cfg["seed"],
                    input_shape=tuple(cfg["input_shape"]), l1=cfg.get("l1", 0.0), l2=cfg.get("l2", 0.0))
        nb = cfg.get("n_buffers", 0)
        if not isinstance(nb, int) or not 0 <= nb <= len(arrays):
            raise ValueError(f"{path}: invalid buffer count {nb!r} in the checkpoint")
        params = model.parameters() + model.buffers()
        if model.buffers() and not nb:
            raise ValueError(f"{path}: the model has buffers (running statistics) the checkpoint does not hold")
        if len(params) != len(arrays):
            raise ValueError(f"{path}: checkpoint has {len(arrays)} arrays, the model {len(params)}")
        for p, a in zip(params, arrays):
            if p.shape != a.shape:
                raise ValueError(f"{path}: parameter shape {a.shape} does not match the model's {p.shape}")
            p[...] = a
        return model
