"""The layer protocol, and the spec-driven layer every built-in with kernels derives from.

A layer object holds only what its spec cannot know: constructor arguments, parameters and
their initialisation, shape inference, checkpoint config. Everything a pass needs later is
returned by :meth:`Layer.forward` in a per-call *record*, so one layer object may appear
several times in a model, sit in two models, and be used from several threads at once.

``None`` stands for an all-zero direction or gradient throughout.
"""
from __future__ import annotations

import numpy as np

from .kernels import FORWARD_JVP, VJP_RVJP, VJP_RVJP_PARAMS, SpecKernels


class Context:
    """How one forward pass runs, passed down by the model (per call, never stored):
    ``training`` (batch statistics, dropout masks) or evaluation; ``update_buffers`` (a
    train-mode pass that updates running statistics; False for second-order passes);
    ``rng`` the model's seeded generator for masks (one draw per forward call)."""

    __slots__ = ("training", "update_buffers", "rng")

    def __init__(self, training: bool = False, update_buffers: bool = False, rng=None):
        self.training, self.update_buffers, self.rng = training, update_buffers, rng


EVAL = Context()


def check_positive_int(layer: str, name: str, v) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {v!r}")
    return int(v)


def diagonal_factor(r: np.ndarray, where: str = "a layer"):
    """Factor ``diag(r)`` (r of shape (N, *shape)) as one column per unit: column k holds
    ``sqrt|r[n,k]|`` at unit k, with sign ``sign(r[n,k])``. Units where r is zero for every
    sample are dropped; None when every unit is."""
    from .curvature import check_factor_size
    n = r.shape[0]
    flat = r.reshape(n, -1)
    units = np.flatnonzero((flat != 0).any(axis=0))
    if len(units) == 0:
        return None
    check_factor_size(len(units) * flat.size, where)
    S = np.zeros((len(units), n, flat.shape[1]), r.dtype)
    S[np.arange(len(units)), :, units] = np.sqrt(np.abs(flat[:, units])).T
    return S.reshape((len(units),) + r.shape), np.sign(flat[:, units]).T


def check_float_input(layer, x) -> np.ndarray:
    """``x`` as a C-contiguous float32/float64 array of the layer's parameter dtype, or a
    TypeError naming the layer."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{layer.name}: input must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32 and x.dtype != np.float64:
        raise TypeError(f"{layer.name}: input dtype {x.dtype}; expected float32 or float64")
    for p in layer.parameters():
        if p.dtype != x.dtype:
            raise TypeError(f"{layer.name}: input dtype {x.dtype} does not match the layer's {p.dtype}")
        break
    return np.ascontiguousarray(x)


def batch_columns(S: np.ndarray, w: np.ndarray):
    """A per-sample factor group ``(S (K, N, ...), w (K, N))`` as whole-batch columns
    ``(S' (K·N, N, ...), w' (K·N,))``: column (k, n) holds ``S[k, n]`` at sample n and zeros
    elsewhere (what a layer that couples samples needs at its output). Batch groups pass."""
    if w.ndim == 1:
        return S, w
    K, N = w.shape
    from .curvature import check_factor_size
    check_factor_size(K * N * S[0].size, "a batch-coupled layer (whole-batch factor columns)")
    out = np.zeros((K, N) + S.shape[1:], S.dtype)
    idx = np.arange(N)
    out[:, idx, idx] = S
    return out.reshape((K * N,) + S.shape[1:]), np.ascontiguousarray(w.reshape(-1))


def _backprop_batch_columns(layer, rec, S, w, diag, need_input):
    """Whole-batch columns through ``layer``: each column's pullback (one vjp per column);
    the parameter diagonals gain ``w_j · (∂θ of column j)²``."""
    cols = []
    for j in range(S.shape[0]):
        gx, grads = layer.vjp(rec, np.ascontiguousarray(S[j]), need_input)
        for d, a in zip(diag, grads):
            if a is not None:
                d += w[j] * a * a
        if need_input:
            cols.append(gx)
    return np.stack(cols) if need_input else None


class Layer:
    """The protocol. ``forward(x) -> (y, record)``; every later pass takes the record."""

    name = "layer"

    # ------------------------------------------------------------ construction
    def init_parameters(self, dtype, rng: np.random.Generator) -> None:
        """Allocate parameters whose shapes the constructor fixes (once: a layer already
        initialised, e.g. shared with another model, keeps its weights)."""

    def parameters_known(self) -> bool:
        """Whether :meth:`parameters` is complete before the input shape is known."""
        return True

    def output_shape(self, input_shape: tuple) -> tuple:
        """Per-sample output shape for per-sample inputs of ``input_shape`` (validates)."""
        return tuple(input_shape)

    def build(self, input_shape: tuple, dtype, rng: np.random.Generator) -> tuple:
        self.init_parameters(dtype, rng)
        return self.output_shape(tuple(input_shape))

    def parameters(self) -> list[np.ndarray]:
        """Trainable arrays, each once (live: in-place updates are seen by the kernels)."""
        return []

    def buffers(self) -> list[np.ndarray]:
        """Non-trainable state saved in checkpoints (BatchNorm's running statistics)."""
        return []

    def penalized(self) -> list[np.ndarray]:
        """The parameters a model's l1/l2 penalty applies to (weights, not biases)."""
        return []

    def param_uses(self) -> list[np.ndarray]:
        """The parameters as the passes see them, aligned with the gradients they return (a
        composite layer lists a shared sub-layer's parameters once per use)."""
        return self.parameters()

    # ------------------------------------------------------------ passes
    def forward(self, x, ctx: Context = EVAL):
        """``(y, record)``: the output and what later passes of this call need."""
        raise NotImplementedError

    def vjp(self, rec, g, need_input: bool = True):
        """``(∂L/∂x or None, [∂L/∂θ for θ in param_uses()])``."""
        raise NotImplementedError

    def input_vjp(self, rec, g):
        return self.vjp(rec, g, True)[0]

    def jvp(self, rec, Rx, Rparams: list):
        """Pushforward ``Ry`` of the input direction ``Rx`` and parameter directions."""
        raise NotImplementedError(f"{self.name}: no second-order kernels")

    def rvjp(self, rec, g, Rg, Rx, Rparams: list, need_input: bool = True):
        """The R-op of :meth:`vjp`: ``(R(∂L/∂x) or None, [R(∂L/∂θ)])``."""
        raise NotImplementedError(f"{self.name}: no second-order kernels")

    # ------------------------------------------------------------ forward-over-reverse sweeps
    def forward_jvp(self, x, Rx, Rparams: list, ctx: Context = EVAL):
        """``(y, Ry, record)``: :meth:`forward` and :meth:`jvp` of one call (a spec layer runs
        them as one fused kernel when its module has one)."""
        y, rec = self.forward(x, ctx)
        return y, self.jvp(rec, Rx, Rparams), rec

    def vjp_rvjp(self, rec, g, Rg, Rx, Rparams: list, need_input: bool = True):
        """``(∂L/∂x, [∂L/∂θ], R(∂L/∂x), [R(∂L/∂θ)])``: :meth:`vjp` and :meth:`rvjp` of one call
        (one fused kernel for a spec layer whose module has it)."""
        gx, grads = self.vjp(rec, g, need_input)
        Rgx, Rgrads = self.rvjp(rec, g, Rg, Rx, Rparams, need_input)
        return gx, grads, Rgx, Rgrads

    # ------------------------------------------------------------ Hessian diagonals
    def sq_param_grads(self, rec, S, w) -> list:
        """``Σ_k Σ_n w[k,n]·(J_θ(n)ᵀ S[k,n])²`` per parameter (the ``sqvjp`` roles)."""
        return []

    def curvature_term(self, rec, g):
        """The diagonal second-order term ``f''·ḡ`` this layer adds at its input, or None."""
        return None

    def bl(self, rec, h, g):
        """Becker–LeCun: output-Hessian diagonal ``h`` to ``(h_x, [per-parameter diagonal])``."""
        raise ValueError(f"{self.name}: the Becker-LeCun diagonal is not available for this layer; "
                         f"use method='exact', 'gauss_newton' or 'hutchinson'")

    def factor_backprop(self, rec, groups, g, exact: bool, need_input: bool = True):
        """Backprop factor groups ``[(S, w), ...]`` of the Hessian w.r.t. the output: the groups
        at the input (plus this layer's curvature-term group when ``exact``) and each parameter's
        diagonal. Composition only: the kernels are the sqvjp, vjp and curv:x roles.

        A group is per sample (``w`` of shape (K, N): column k of sample n is ``S[k, n]``)
        or, below a layer that couples samples (BatchNorm), per batch (``w`` of shape (J,):
        column j is the whole-batch array ``S[j]``; see :func:`batch_columns`)."""
        diag = [np.zeros_like(p) for p in self.param_uses()]
        new = []
        for S, w in groups:
            if w.ndim == 1:
                cols = _backprop_batch_columns(self, rec, S, w, diag, need_input)
                if need_input:
                    new.append((cols, w))
                continue
            for d, a in zip(diag, self.sq_param_grads(rec, S, w)):
                d += a
            if need_input:
                new.append((np.stack([self.input_vjp(rec, np.ascontiguousarray(s)) for s in S]), w))
        if not need_input:
            return [], diag
        r = self.curvature_term(rec, g) if exact else None
        if r is not None:
            f = diagonal_factor(r, self.name)
            if f is not None:
                new.append(f)
        return new, diag

    # ------------------------------------------------------------ persistence
    def config(self) -> dict:
        return {"type": type(self).__name__}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class SpecLayer(Layer):
    """A layer whose every pass is a role of one spec, run by the manifest executor — the one
    base of every layer with kernels: elementwise, learnable, contraction, window and composite.

    Subclasses give the spec's arrays (:meth:`spec_arrays`), the names of the trainable ones
    in ``parameters()`` order (:meth:`trainable`), the kernels' scalars and shape inference.
    A forward call's record holds the kernels it ran (``_K``: a layer may pick them per call,
    as BatchNorm does in train and eval mode), their scalars (``_scalars``), the output shapes
    and the saved arrays; every later role of the call runs with those.
    """

    def _bind(self, module, spec: str):
        """Run the roles of ``spec`` in ``module`` (a module object, or the name of a built-in
        generated module, loaded at first use: describing a layer needs no compiled kernels)."""
        self.kernels = SpecKernels(module, spec, owner=self.name)

    def spec_arrays(self) -> dict:
        """Parameter and constant arrays of the spec by name (e.g. ``W``, ``b``)."""
        return {}

    def trainable(self) -> tuple:
        """Spec names of :meth:`parameters`, in order."""
        return ()

    def parameters(self):
        arrays = self.spec_arrays()
        return [arrays[p] for p in self.trainable()]

    def scalars(self) -> dict:
        return {}

    def call_scalars(self, shape: tuple, dtype=None) -> dict:
        """The kernels' scalars for an input of ``shape`` and ``dtype`` (a composite adds its
        layout; RMSNorm's default eps is the dtype's machine epsilon)."""
        return self.scalars()

    def call_shapes(self, x) -> dict:
        """Shapes of the arrays the kernels allocate, by canonical name, for the input ``x``."""
        K = self.kernels
        return {K.input: x.shape, K.output: (x.shape[0],) + self.output_shape(x.shape[1:])}

    def check_input(self, x) -> np.ndarray:
        return check_float_input(self, x)

    def kernel_view(self, shape: tuple):
        """The shape the kernels see for an input of ``shape``, or None to see it as it is (a
        learnable activation's kernels see (N, C, rest)): the one reshape a layer may need."""
        return None

    @staticmethod
    def _in(a, rec):
        """An input- or output-shaped array as the kernels see it (the call's view)."""
        if a is None or "_view" not in rec:
            return a
        return np.ascontiguousarray(a).reshape(rec["_view"][1])

    @staticmethod
    def _out(a, rec):
        """A kernel result shaped like the input, back in the caller's shape."""
        return a if a is None or "_view" not in rec else a.reshape(rec["_view"][0])

    def _env(self, rec: dict, **arrays) -> dict:
        env = self.spec_arrays()
        env.update(rec)
        env.update(arrays)
        return env

    def _run(self, role, env, rec, dtype):
        return rec["_K"].run(role, env, dtype, rec["_scalars"], rec["_shapes"])

    def _pullbacks(self, kind: str, env: dict, rec: dict, dtype, arrays) -> list:
        """The ``kind`` (``vjp`` or ``rvjp``) roles of ``arrays``: one kernel each, or one kernel
        for all when the spec has a joint role (a composite spec's ``vjp`` writes grad_x,
        grad_gamma, ... at once)."""
        K = rec["_K"]
        if arrays and all(f"{kind}:{a}" in K.joint for a in arrays):
            outs = K.run_named(kind, env, dtype, rec["_scalars"], rec["_shapes"])
            return [outs.get(K.output_of[f"{kind}:{a}"]) for a in arrays]
        return [self._run(f"{kind}:{a}", env, rec, dtype) for a in arrays]

    def _forward_env(self, x, arrays: dict | None = None):
        """The checked input, the output shapes and the environment of a forward role."""
        x = self.check_input(x)
        caller = x.shape
        view = self.kernel_view(caller)
        if view is not None:
            x = x.reshape(view)
        shapes = self.call_shapes(x)
        if view is not None:
            shapes["_caller"] = caller
        env = self.spec_arrays()
        if arrays:
            env.update(arrays)
        env[self.kernels.input] = x
        return x, shapes, env

    def _record(self, env: dict, shapes: dict, dtype, arrays: dict | None = None, K=None,
                scalars: dict | None = None) -> dict:
        """What a forward call keeps for the later passes: its kernels and scalars, the saved
        arrays (and ``arrays``)."""
        K = K or self.kernels
        rec = {"_shapes": shapes, "_dtype": dtype, "_K": K,
               "_scalars": self.call_scalars(shapes[K.input], dtype) if scalars is None else scalars}
        for a in K.saved:
            rec[a] = env[a]
        if arrays:
            rec.update(arrays)
        if "_caller" in shapes:   # the kernels see another shape (kernel_view): input-shaped arrays are reshaped
            rec["_view"] = (shapes["_caller"], shapes[K.input])
        return rec

    def forward_call(self, x, arrays: dict | None = None, K=None):
        """Run the forward role: ``(env with every forward output, record)``."""
        K = K or self.kernels
        x, shapes, env = self._forward_env(x, arrays)
        scal = self.call_scalars(x.shape, x.dtype)
        env.update(K.run_named("forward", env, x.dtype, scal, shapes))
        return env, self._record(env, shapes, x.dtype, arrays, K, scal)

    def forward(self, x, ctx: Context = EVAL, arrays: dict | None = None):
        """``arrays`` replace spec arrays for this call (e.g. DropConnect's masked weight);
        the record keeps them, so every later pass of the call sees the same arrays."""
        env, rec = self.forward_call(x, arrays)
        return self._out(env[rec["_K"].output], rec), rec

    def vjp(self, rec, g, need_input=True):
        g = self._in(np.ascontiguousarray(g), rec)
        env = self._env(rec, g=g)
        K = rec["_K"]
        arrays = list(self.trainable()) + ([K.input] if need_input else [])
        outs = self._pullbacks("vjp", env, rec, g.dtype, arrays)
        return (self._out(outs[-1], rec) if need_input else None), outs[:len(self.trainable())]

    def input_vjp(self, rec, g):
        g = self._in(np.ascontiguousarray(g), rec)
        return self._out(self._pullbacks("vjp", self._env(rec, g=g), rec, g.dtype, [rec["_K"].input])[0], rec)

    def _directions(self, Rx, Rparams, rec=None) -> dict:
        d = {"R" + self.kernels.input: None if Rx is None else self._in(np.ascontiguousarray(Rx), rec or {})}
        for p, v in zip(self.trainable(), Rparams):
            d["R" + p] = v
        return d

    def jvp(self, rec, Rx, Rparams):
        env = self._env(rec, **self._directions(Rx, Rparams, rec))
        return self._out(self._run("jvp", env, rec, self._dtype(rec)), rec)

    def rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        env = self._env(rec, g=self._in(np.ascontiguousarray(g), rec), Rg=self._in(Rg, rec),
                        **self._directions(Rx, Rparams, rec))
        K = rec["_K"]
        n = len(self.trainable())
        outs = self._pullbacks("rvjp", env, rec, self._dtype(rec),
                               list(self.trainable()) + ([K.input] if need_input else []))
        Rgrads = [np.zeros_like(env[p]) if r is None else r for p, r in zip(self.trainable(), outs[:n])]
        return (self._out(outs[n], rec) if need_input else None), Rgrads

    def forward_jvp(self, x, Rx, Rparams, ctx: Context = EVAL):
        K = self.kernels
        if not K.has(FORWARD_JVP):
            return super().forward_jvp(x, Rx, Rparams, ctx)
        x, shapes, env = self._forward_env(x)
        view = {"_view": (shapes["_caller"], x.shape)} if "_caller" in shapes else {}
        env.update(self._directions(Rx, Rparams, view))
        scal = self.call_scalars(x.shape, x.dtype)
        outs = K.run_named(FORWARD_JVP, env, x.dtype, scal, shapes)
        env.update(outs)
        rec = self._record(env, shapes, x.dtype, None, K, scal)
        return self._out(outs[K.output], rec), self._out(outs["R" + K.output], rec), rec

    def vjp_rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        K = rec["_K"]
        role = VJP_RVJP_PARAMS if not need_input and K.has(VJP_RVJP_PARAMS) else VJP_RVJP
        if not K.has(role):
            return super().vjp_rvjp(rec, g, Rg, Rx, Rparams, need_input)
        env = self._env(rec, g=self._in(np.ascontiguousarray(g), rec), Rg=self._in(Rg, rec),
                        **self._directions(Rx, Rparams, rec))
        outs = K.run_named(role, env, self._dtype(rec), rec["_scalars"], rec["_shapes"])
        of = K.output_of
        grads = [outs[of[f"vjp:{p}"]] for p in self.trainable()]
        Rgrads = [outs[of[f"rvjp:{p}"]] for p in self.trainable()]
        if not need_input:
            return None, grads, None, Rgrads
        return self._out(outs[of[f"vjp:{K.input}"]], rec), grads, self._out(outs[of[f"rvjp:{K.input}"]], rec), Rgrads

    def curvature_term(self, rec, g):
        if not rec["_K"].has("curv:x"):   # f'' ≡ 0 (e.g. ReLU): no kernel
            return None
        g = self._in(np.ascontiguousarray(g), rec)
        return self._out(self._run("curv:x", self._env(rec, g=g), rec, g.dtype), rec)

    def bl(self, rec, h, g):
        h = self._in(np.ascontiguousarray(h), rec)
        env = self._env(rec, H=h, g=None if g is None else self._in(np.ascontiguousarray(g), rec))
        hx = self._run(f"bl:{rec['_K'].input}", env, rec, h.dtype)
        return self._out(hx, rec), [self._run(f"bl:{p}", env, rec, h.dtype) for p in self.trainable()]

    def sq_param_grads(self, rec, S, w):
        if not self.trainable():
            return []
        if "_view" in rec:
            S = np.ascontiguousarray(S).reshape((S.shape[0],) + rec["_view"][1])
        env = self._env(rec, S=np.ascontiguousarray(S), w=np.ascontiguousarray(w, dtype=S.dtype))
        return [self._run(f"sqvjp:{p}", env, rec, S.dtype) for p in self.trainable()]

    @staticmethod
    def _dtype(rec):
        return rec["_dtype"]
