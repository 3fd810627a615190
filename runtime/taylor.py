"""Derivatives of a model's output with respect to its *input*: Taylor-mode sweeps.

Every array that flows through the network is a *stack* ``(B, N + p, F)`` of derivative
coefficients of one layer's values along input directions (rows N … N + p − 1 of every block
are zero padding: without it the B blocks lie a power of two apart, every block's element e
maps to the same cache set and 4 KiB alias, and the activations' kernels ran 2–3.7× slower):

- ``laplacian`` mode (u, ∇u, Δu): B = d + 2 blocks — the value, the d first-order
  coefficients J_i = ∂/∂x_i and the summed second-order coefficient L = Σ_i ∂²/∂x_i²;
- ``jet`` mode (pure partials ∂ᵏu/∂x_iᵏ, k ≤ 4): B = 1 + K·m blocks — the value, then for
  each order k = 1 … K the k-th coefficients along each of the m coordinate directions
  (:class:`DirectionalJets`: along any directions);
- ``collapsed`` mode (:class:`CollapsedJets`, K = 3, 4): B = 2 + (K − 1)·m — the order-K
  coefficients as one weighted sum over the directions (the activations' ``collapsed:K`` roles).

A Dense layer maps every block by the same linear map: its ``jvp`` role (the linear part)
on all B·(N + p) rows at once, one GEMM (the zero padding rows stay zero), and its offset —
the ``forward`` role at a zero input, the bias — added to the value block; an activation
runs its derived Taylor role (``laplacian``, ``taylor:K`` or ``collapsed:K`` of
``generated/taylor`` and ``generated/taylor_collapsed``; for user and learnable activations of
a module derived and compiled at first use) on the whole stack in one pass (after a first
Dense layer, whose non-value blocks are the same for every point, it reads them as
row-stride-0 views: :class:`SeedStack`). The
backward sweep runs the roles' derived pullbacks (``vjp:laplacian``, ``vjp:taylor:K``,
``vjp:collapsed:K``) and the Dense pullbacks on the stacks (``vjp:W`` and ``vjp:x`` over all
rows at once: one GEMM each, the padding rows contributing zero; ``vjp:b`` on the value block
only). Affine layers in evaluation mode (BatchNorm, Dropout) and piecewise-linear ones
(MaxPool2D) run their own forward, ``jvp`` and pullbacks on the blocks; composite layers
(Softmax, LayerNorm/RMSNorm/GroupNorm, a user's ``CompositeSpec``) run their specs' derived
``taylor:K`` roles and pullbacks once per direction (``DerivedComposite.taylor``).
Nothing here multiplies derivative factors: the sweeps slice, stack and call roles, and sum
a composite layer's per-direction coefficients (the Laplacian's Σ_j, the collapsed block's
Σ_j c_j with the operator's constant weights).
"""
from __future__ import annotations

import importlib
import threading
import types

import numpy as np

from .activation import Activation, LearnableActivation
from .branched import BranchedLayer
from .composed import _ScaleShift
from .conv import AvgPool2D, Conv2D, Flatten, MaxPool2D
from .dense import Dense
from .dropout import Dropout
from .kernels import manifest
from .layer_base import EVAL
from .normalization import CompositeLayer, _BatchNorm

#: layers affine in their input, run by their own roles on the stacks (Dense has a fast path)
AFFINE = (Conv2D, AvgPool2D)
#: layers affine in their input (in evaluation mode) whose parameters the linear part reads too
#: (BatchNorm's γ, a norm's scale and shift): run through the layer's forward and pullback on
#: all rows, f(0) taken off
EVAL_AFFINE = (_BatchNorm, _ScaleShift)
#: piecewise-linear layers: every Taylor coefficient is pushed by the Jacobian at the value
#: (the layer's ``jvp`` at the value block), its second and higher derivatives being zero
PIECEWISE_LINEAR = (MaxPool2D,)

MAX_ORDER = 4
_BASIC = ("u", "grad", "laplacian")
_LINEAR: dict = {}


def _user_spec_kind(layer):
    """For a layer from a user's contraction or window spec (``L.from_spec``): ``"affine"``
    when the spec is linear in its input (run as :data:`EVAL_AFFINE`: the layer's own forward
    and pullback on every block, its value at a zero input taken off the higher blocks, so any
    offset is right), ``"piecewise"`` when it selects by a max and has no parameters (a user
    max pool: as :data:`PIECEWISE_LINEAR`), else None (no sweep)."""
    from ..derive.indexed import ContractionSpec, linear_in_inputs
    from .layer_base import SpecLayer
    spec = getattr(layer, "spec", None)
    if not isinstance(spec, ContractionSpec) or not isinstance(layer, SpecLayer) or isinstance(layer, (Dense,) + AFFINE):
        return None
    if spec.selects:
        return None if spec.params else "piecewise"
    if spec.hash not in _LINEAR:
        _LINEAR[spec.hash] = linear_in_inputs(spec)
    return "affine" if _LINEAR[spec.hash] else None
#: padding rows are chosen so that consecutive blocks start this many bytes (mod 4 KiB) or more
#: away from a 4 KiB boundary (measured: 64 B left the tanh forward Laplacian at d = 10 1.4×
#: slower than 768 B … 1.3 KiB)
_PAD_BYTES = 768


def padding_rows(N: int, row_sizes, itemsize: int) -> int:
    """Rows p appended to every block of a stack: the fewest (≤ 64) that move each block's
    start, for every row size of the sweep, at least ``_PAD_BYTES`` away from a multiple of
    4 KiB (the one giving the largest such distance when none does)."""
    best, best_score = 1, -1
    for p in range(1, 65):
        score = min(min(((N + p) * f * itemsize) % 4096, 4096 - ((N + p) * f * itemsize) % 4096)
                    for f in row_sizes)
        if score >= _PAD_BYTES:
            return p
        if score > best_score:
            best, best_score = p, score
    return best


_MERGED = None


def _module():
    """The built-in activations' Taylor kernels: ``generated/taylor`` and
    ``generated/taylor_collapsed`` (two modules so they compile in parallel at install) as one
    module-like view, their manifests merged per activation."""
    global _MERGED
    if _MERGED is None:
        base = importlib.import_module("symprop.generated.taylor")
        extra = importlib.import_module("symprop.generated.taylor_collapsed")
        table = {name: {**entry, "roles": {**entry["roles"], **extra.MANIFEST.get(name, {}).get("roles", {})}}
                 for name, entry in manifest(base).items()}
        _MERGED = types.SimpleNamespace(__name__=base.__name__, MANIFEST=table,
                                        KERNELS={**base.KERNELS, **extra.KERNELS})
    return _MERGED


def user_taylor_module(spec, order: int, verbose: bool = False):
    """The Taylor-mode kernels (``taylor:1 … taylor:order``, ``laplacian``, ``collapsed:3 …
    collapsed:order`` and their pullbacks)
    of a user's elementwise spec, derived by :func:`derive.taylor.derive_taylor` and compiled
    through :func:`codegen.build.compile_spec` (the same cache as its other kernels, keyed by
    the spec's hash and the order)."""
    from ..codegen.taylor import render_taylor_module
    from ..derive.taylor import derive_taylor
    from .user_layers import _compile
    return _compile(f"taylor{order}_{spec.name}", spec, lambda sp_: derive_taylor(sp_, max_order=order),
                    render_taylor_module, verbose)[0]


def composite_taylor_kernels(layer, order: int):
    """The kernels of a composite layer's spec with its ``taylor:order`` role and pullback
    (derived from the spec's stages, ``DerivedComposite.taylor``): the layer's own module when
    it carries them (orders 1-2 of the built-ins), else the spec's module compiled with
    orders up to ``order`` on first use (cached like a user spec's; a module of a higher order
    serves a lower one). A spec with constants or batch statistics (BatchNorm, which runs as an
    affine layer in evaluation mode) has none: refused by name."""
    from .kernels import SpecKernels
    K = layer.kernels
    if K.has(f"taylor:{order}"):
        return K
    spec = getattr(layer, "spec", None)
    if spec is None:
        from ..derive.builtins import COMPOSITES
        spec = COMPOSITES.get(K.spec)
    if spec is None or spec.constants or spec.stats:
        raise TypeError(f"input_derivatives: {layer.name} has no Taylor-mode sweep: Taylor roles are derived "
                        f"for composite specs without constants or batch statistics (spec "
                        f"{getattr(spec, 'name', K.spec)!r})")
    with _COMPOSITE_LOCK:
        have = _COMPOSITE_MODULES.setdefault(spec.hash, {})
        done = [k for k in have if k >= order]
        if done:
            return have[min(done)]
        from ..codegen.composite import render_composite_module
        from ..derive.composite import derive_composite
        from ..derive.elementwise import SpecError
        from .user_layers import _compile
        try:
            module, _ = _compile(f"ctaylor{order}_{spec.name}", spec, derive_composite,
                                 lambda stem, ds: render_composite_module(stem, ds, taylor_order=order), False)
        except SpecError as exc:
            raise SpecError(f"input_derivatives: {layer.name}: {exc}") from exc
        have[order] = SpecKernels(module, spec.name)
        return have[order]


_COMPOSITE_MODULES: dict = {}   # spec hash -> {order: SpecKernels}
_COMPOSITE_LOCK = threading.Lock()   # one compile of a spec's module at a time


def _call(role, env: dict):
    """Call a bound kernel of a spec role (``runtime/kernels.Role``) with arrays by name
    (outputs included: preallocated views of the stacks)."""
    args = [env.get(a) for a in role.call]
    role.fn(*args)


def _nonzero_blocks(G):
    """Sorted blocks of a cotangent stack that are not all zero (a Poisson loss reaches the
    Laplacian block only), or None for all of them."""
    live = [b for b in range(G.shape[0]) if G[b].any()]
    return None if len(live) == G.shape[0] else live


def _parse(which, d: int):
    """(mode, coords, K) of a derivative query; refuses what is not supported, by name."""
    if not which:
        which = _BASIC
    coords, K, mode = set(), 0, "laplacian"
    for q in which:
        if q in _BASIC:
            if q == "grad":
                K = max(K, 1)
                coords |= set(range(d))
            elif q == "laplacian":
                K = max(K, 2)
                coords |= set(range(d))
            continue
        if not isinstance(q, tuple) or not q or not all(isinstance(i, (int, np.integer)) for i in q):
            raise ValueError(f"input_derivatives: a query is 'u', 'grad', 'laplacian' or a tuple of input "
                             f"coordinates such as (0, 0) for ∂²u/∂x0²; got {q!r}")
        if any(not 0 <= i < d for i in q):
            raise ValueError(f"input_derivatives: partial {q} names a coordinate outside 0 … {d - 1}")
        if len(set(q)) > 1:
            raise ValueError(f"input_derivatives: mixed partial {q} is not supported (pure coordinate partials "
                             f"∂ᵏu/∂x_iᵏ up to order {MAX_ORDER}, the gradient and the Laplacian are)")
        if len(q) > MAX_ORDER:
            raise ValueError(f"input_derivatives: partial {q} has order {len(q)}; at most {MAX_ORDER} is supported")
        mode = "jet"
        coords.add(int(q[0]))
        K = max(K, len(q))
    if mode == "laplacian":
        return "laplacian", list(range(d)), 2
    return "jet", sorted(coords), max(K, 1)


class SeedStack:
    """The stack after a first Dense layer on the seed, kept unmaterialized for the activation
    that reads it: the value block is N real rows, but every other block's rows are the same
    for all points (a first-order block: the Dense's ``jvp`` of one seed direction; a higher
    one: zero), so they are passed to the activation's kernels as read-only views with row
    stride 0 (the kernels take any row stride) instead of d·N rows written and read again."""

    def __init__(self, shape, dtype, names: dict):
        self.shape, self.dtype, self.names = shape, dtype, names


class InputDerivatives:
    """A derivative query bound to a model: ``forward(X)`` gives ``({query: array}, tape)``,
    ``backward(tape, {query: cotangent})`` the parameter gradient of Σ cotangent·derivative
    (aligned with ``model.parameters()``)."""

    def __init__(self, model, which=(), bind: bool = True):
        if model.input_shape is None:
            raise ValueError("input_derivatives: the model is not built yet (pass input_shape= or call build())")
        self.model = model
        self.d = int(np.prod(model.input_shape))   # image inputs: one coordinate per pixel and channel
        self.which = tuple(which) or _BASIC
        self.mode, self.coords, self.K = _parse(self.which, self.d)
        self.m = len(self.coords)
        self.B = self.d + 2 if self.mode == "laplacian" else 1 + self.K * self.m
        self.role = "laplacian" if self.mode == "laplacian" else f"taylor:{self.K}"
        self.row_sizes = self._row_sizes(model)
        module = _module()
        self.table = manifest(module)
        self.kernels = module.KERNELS
        self.layer_kernels = {}          # id(activation) -> (its Taylor manifest entry, its kernels)
        self.spec_kinds = {}             # id(user spec layer) -> "affine" or "piecewise" (_user_spec_kind)
        self.composites = {}             # id(composite layer) -> the SpecKernels with its Taylor roles
        if bind:                         # (a subclass that sets its own order binds after it)
            self._bind_layers(model.layers)

    def _bind_layers(self, layers):
        """Check every layer of a chain (branches included) has a sweep; bind the activations'
        Taylor kernels."""
        model, table = self.model, self.table
        for layer in layers:
            if isinstance(layer, BranchedLayer):   # a fan-out: its branches' layers
                for chain in layer.branches():
                    self._bind_layers(chain)
                continue
            if isinstance(layer, (Dense, Flatten, _ScaleShift) + AFFINE + PIECEWISE_LINEAR):   # DropConnect is off in eval
                continue
            if isinstance(layer, EVAL_AFFINE + (Dropout,)):
                if model.training and not (isinstance(layer, Dropout) and layer.p == 0):
                    raise ValueError(f"input_derivatives: {layer.name} is in training mode (the model's train() is "
                                     f"on); derivatives with respect to the input are taken in evaluation mode "
                                     f"({'the running statistics' if isinstance(layer, _BatchNorm) else 'no dropout'})"
                                     f": call model.eval() first")
                continue
            kind = _user_spec_kind(layer)
            if kind is not None:   # a user's contraction or window spec: how the sweep runs it
                self.spec_kinds[id(layer)] = kind
                continue
            if isinstance(layer, Activation) and layer.spec is None and layer.kernel_name in table:
                self.layer_kernels[id(layer)] = (table[layer.kernel_name], self.kernels)
                continue
            if isinstance(layer, Activation) and layer.spec is not None or isinstance(layer, LearnableActivation):
                spec = layer.spec
                if spec is None:          # a built-in learnable activation: its spec from the registry
                    from ..derive.builtins import LEARNABLE
                    spec = LEARNABLE[layer.kernel_name]
                mod = user_taylor_module(spec, self.taylor_order)
                self.layer_kernels[id(layer)] = (manifest(mod)[spec.name], mod.KERNELS)
                continue
            if isinstance(layer, CompositeLayer):   # softmax, a normalisation, a user's composite spec
                self.composites[id(layer)] = composite_taylor_kernels(layer, self.taylor_order)
                continue
            raise TypeError(f"input_derivatives: {layer.name} has no Taylor-mode sweep; supported are Dense, "
                            f"Conv2D, AvgPool2D, MaxPool2D, Flatten, BatchNorm1D/2D and Dropout (evaluation mode), "
                            f"Softmax, LayerNorm, RMSNorm, GroupNorm, user composite specs, "
                            f"the built-in activations {sorted(table)}, learnable activations, activations "
                            f"from Activation.from_sympy, user specs (L.from_spec) linear in their input or "
                            f"selecting by a max, and residual blocks of these")

    @property
    def taylor_order(self) -> int:
        """The order of the Taylor roles this sweep runs (the forward Laplacian: 2)."""
        return 2 if self.mode == "laplacian" else self.K

    @staticmethod
    def _row_sizes(model) -> list[int]:
        """Elements per sample of the stacks the activations' kernels read and write (the
        GEMMs do not mind aligned blocks); all stacks' when there is no activation."""
        shape = tuple(model.input_shape)
        sizes, acts = [int(np.prod(shape))], []
        for layer in model.layers:
            if isinstance(layer, (Activation, LearnableActivation)):
                acts.append(int(np.prod(shape)))
            shape = tuple(layer.output_shape(shape))
            sizes.append(int(np.prod(shape)))
        return sorted(set(acts or sizes))

    # ---------------------------------------------------------------- block layout
    def blocks(self, k: int):
        """Slice of the order-k coefficient blocks (all directions) of a stack, k ≥ 1."""
        if self.mode == "laplacian":
            return slice(1, 1 + self.d) if k == 1 else slice(1 + self.d, 2 + self.d)
        return slice(1 + (k - 1) * self.m, 1 + k * self.m)

    def seed(self, X: np.ndarray) -> np.ndarray:
        """The input stack: the value X and the path x(t) = X + t·e_i of every direction
        (first-order coefficient e_i, higher ones 0)."""
        N = self.N = X.shape[0]
        self.rows = N + padding_rows(N, self.row_sizes, X.dtype.itemsize)
        S = np.zeros((self.B, self.rows) + X.shape[1:], dtype=X.dtype)
        S[0, :N] = X
        flat = S.reshape(self.B, self.rows, self.d)
        for j, i in enumerate(self.coords):
            flat[self.blocks(1).start + j, :N, i] = 1
        return S

    def _empty(self, like_or_shape, dtype=None):
        """A stack with its padding rows zero (their GEMM products then stay zero)."""
        if isinstance(like_or_shape, np.ndarray):
            out = np.empty_like(like_or_shape)
        elif isinstance(like_or_shape, SeedStack):
            out = np.empty(like_or_shape.shape, dtype=like_or_shape.dtype)
        else:
            out = np.empty(like_or_shape, dtype=dtype)
        out[:, self.N:] = 0
        return out

    # ---------------------------------------------------------------- sweeps
    def _names(self, stack):
        """The role's input names bound to blocks of a stack (prefixed with ``g``: the names
        of the pullback's outputs)."""
        S, N = stack, self.N
        if isinstance(S, SeedStack):
            return S.names
        if self.mode == "laplacian":
            return {"x": S[0, :N], "J": S[self.blocks(1), :N], "L": S[self.blocks(2).start, :N]}
        env = {"x": S[0, :N]}
        for k in range(1, self.K + 1):
            env[f"x{k}"] = S[self.blocks(k), :N]
        return env

    def _out_names(self, stack):
        """The role's output names bound to blocks of a stack (prefixed with ``g``: the
        pullback's cotangent inputs)."""
        S, N = stack, self.N
        if self.mode == "laplacian":
            return {"y": S[0, :N], "Jy": S[self.blocks(1), :N], "Ly": S[self.blocks(2).start, :N]}
        env = {"y": S[0, :N]}
        for k in range(1, self.K + 1):
            env[f"y{k}"] = S[self.blocks(k), :N]
        return env

    def _activation_params(self, layer, stack) -> dict:
        """An activation's parameters by name: fixed ones as scalars; a learnable one as a
        point array (its value for every element: one per channel on axis 1, or shared),
        broadcast over the samples without a copy."""
        if not isinstance(layer, LearnableActivation):
            return layer.params
        feat = stack.shape[2:]
        w = layer.weight
        if layer.num_parameters > 1:
            per_sample = np.broadcast_to(w.reshape((-1,) + (1,) * (len(feat) - 1)), feat)
        else:
            per_sample = np.broadcast_to(w.reshape((1,) * len(feat)), feat)
        return {**layer.params, layer.param_name: np.broadcast_to(np.ascontiguousarray(per_sample), (self.N,) + feat)}

    def _kernel(self, layer, role):
        spec_entry, kernels = self.layer_kernels[id(layer)]
        entry = spec_entry["roles"][role]
        return kernels[entry["kernel"]], entry

    def forward(self, X):
        model = self.model
        X = model._check_X(X)
        stack, tape = self._forward_chain(model.layers, self.seed(X), top=True)
        return self._results(stack), tape

    def _forward_chain(self, layers, stack, top=False):
        """The stack through a chain of layers: ``(stack, tape)``; ``top``: the model's own
        chain (its first Dense layer reads the seed's unit rows)."""
        tape = []
        for li, layer in enumerate(layers):
            if isinstance(layer, BranchedLayer):   # a fan-out (Residual): the branches' stacks summed
                out, subtapes = None, []
                for chain in layer.branches():
                    y, sub = self._forward_chain(chain, stack)
                    subtapes.append(sub)
                    out = y if out is None else out + y
                tape.append((layer, stack, (out, subtapes)))
                stack = out
            elif isinstance(layer, Dense) and top and li == 0 and self._unit_rows(stack.dtype) is not None:
                lazy = li + 1 < len(layers) and id(layers[li + 1]) in self.layer_kernels
                out = self._seed_dense(layer, stack, lazy)
                tape.append((layer, stack, out))
                stack = out
            elif isinstance(layer, Dense):
                stack_in = stack
                B, Np, _ = stack_in.shape
                out = np.empty((B, Np, layer.out_features), dtype=stack.dtype)
                R = layer.kernels.roles
                rows = stack_in.reshape(B * Np, -1)
                _call(R["jvp"], {"x": rows, "W": layer.W, "Rx": rows, "Ry": out.reshape(B * Np, -1)})
                if layer.bias:      # the offset: the forward role at a zero input
                    offset = np.empty((1, layer.out_features), dtype=stack.dtype)
                    _call(R["forward"], {"x": np.zeros((1, layer.in_features), stack.dtype), "W": layer.W,
                                         "b": layer.b, "y": offset})
                    out[0, :self.N] += offset
                tape.append((layer, stack_in, out))
                stack = out
            elif isinstance(layer, Flatten):
                tape.append((layer, stack, None))
                stack = stack.reshape(stack.shape[:2] + (-1,))
            elif isinstance(layer, AFFINE):
                out = self._affine(layer, stack, self.N)
                tape.append((layer, stack, out))
                stack = out
            elif isinstance(layer, Dropout):      # the identity in evaluation mode
                tape.append((layer, stack, stack))
            elif isinstance(layer, EVAL_AFFINE) or self.spec_kinds.get(id(layer)) == "affine":
                out, rec = self._eval_affine(layer, stack)
                tape.append((layer, stack, (out, rec)))
                stack = out
            elif isinstance(layer, PIECEWISE_LINEAR) or self.spec_kinds.get(id(layer)) == "piecewise":
                out, rec = self._piecewise_linear(layer, stack)
                tape.append((layer, stack, (out, rec)))
                stack = out
            elif id(layer) in self.composites:
                out, rec = self._composite(layer, stack)
                tape.append((layer, stack, (out, rec)))
                stack = out
            else:
                kern, entry = self._kernel(layer, self.role)
                out = self._empty(stack)
                env = {**self._names(stack), **self._out_names(out), **self._activation_params(layer, stack)}
                kern(*[env[a] for a in entry["call"]])
                tape.append((layer, stack, out))
                stack = out
        return stack, tape

    def _unit_rows(self, dtype):
        """The distinct input rows of the first-order blocks of the seed (e_i for each
        coordinate; one row per block, the same for every point), or None when a block's rows
        differ between points (then a first Dense layer runs on every row)."""
        return np.ascontiguousarray(np.eye(self.d, dtype=dtype)[self.coords])

    def _seed_dense(self, layer, S, lazy: bool = False):
        """A first Dense layer on the seed stack: the value block through its ``forward`` role
        (N rows); every first-order block's rows are one unit vector e_i, so its ``jvp`` role
        runs on the m distinct rows once and the results are broadcast; the higher blocks
        are zero in and out. ``lazy`` (an activation reads the result next): a
        :class:`SeedStack`, the broadcast blocks not written."""
        N, R = self.N, layer.kernels.roles
        F = layer.out_features
        E = self._unit_rows(S.dtype)
        YE = np.empty((E.shape[0], F), dtype=S.dtype)
        _call(R["jvp"], {"x": E, "W": layer.W, "Rx": E, "Ry": YE})
        if lazy:
            value = np.empty((N, F), dtype=S.dtype)
            _call(R["forward"], {"x": S[0, :N], "W": layer.W, "b": layer.b, "y": value})
            return SeedStack((S.shape[0], S.shape[1], F), S.dtype, self._seed_names(value, YE))
        out = np.zeros((S.shape[0], S.shape[1], F), dtype=S.dtype)
        _call(R["forward"], {"x": S[0, :N], "W": layer.W, "b": layer.b, "y": out[0, :N]})
        out[self.blocks(1), :N] = YE[:, None, :]
        return out

    def _seed_names(self, value, YE):
        """:meth:`_names` of the stack whose value block is ``value`` and whose first-order
        blocks' rows are the rows of ``YE`` (the same for every point), higher blocks zero:
        the broadcast blocks as row-stride-0 views."""
        N, F = value.shape
        per_dir = np.broadcast_to(YE[:, None, :], (YE.shape[0], N, F))
        if self.mode == "laplacian":
            return {"x": value, "J": per_dir, "L": np.broadcast_to(np.zeros(F, value.dtype), (N, F))}
        zero = np.broadcast_to(np.zeros((YE.shape[0], 1, F), value.dtype), per_dir.shape)
        return {"x": value, "x1": per_dir, **{f"x{k}": zero for k in range(2, self.K + 1)}}

    def _direction_blocks(self):
        """How a composite layer's ``taylor:K`` role runs along each direction j: ``(ins,
        outs)``, the stack blocks of its coefficients x1 … xK (None: zero) and where its y1 … yK
        go, each ``(block, None)`` (written) or ``(block, w)`` (w·y_k added). Laplacian mode: the
        Jacobian column, and the Laplacian block for the first direction only; the Laplacian
        is Dy[L] + Σ_j D²y[J_j, J_j], the directions' order-2 coefficients summed."""
        if self.mode == "laplacian":
            J, L = self.blocks(1), self.blocks(2).start
            return [((b, L if j == 0 else None), ((b, None), (L, None if j == 0 else 1.0)))
                    for j, b in enumerate(range(J.start, J.stop))]
        dirs = []
        for j in range(self.m):
            blocks = tuple(self.blocks(k).start + j for k in range(1, self.K + 1))
            dirs.append((blocks, tuple((b, None) for b in blocks)))
        return dirs

    def _linear_blocks(self):
        """Blocks that enter a composite layer only through its Jacobian (the collapsed jets'
        order-K sum): ``[(input block, output block)]``, pushed by ``taylor:1`` (y1 = Dy[x1])
        before the directions add to the output block."""
        return []

    def _composite_runs(self):
        """The composite layer's role calls of this sweep: ``(order, ins, outs)`` — the
        blocks pushed through the Jacobian alone (``taylor:1``), then each direction's
        ``taylor:K`` (:meth:`_direction_blocks`)."""
        runs = [(1, (bi,), ((bo, None),)) for bi, bo in self._linear_blocks()]
        return runs + [(self.taylor_order, ins, outs) for ins, outs in self._direction_blocks()]

    def _composite_env(self, layer, rec, S, ins, zero):
        env = layer._env(rec)
        for k, b in enumerate(ins, 1):
            env[f"x{k}"] = layer._in(zero if b is None else S[b, :self.N], rec)
        return env

    def _composite(self, layer, S):
        """A composite layer (softmax, a normalisation): its forward on the value block, then
        its derived Taylor roles (:meth:`_composite_runs`)."""
        N, kern = self.N, self.composites[id(layer)]
        out = self._empty(S)
        y, rec = layer.forward(S[0, :N])
        out[0, :N] = y
        zero = np.zeros_like(y)
        for K, ins, outs in self._composite_runs():
            env = self._composite_env(layer, rec, S, ins, zero)
            res = kern.run_named(f"taylor:{K}", env, y.dtype, rec["_scalars"], rec["_shapes"])
            for k, (b, w) in enumerate(outs, 1):
                v = layer._out(res[f"y{k}"], rec)
                if w is None:
                    out[b, :N] = v
                else:
                    out[b, :N] += v if w == 1 else w * v
        return out, rec

    def _composite_back(self, layer, S, rec, G, need_input=True):
        """The pullback of :meth:`_composite`: the ``vjp`` role on the value cotangent plus
        the derived ``vjp:taylor:K`` of every run (x- and parameter cotangents summed over
        the runs). ``(parameter gradients, input cotangent stack or None)``."""
        N, kern = self.N, self.composites[id(layer)]
        if not need_input and not layer.trainable():
            return [], None
        g0, grads = layer.vjp(rec, G[0, :N], need_input)
        grads = [np.array(g, copy=True) for g in grads]
        names = [f"grad_{p}" for p in layer.trainable()]
        gin = None
        if need_input:
            gin = self._empty(S)
            gin[0, :N] = g0
        zero = np.zeros_like(G[0, :N])
        for K, ins, outs in self._composite_runs():
            env = self._composite_env(layer, rec, S, ins, zero)
            for k, (b, w) in enumerate(outs, 1):
                g = np.ascontiguousarray(G[b, :N])
                env[f"g{k}"] = layer._in(g if w is None or w == 1 else w * g, rec)
            res = kern.run_named(f"vjp:taylor:{K}", env, G.dtype, rec["_scalars"], rec["_shapes"])
            for g, part in zip(grads, layer._fold(rec, [res[name] for name in names])):
                g += part
            if need_input:
                gin[0, :N] += layer._out(res["gx"], rec)
                for k, b in enumerate(ins, 1):
                    if b is not None:
                        gin[b, :N] = layer._out(res[f"gx{k}"], rec)
        return grads, gin

    def _dense_back_blocks(self, layer, S, G, live):
        """The Dense pullbacks over the live blocks only (the others' cotangents are zero):
        ``vjp:W`` summed over them, ``vjp:x`` into them, zero elsewhere."""
        R, N = layer.kernels.roles, self.N
        gW = np.zeros_like(layer.W)
        part = np.empty_like(layer.W)
        gx = np.zeros_like(S)
        for b in live:
            _call(R["vjp:W"], {"x": S[b], "g": G[b], "gW": part})
            gW += part
            _call(R["vjp:x"], {"W": layer.W, "g": G[b], "gx": gx[b]})
        gb = None
        if layer.bias:
            gb = np.empty_like(layer.b)
            if 0 in live:
                _call(R["vjp:b"], {"g": G[0, :N], "gb": gb})
            else:
                gb[...] = 0
        return gW, gb, gx

    def _seed_dense_vjp_W(self, layer, S, G, gW):
        """``vjp:W`` of :meth:`_seed_dense`: the value rows, plus the unit rows once with the
        cotangents of their N copies summed (the pullback is linear in them)."""
        N, R = self.N, layer.kernels.roles
        _call(R["vjp:W"], {"x": S[0, :N], "g": G[0, :N], "gW": gW})
        E = self._unit_rows(S.dtype)
        gE = np.ascontiguousarray(G[self.blocks(1), :N].sum(axis=1))
        part = np.empty_like(gW)
        _call(R["vjp:W"], {"x": E, "g": gE, "gW": part})
        gW += part

    @staticmethod
    def _affine(layer, S, N):
        """An affine layer on a stack: its ``jvp`` role (the linear part) on all rows at once
        (zero padding rows stay zero), its offset (the ``forward`` role at a zero input, when
        the layer has a parameter the linear part does not read: a bias) added to the value
        block's N rows."""
        K, B, Np = layer.kernels, S.shape[0], S.shape[1]
        arrays, sc = layer.spec_arrays(), layer.scalars()
        out_shape = tuple(layer.output_shape(S.shape[2:]))
        rows = S.reshape((B * Np,) + S.shape[2:])
        y = K.run("jvp", {**arrays, "x": rows, "Rx": rows}, S.dtype, sc,
                  {"x": rows.shape, "y": (B * Np,) + out_shape}).reshape((B, Np) + out_shape)
        linear = set(K.roles["jvp"].arrays)
        if any(p not in linear for p in layer.trainable()):
            zero = np.zeros((1,) + S.shape[2:], S.dtype)
            y[0, :N] += K.run("forward", {**arrays, "x": zero}, S.dtype, sc, {"x": zero.shape, "y": (1,) + out_shape})
        return y

    def _eval_affine(self, layer, S):
        """A layer affine in its input, f(x) = f(0) + A·x, whose parameters its linear part
        reads as well (BatchNorm in evaluation mode): its forward on all rows at once, f(0) (its
        forward at one zero sample) taken off every block but the value block."""
        B, Np, N = S.shape[0], S.shape[1], self.N
        y, rec = layer.forward(S.reshape((B * Np,) + S.shape[2:]), EVAL)
        y = y.reshape((B, Np) + y.shape[1:])
        zero = np.zeros((1,) + S.shape[2:], S.dtype)
        f0, rec0 = layer.forward(zero, EVAL)
        y[1:] -= f0
        y[:, N:] = 0
        return y, (rec, rec0)

    def _eval_affine_back(self, layer, S, out, G, need_input):
        """Pullbacks of :meth:`_eval_affine`: the layer's pullback on all rows, minus the
        pullback at a zero sample of the cotangents of the blocks f(0) was taken off (summed
        over their rows first: the pullback is linear in them and every row's input is 0)."""
        B, Np = S.shape[0], S.shape[1]
        rec, rec0 = out[1]
        gx, grads = layer.vjp(rec, G.reshape((B * Np,) + G.shape[2:]), need_input)
        g0 = G[1:].sum(axis=(0, 1))[None]
        _, grads0 = layer.vjp(rec0, g0, False)
        grads = [g - c for g, c in zip(grads, grads0)]
        return grads, (gx.reshape(S.shape) if need_input else None)

    def _piecewise_linear(self, layer, S):
        """A piecewise-linear layer (max pooling): the value block through its forward, every
        other block through its ``jvp`` at the value block."""
        N = self.N
        y0, rec = layer.forward(np.ascontiguousarray(S[0, :N]), EVAL)
        y = np.zeros((S.shape[0], S.shape[1]) + y0.shape[1:], S.dtype)
        y[0, :N] = y0
        for k in range(1, S.shape[0]):
            y[k, :N] = layer.jvp(rec, np.ascontiguousarray(S[k, :N]), [])
        return y, rec

    def _piecewise_linear_back(self, layer, S, out, G):
        N = self.N
        rec = out[1]
        gx = np.zeros_like(S)
        for k in range(S.shape[0]):
            gx[k, :N] = layer.input_vjp(rec, np.ascontiguousarray(G[k, :N]))
        return gx

    @staticmethod
    def _affine_back(layer, S, G, need_input, N):
        """Pullbacks of :meth:`_affine`: a parameter the ``jvp`` role reads (a weight) over
        every block at once, one it does not (an offset: the bias) over the value block."""
        K, B, Np = layer.kernels, S.shape[0], S.shape[1]
        arrays, sc = layer.spec_arrays(), layer.scalars()
        xf = S.reshape((B * Np,) + S.shape[2:])
        gf = G.reshape((B * Np,) + G.shape[2:])
        linear = set(K.roles["jvp"].arrays)
        grads = []
        for p in layer.trainable():
            if p in linear:
                env, shapes = {**arrays, "x": xf, "g": gf}, {"x": xf.shape, "y": gf.shape}
            else:
                env, shapes = {**arrays, "x": S[0, :N], "g": G[0, :N]}, {"x": S[0, :N].shape, "y": G[0, :N].shape}
            grads.append(K.run(f"vjp:{p}", env, G.dtype, sc, shapes))
        gx = None
        if need_input:
            gx = K.run("vjp:x", {**arrays, "x": xf, "g": gf}, G.dtype, sc,
                       {"x": xf.shape, "y": gf.shape}).reshape(S.shape)
        return grads, gx

    def _results(self, S):
        S = S[0] if isinstance(S, tuple) else S
        S = S.reshape(S.shape[:2] + (-1,))[:, :self.N]
        F = S.shape[2]
        sq = (lambda a: a[..., 0]) if F == 1 else (lambda a: a)
        res = {}
        for q in self.which:
            if q == "u":
                res[q] = sq(S[0])
            elif q == "grad":
                J = S[self.blocks(1)]
                if self.mode == "jet":
                    J = J[[self.coords.index(i) for i in range(self.d)]]
                res[q] = np.moveaxis(sq(J), 0, 1)
            elif q == "laplacian":
                res[q] = sq(S[self.blocks(2)].sum(axis=0))
            else:
                res[q] = sq(S[self.blocks(len(q)).start + self.coords.index(q[0])])
        return res

    def cotangent_stack(self, cot: dict, N: int, F: int, dtype) -> np.ndarray:
        """The adjoint of :meth:`_results`: a stack of output cotangents."""
        G = np.zeros((self.B, self.rows, F), dtype=dtype)
        ex = (lambda a: np.asarray(a, dtype)[..., None]) if F == 1 else (lambda a: np.asarray(a, dtype))
        for q, g in cot.items():
            if g is None:
                continue
            if q == "u":
                G[0, :N] += ex(g)
            elif q == "grad":
                g = np.moveaxis(ex(g), 1, 0)
                for i in range(self.d):
                    G[self.blocks(1).start + self.coords.index(i), :N] += g[i]
            elif q == "laplacian":
                G[self.blocks(2), :N] += ex(g)[None]
            elif q in self.which:
                G[self.blocks(len(q)).start + self.coords.index(q[0]), :N] += ex(g)
            else:
                raise ValueError(f"input_derivatives: cotangent for {q!r}, which was not computed")
        return G

    def backward(self, tape, cot: dict) -> list[np.ndarray]:
        model = self.model
        layer, stack_in, last = tape[-1]
        if last is None:   # a model ending in Flatten
            last = stack_in.reshape(stack_in.shape[:2] + (-1,))
        if isinstance(last, tuple):
            last = last[0]
        flat = last.reshape(last.shape[:2] + (-1,))
        G = self.cotangent_stack(cot, self.N, flat.shape[2], flat.dtype).reshape(last.shape)
        params, slots = model.param_slots()
        grads = [None] * len(params)
        # blocks whose cotangents are nonzero, until an activation's pullback mixes them (a
        # Poisson loss sees only the Laplacian block: the last Dense then pulls back one block,
        # not d + 2)
        live = _nonzero_blocks(G)

        def add(slot, g):
            grads[slot] = g if grads[slot] is None else grads[slot] + g

        self._backward_chain(tape, G, live, slots, add, top=True)
        return [np.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    def _backward_chain(self, tape, G, live, slots, add, top=False):
        """Pull the cotangent stack ``G`` back through a chain's tape, adding each parameter's
        gradient through ``add(slot, g)`` (``slots[k]``: layer k's parameter-use slots);
        returns the cotangent stack at the chain's input (unchanged past the model's first
        layer, whose input gradient is not needed). ``live``: the blocks ``G`` may be nonzero
        in (None: all)."""
        for li in range(len(tape) - 1, -1, -1):
            layer, stack_in, out = tape[li]
            first = top and li == 0          # the model's first layer: no input gradient needed
            if isinstance(layer, BranchedLayer):   # a fan-out: each branch pulls G back, summed
                uses, k, Gin = slots[li], 0, None
                for chain, sub in zip(layer.branches(), out[1]):
                    chain_slots = []
                    for la in chain:
                        n = len(la.param_uses())
                        chain_slots.append(uses[k:k + n])
                        k += n
                    g = self._backward_chain(sub, G, None, chain_slots, add)
                    Gin = g if Gin is None else Gin + g
                G, live = Gin, None
                continue
            if isinstance(layer, Dense) and not first and live is not None:
                gW, gb, G = self._dense_back_blocks(layer, stack_in, G, live)
                add(slots[li][0], gW)
                if layer.bias:
                    add(slots[li][1], gb)
                continue
            kind = self.spec_kinds.get(id(layer))
            if not isinstance(layer, (Dense, Flatten, Dropout) + AFFINE + EVAL_AFFINE + PIECEWISE_LINEAR) \
                    and kind is None:
                live = None
            if isinstance(layer, Flatten):
                G = G.reshape(stack_in.shape)
            elif isinstance(layer, Dropout):
                pass
            elif isinstance(layer, EVAL_AFFINE) or kind == "affine":
                gs, G = self._eval_affine_back(layer, stack_in, out, G, not first)
                for slot, g in zip(slots[li], gs):
                    add(slot, g)
            elif isinstance(layer, PIECEWISE_LINEAR) or kind == "piecewise":
                if not first:
                    G = self._piecewise_linear_back(layer, stack_in, out, G)
            elif isinstance(layer, AFFINE):
                gs, G = self._affine_back(layer, stack_in, G, not first, self.N)
                for slot, g in zip(slots[li], gs):
                    add(slot, g)
            elif id(layer) in self.composites:
                gs, G = self._composite_back(layer, stack_in, out[1], G, not first)
                for slot, g in zip(slots[li], gs):
                    add(slot, g)
            elif isinstance(layer, Dense):
                B, Np, _ = stack_in.shape
                R = layer.kernels.roles
                x2, g2 = stack_in.reshape(B * Np, -1), G.reshape(B * Np, -1)
                gW = np.empty_like(layer.W)
                if first and self._unit_rows(stack_in.dtype) is not None:
                    self._seed_dense_vjp_W(layer, stack_in, G, gW)
                else:
                    _call(R["vjp:W"], {"x": x2, "g": g2, "gW": gW})
                add(slots[li][0], gW)
                if layer.bias:
                    gb = np.empty_like(layer.b)
                    _call(R["vjp:b"], {"g": G[0, :self.N], "gb": gb})
                    add(slots[li][1], gb)
                if not first:
                    gx = np.empty_like(stack_in)
                    _call(R["vjp:x"], {"W": layer.W, "g": g2, "gx": gx.reshape(B * Np, -1)})
                    G = gx
            else:
                kern, entry = self._kernel(layer, "vjp:" + self.role)
                gin = self._empty(stack_in)
                env = {**self._names(stack_in), **self._activation_params(layer, stack_in), "y": out[0, :self.N]}
                env.update({"g" + k: v for k, v in self._out_names(G).items()})
                env.update({"g" + k: v for k, v in self._names(gin).items()})
                learnable = isinstance(layer, LearnableActivation)
                if learnable:             # the parameter's pullback per element, summed below
                    env["g" + layer.param_name] = per_element = np.empty_like(env["x"])
                kern(*[env[a] for a in entry["call"]])
                if learnable:
                    axes = (0,) + tuple(range(2, per_element.ndim)) if layer.num_parameters > 1 else None
                    add(slots[li][0], np.asarray(per_element.sum(axis=axes), per_element.dtype).reshape(layer.weight.shape))
                G = gin
        return G


def input_derivatives(model, X, *which) -> dict:
    """``{query: array}`` for queries ``"u"``, ``"grad"`` (N, d), ``"laplacian"`` and pure
    partials as coordinate tuples (``(0, 0, 0, 0)``: ∂⁴u/∂x0⁴), each (N,) for a scalar output."""
    res, _ = InputDerivatives(model, which).forward(X)
    return res


# ---------------------------------------------------------------- sweeps seeded with directions

class DirectionalJets(InputDerivatives):
    """Taylor jets of order K along arbitrary input directions (rows of ``directions``, (m, d)):
    ``forward(X)`` gives the coefficients ``C`` (1 + K·m, N) — C[0] = u, C[1 + (k−1)·m + j] =
    D^k_{w_j} u = dᵏ/dtᵏ u(X + t·w_j) at t = 0 — and ``backward(tape, G)`` the parameter
    gradient of Σ G·C. The same ``taylor:K`` roles as the coordinate jets; only the seed differs
    (its first-order blocks are the directions). Mixed partials and constant-coefficient
    operators are linear combinations of these coefficients (:func:`derive.taylor.directions_for`)."""

    def __init__(self, model, directions, order: int):
        super().__init__(model, ("u",), bind=False)
        W = np.asarray(directions, dtype=np.float64)
        if W.ndim != 2 or W.shape[1] != self.d or W.shape[0] < 1:
            raise ValueError(f"DirectionalJets: directions must be (m, {self.d}) for this model's "
                             f"{self.d} input coordinates, got {W.shape}")
        if not 1 <= int(order) <= MAX_ORDER:
            raise ValueError(f"DirectionalJets: order {order} is not supported (1 … {MAX_ORDER})")
        self.directions = W
        self.mode, self.K, self.m = "jet", int(order), W.shape[0]
        self.coords = list(range(self.m))
        self.B = 1 + self.K * self.m
        self.role = f"taylor:{self.K}"
        self._bind_layers(model.layers)     # user and learnable activations' modules for order K

    def seed(self, X):
        N = self.N = X.shape[0]
        self.rows = N + padding_rows(N, self.row_sizes, X.dtype.itemsize)
        S = np.zeros((self.B, self.rows) + X.shape[1:], dtype=X.dtype)
        S[0, :N] = X
        S[1:1 + self.m, :N].reshape(self.m, N, self.d)[:] = self.directions[:, None, :].astype(X.dtype)
        return S

    def _unit_rows(self, dtype):
        return np.ascontiguousarray(self.directions.astype(dtype))

    def _results(self, S):
        S = S.reshape(S.shape[:2] + (-1,))[:, :self.N]
        return S[..., 0] if S.shape[2] == 1 else S

    def cotangent_stack(self, cot, N: int, F: int, dtype):
        C = np.asarray(cot, dtype=dtype)
        C = C[..., None] if F == 1 and C.ndim == 2 else C
        if C.shape != (self.B, N, F):
            raise ValueError(f"DirectionalJets: cotangents must be shaped like the coefficients "
                             f"{(self.B, N) + ((F,) if F > 1 else ())}, got {np.shape(cot)}")
        G = np.zeros((self.B, self.rows, F), dtype=dtype)
        G[:, :N] = C
        return G


class CollapsedSecondOrder(InputDerivatives):
    """The forward-Laplacian sweep along direction groups: for each group g (rows V_g of
    ``groups``) the first-order coefficients D_v u (v ∈ V_g) and the collapsed sum
    L_g = Σ_{v ∈ V_g} D²_v u — for A = Σ_g s_g V_gᵀV_g (signs s_g = ±1, :func:`derive.taylor.
    factor_quadratic`) Σ_ij A_ij ∂²u/∂x_i∂x_j = Σ_g s_g L_g. The groups run as G copies of the
    points in one sweep (one ``laplacian`` role per activation; a group with fewer directions is
    padded with zero directions). ``forward(X)`` gives C (R, N): C[0] = u, then the first-order
    coefficients of every group's directions in order, then L_1 … L_G; ``backward(tape, G)``
    the parameter gradient of Σ G·C."""

    def __init__(self, model, groups):
        super().__init__(model, ("u",))
        Vs = [np.asarray(V, dtype=np.float64) for V in groups]
        if not Vs or any(V.ndim != 2 or V.shape[1] != self.d or V.shape[0] < 1 for V in Vs):
            raise ValueError(f"CollapsedSecondOrder: groups must be non-empty (r_g, {self.d}) direction "
                             f"matrices, got {[V.shape for V in Vs]}")
        self.groups = Vs
        self.r = max(V.shape[0] for V in Vs)
        self.mode, self.role, self.K = "laplacian", "laplacian", 2
        self.B = self.r + 2
        self.R = 1 + sum(V.shape[0] for V in Vs) + len(Vs)

    def blocks(self, k: int):
        return slice(1, 1 + self.r) if k == 1 else slice(1 + self.r, 2 + self.r)

    def seed(self, X):
        n, G = X.shape[0], len(self.groups)
        self.n, N = n, G * n
        self.N = N                       # the stack's real rows: every group's copy of the points
        self.rows = N + padding_rows(N, self.row_sizes, X.dtype.itemsize)
        S = np.zeros((self.B, self.rows) + X.shape[1:], dtype=X.dtype)
        flat = S.reshape(self.B, self.rows, self.d)
        for g, V in enumerate(self.groups):
            flat[0, g * n:(g + 1) * n] = X.reshape(n, self.d)
            flat[1:1 + V.shape[0], g * n:(g + 1) * n] = V[:, None, :].astype(X.dtype)
        return S

    def _unit_rows(self, dtype):
        """One group: its directions (the same rows for every point); several: None."""
        if len(self.groups) == 1 and self.groups[0].shape[0] == self.r:
            return np.ascontiguousarray(self.groups[0].astype(dtype))
        return None

    def _index(self):
        """(block, group) of every coefficient C[i]."""
        idx = [(0, 0)]
        for g, V in enumerate(self.groups):
            idx += [(1 + j, g) for j in range(V.shape[0])]
        idx += [(1 + self.r, g) for g in range(len(self.groups))]
        return idx

    def _results(self, S):
        S = S.reshape(S.shape[:2] + (-1,))
        n = self.n
        C = np.stack([S[b, g * n:(g + 1) * n] for b, g in self._index()])
        return C[..., 0] if C.shape[2] == 1 else C

    def cotangent_stack(self, cot, N: int, F: int, dtype):
        C = np.asarray(cot, dtype=dtype)
        C = C[..., None] if F == 1 and C.ndim == 2 else C
        n = self.n
        if C.shape != (self.R, n, F):
            raise ValueError(f"CollapsedSecondOrder: cotangents must be shaped like the coefficients "
                             f"{(self.R, n) + ((F,) if F > 1 else ())}, got {np.shape(cot)}")
        G = np.zeros((self.B, self.rows, F), dtype=dtype)
        for i, (b, g) in enumerate(self._index()):
            G[b, g * n:(g + 1) * n] += C[i]
        return G


class CollapsedJets(DirectionalJets):
    """Taylor jets of order K along the rows w_j of ``directions`` with the order-K coefficient
    collapsed: propagated as one block T = Σ_j c_j D^K_{w_j} u (constant ``weights`` c) instead
    of m blocks, through the activations' derived ``collapsed:K`` roles (the Dense layers map
    it like any coefficient). ``forward(X)`` gives C (2 + (K−1)·m, N): C[0] = u,
    C[1 + (k−1)·m + j] = D^k_{w_j} u for k < K, C[−1] = Σ_j c_j D^K_{w_j} u (for the
    biharmonic in 2-D: 14 blocks instead of 17); ``backward(tape, G)`` the parameter gradient
    of Σ G·C."""

    def __init__(self, model, directions, order: int, weights):
        if not 3 <= int(order) <= MAX_ORDER:
            raise ValueError(f"CollapsedJets: order {order} is not supported (3 … {MAX_ORDER}; order 2 is the "
                             f"forward Laplacian, CollapsedSecondOrder)")
        super().__init__(model, directions, order)
        c = np.asarray(weights, dtype=np.float64)
        if c.shape != (self.m,) or not np.all(np.isfinite(c)):
            raise ValueError(f"CollapsedJets: weights must be {self.m} finite numbers, one per direction, "
                             f"got shape {c.shape}")
        self.c = c
        self.mode, self.role = "collapsed", f"collapsed:{self.K}"
        self.B = 2 + (self.K - 1) * self.m

    def blocks(self, k: int):
        if k == self.K:
            return slice(self.B - 1, self.B)
        return super().blocks(k)

    def _direction_blocks(self):
        """A composite layer along direction j: its orders below K as in the plain jets, its
        order-K coefficient with x_K = 0, added with weight c_j to T (T_y = Dy[T] + Σ_j c_j·y_K⁽ʲ⁾
        at x_K⁽ʲ⁾ = 0: y_K is Dy[x_K] plus terms of the lower orders)."""
        T = self.blocks(self.K).start
        dirs = []
        for j in range(self.m):
            lower = tuple(self.blocks(k).start + j for k in range(1, self.K))
            dirs.append((lower + (None,), tuple((b, None) for b in lower) + ((T, float(self.c[j])),)))
        return dirs

    def _linear_blocks(self):
        T = self.blocks(self.K).start
        return [(T, T)]

    def _weights(self, shape, dtype):
        """The weights as a per-direction array (m, N, …): one row per direction, row stride 0."""
        c = self.c.astype(dtype).reshape((self.m,) + (1,) * len(shape))
        row = np.ascontiguousarray(np.broadcast_to(c, (self.m, 1) + tuple(shape[1:])))
        return np.broadcast_to(row, (self.m,) + tuple(shape))

    def _collapse(self, env: dict) -> dict:
        """Jet-mode input names turned into the ``collapsed:K`` role's: the one order-K block
        is the point input T, and the weights c are added."""
        env["T"] = env.pop(f"x{self.K}")[0]
        env["c"] = self._weights(env["x"].shape, env["x"].dtype)
        return env

    def _seed_names(self, value, YE):
        return self._collapse(super()._seed_names(value, YE))

    def _names(self, stack):
        env = super()._names(stack)
        return env if isinstance(stack, SeedStack) else self._collapse(env)

    def _out_names(self, stack):
        env = super()._out_names(stack)
        env["Ty"] = env.pop(f"y{self.K}")[0]
        return env


def directional_derivatives(model, X, directions, order: int) -> np.ndarray:
    """D^k_w u for k = 0 … order along every row w of ``directions`` (see :class:`DirectionalJets`)."""
    C, _ = DirectionalJets(model, directions, order).forward(X)
    return C
