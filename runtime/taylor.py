"""Derivatives of a model's output with respect to its *input*: Taylor-mode sweeps.

Every array that flows through the network is a *stack* ``(B, N, F)`` of derivative
coefficients of one layer's values along input directions:

- ``laplacian`` mode (u, ∇u, Δu): B = d + 2 blocks — the value, the d first-order
  coefficients J_i = ∂/∂x_i and the summed second-order coefficient L = Σ_i ∂²/∂x_i²;
- ``jet`` mode (pure partials ∂ᵏu/∂x_iᵏ, k ≤ 4): B = 1 + K·m blocks — the value, then for
  each order k = 1 … K the k-th coefficients along each of the m coordinate directions.

A Dense layer maps every block by the same linear map (its ``forward`` role on the value
block, its ``jvp`` role — the linear part, no bias — on the others, one GEMM for all of
them); an activation runs its derived Taylor role (``laplacian`` or ``taylor:K`` of
``generated/taylor``) on the whole stack in one pass. The backward sweep runs the roles'
derived pullbacks (``vjp:laplacian``, ``vjp:taylor:K``) and the Dense pullbacks on the
stacks (``vjp:W`` over every block at once: one GEMM; ``vjp:b`` on the value block only).
Nothing here multiplies derivative factors: the sweeps only slice, stack and call roles.
"""
from __future__ import annotations

import importlib

import numpy as np

from .activation import Activation
from .conv import AvgPool2D, Conv2D, Flatten
from .dense import Dense
from .kernels import manifest

#: layers affine in their input, run by their own roles on the stacks (Dense has a fast path)
AFFINE = (Conv2D, AvgPool2D)

MAX_ORDER = 4
_BASIC = ("u", "grad", "laplacian")


def _module():
    mod = importlib.import_module("symprop.generated.taylor")
    return mod


def _call(role, env: dict):
    """Call a bound kernel of a spec role (``runtime/kernels.Role``) with arrays by name
    (outputs included: preallocated views of the stacks)."""
    args = [env.get(a) for a in role.call]
    role.fn(*args)


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


class InputDerivatives:
    """A derivative query bound to a model: ``forward(X)`` gives ``({query: array}, tape)``,
    ``backward(tape, {query: cotangent})`` the parameter gradient of Σ cotangent·derivative
    (aligned with ``model.parameters()``)."""

    def __init__(self, model, which=()):
        if model.input_shape is None:
            raise ValueError("input_derivatives: the model is not built yet (pass input_shape= or call build())")
        self.model = model
        self.d = int(np.prod(model.input_shape))   # image inputs: one coordinate per pixel and channel
        self.which = tuple(which) or _BASIC
        self.mode, self.coords, self.K = _parse(self.which, self.d)
        self.m = len(self.coords)
        self.B = self.d + 2 if self.mode == "laplacian" else 1 + self.K * self.m
        self.role = "laplacian" if self.mode == "laplacian" else f"taylor:{self.K}"
        module = _module()
        self.table = table = manifest(module)
        self.kernels = module.KERNELS
        for layer in model.layers:
            if isinstance(layer, (Dense, Flatten) + AFFINE):   # evaluation mode: DropConnect is off
                continue
            if isinstance(layer, Activation) and layer.spec is None and layer.kernel_name in table:
                continue
            raise TypeError(f"input_derivatives: {layer.name} has no Taylor-mode sweep; supported are Dense, "
                            f"Conv2D, AvgPool2D, Flatten and the built-in activations {sorted(table)}")

    # ---------------------------------------------------------------- block layout
    def blocks(self, k: int):
        """Slice of the order-k coefficient blocks (all directions) of a stack, k ≥ 1."""
        if self.mode == "laplacian":
            return slice(1, 1 + self.d) if k == 1 else slice(1 + self.d, 2 + self.d)
        return slice(1 + (k - 1) * self.m, 1 + k * self.m)

    def seed(self, X: np.ndarray) -> np.ndarray:
        """The input stack: the value X and the path x(t) = X + t·e_i of every direction
        (first-order coefficient e_i, higher ones 0)."""
        N = X.shape[0]
        S = np.zeros((self.B, N) + X.shape[1:], dtype=X.dtype)
        S[0] = X
        flat = S.reshape(self.B, N, self.d)
        for j, i in enumerate(self.coords):
            flat[self.blocks(1).start + j, :, i] = 1
        return S

    # ---------------------------------------------------------------- sweeps
    def _names(self, stack):
        """The role's input names bound to blocks of a stack (prefixed with ``g``: the names
        of the pullback's outputs)."""
        if self.mode == "laplacian":
            return {"x": stack[0], "J": stack[self.blocks(1)], "L": stack[self.blocks(2)][0]}
        env = {"x": stack[0]}
        for k in range(1, self.K + 1):
            env[f"x{k}"] = stack[self.blocks(k)]
        return env

    def _out_names(self, stack):
        """The role's output names bound to blocks of a stack (prefixed with ``g``: the
        pullback's cotangent inputs)."""
        if self.mode == "laplacian":
            return {"y": stack[0], "Jy": stack[self.blocks(1)], "Ly": stack[self.blocks(2)][0]}
        env = {"y": stack[0]}
        for k in range(1, self.K + 1):
            env[f"y{k}"] = stack[self.blocks(k)]
        return env

    def _kernel(self, layer, role):
        entry = self.table[layer.kernel_name]["roles"][role]
        return self.kernels[entry["kernel"]], entry

    def forward(self, X):
        model = self.model
        X = model._check_X(X)
        stack = self.seed(X)
        tape = []
        for layer in model.layers:
            if isinstance(layer, Dense):
                stack_in = stack
                B, N, _ = stack_in.shape
                out = np.empty((B, N, layer.out_features), dtype=X.dtype)
                R = layer.kernels.roles
                _call(R["forward"], {"x": stack_in[0], "W": layer.W, "b": layer.b, "y": out[0]})
                rest = stack_in[1:].reshape((B - 1) * N, -1)
                _call(R["jvp"], {"x": rest, "W": layer.W, "Rx": rest, "Ry": out[1:].reshape((B - 1) * N, -1)})
                tape.append((layer, stack_in, out))
                stack = out
            elif isinstance(layer, Flatten):
                tape.append((layer, stack, None))
                stack = stack.reshape(stack.shape[:2] + (-1,))
            elif isinstance(layer, AFFINE):
                out = self._affine(layer, stack)
                tape.append((layer, stack, out))
                stack = out
            else:
                kern, entry = self._kernel(layer, self.role)
                out = np.empty_like(stack)
                env = {**self._names(stack), **self._out_names(out), **layer.params}
                kern(*[env[a] for a in entry["call"]])
                tape.append((layer, stack, out))
                stack = out
        return self._results(stack), tape

    @staticmethod
    def _affine(layer, S):
        """An affine layer on a stack: its ``forward`` role on the value block, its ``jvp``
        role (the linear part) on every other block at once."""
        K, B, N = layer.kernels, S.shape[0], S.shape[1]
        arrays, sc = layer.spec_arrays(), layer.scalars()
        out_shape = tuple(layer.output_shape(S.shape[2:]))
        y0 = K.run("forward", {**arrays, "x": S[0]}, S.dtype, sc, {"x": S[0].shape, "y": (N,) + out_shape})
        rest = S[1:].reshape(((B - 1) * N,) + S.shape[2:])
        yr = K.run("jvp", {**arrays, "x": rest, "Rx": rest}, S.dtype, sc,
                   {"x": rest.shape, "y": ((B - 1) * N,) + out_shape})
        return np.concatenate([y0[None], yr.reshape((B - 1, N) + out_shape)])

    @staticmethod
    def _affine_back(layer, S, G, need_input):
        """Pullbacks of :meth:`_affine`: a parameter the ``jvp`` role reads (a weight) over
        every block at once, one it does not (an offset: the bias) over the value block."""
        K, B, N = layer.kernels, S.shape[0], S.shape[1]
        arrays, sc = layer.spec_arrays(), layer.scalars()
        xf = S.reshape((B * N,) + S.shape[2:])
        gf = G.reshape((B * N,) + G.shape[2:])
        linear = set(K.roles["jvp"].arrays)
        grads = []
        for p in layer.trainable():
            if p in linear:
                env, shapes = {**arrays, "x": xf, "g": gf}, {"x": xf.shape, "y": gf.shape}
            else:
                env, shapes = {**arrays, "x": S[0], "g": G[0]}, {"x": S[0].shape, "y": G[0].shape}
            grads.append(K.run(f"vjp:{p}", env, G.dtype, sc, shapes))
        gx = None
        if need_input:
            gx = K.run("vjp:x", {**arrays, "x": xf, "g": gf}, G.dtype, sc,
                       {"x": xf.shape, "y": gf.shape}).reshape(S.shape)
        return grads, gx

    def _results(self, S):
        S = S.reshape(S.shape[:2] + (-1,))
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
        G = np.zeros((self.B, N, F), dtype=dtype)
        ex = (lambda a: np.asarray(a, dtype)[..., None]) if F == 1 else (lambda a: np.asarray(a, dtype))
        for q, g in cot.items():
            if g is None:
                continue
            if q == "u":
                G[0] += ex(g)
            elif q == "grad":
                g = np.moveaxis(ex(g), 1, 0)
                for i in range(self.d):
                    G[self.blocks(1).start + self.coords.index(i)] += g[i]
            elif q == "laplacian":
                G[self.blocks(2)] += ex(g)[None]
            elif q in self.which:
                G[self.blocks(len(q)).start + self.coords.index(q[0])] += ex(g)
            else:
                raise ValueError(f"input_derivatives: cotangent for {q!r}, which was not computed")
        return G

    def backward(self, tape, cot: dict) -> list[np.ndarray]:
        model = self.model
        layer, stack_in, last = tape[-1]
        if last is None:   # a model ending in Flatten
            last = stack_in.reshape(stack_in.shape[:2] + (-1,))
        flat = last.reshape(last.shape[:2] + (-1,))
        G = self.cotangent_stack(cot, flat.shape[1], flat.shape[2], flat.dtype).reshape(last.shape)
        params, slots = model.param_slots()
        grads = [None] * len(params)

        def add(slot, g):
            grads[slot] = g if grads[slot] is None else grads[slot] + g

        for li in range(len(tape) - 1, -1, -1):
            layer, stack_in, out = tape[li]
            if isinstance(layer, Flatten):
                G = G.reshape(stack_in.shape)
            elif isinstance(layer, AFFINE):
                gs, G = self._affine_back(layer, stack_in, G, li > 0)
                for slot, g in zip(slots[li], gs):
                    add(slot, g)
            elif isinstance(layer, Dense):
                B, N, _ = stack_in.shape
                R = layer.kernels.roles
                x2, g2 = stack_in.reshape(B * N, -1), G.reshape(B * N, -1)
                gW = np.empty_like(layer.W)
                _call(R["vjp:W"], {"x": x2, "g": g2, "gW": gW})
                add(slots[li][0], gW)
                if layer.bias:
                    gb = np.empty_like(layer.b)
                    _call(R["vjp:b"], {"g": G[0], "gb": gb})
                    add(slots[li][1], gb)
                if li > 0:
                    gx = np.empty_like(stack_in)
                    _call(R["vjp:x"], {"W": layer.W, "g": g2, "gx": gx.reshape(B * N, -1)})
                    G = gx
            else:
                kern, entry = self._kernel(layer, "vjp:" + self.role)
                gin = np.empty_like(stack_in)
                env = {**self._names(stack_in), **layer.params, "y": out[0]}
                env.update({"g" + k: v for k, v in self._out_names(G).items()})
                env.update({"g" + k: v for k, v in self._names(gin).items()})
                kern(*[env[a] for a in entry["call"]])
                G = gin
        return [np.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


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
        super().__init__(model, ("u",))
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

    def seed(self, X):
        S = np.zeros((self.B, X.shape[0]) + X.shape[1:], dtype=X.dtype)
        S[0] = X
        S[1:1 + self.m].reshape(self.m, X.shape[0], self.d)[:] = self.directions[:, None, :].astype(X.dtype)
        return S

    def _results(self, S):
        S = S.reshape(S.shape[:2] + (-1,))
        return S[..., 0] if S.shape[2] == 1 else S

    def cotangent_stack(self, cot, N: int, F: int, dtype):
        G = np.asarray(cot, dtype=dtype)
        G = G[..., None] if F == 1 and G.ndim == 2 else G
        if G.shape != (self.B, N, F):
            raise ValueError(f"DirectionalJets: cotangents must be shaped like the coefficients "
                             f"{(self.B, N) + ((F,) if F > 1 else ())}, got {np.shape(cot)}")
        return np.ascontiguousarray(G)


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
        N, G = X.shape[0], len(self.groups)
        S = np.zeros((self.B, G * N) + X.shape[1:], dtype=X.dtype)
        flat = S.reshape(self.B, G * N, self.d)
        for g, V in enumerate(self.groups):
            flat[0, g * N:(g + 1) * N] = X.reshape(N, self.d)
            flat[1:1 + V.shape[0], g * N:(g + 1) * N] = V[:, None, :].astype(X.dtype)
        return S

    def _index(self):
        """(block, group) of every coefficient C[i]."""
        idx = [(0, 0)]
        for g, V in enumerate(self.groups):
            idx += [(1 + j, g) for j in range(V.shape[0])]
        idx += [(1 + self.r, g) for g in range(len(self.groups))]
        return idx

    def _results(self, S):
        S = S.reshape(S.shape[:2] + (-1,))
        N = S.shape[1] // len(self.groups)
        C = np.stack([S[b, g * N:(g + 1) * N] for b, g in self._index()])
        return C[..., 0] if C.shape[2] == 1 else C

    def cotangent_stack(self, cot, N: int, F: int, dtype):
        C = np.asarray(cot, dtype=dtype)
        C = C[..., None] if F == 1 and C.ndim == 2 else C
        n = N // len(self.groups)
        if C.shape != (self.R, n, F):
            raise ValueError(f"CollapsedSecondOrder: cotangents must be shaped like the coefficients "
                             f"{(self.R, n) + ((F,) if F > 1 else ())}, got {np.shape(cot)}")
        G = np.zeros((self.B, N, F), dtype=dtype)
        for i, (b, g) in enumerate(self._index()):
            G[b, g * n:(g + 1) * n] += C[i]
        return G


def directional_derivatives(model, X, directions, order: int) -> np.ndarray:
    """D^k_w u for k = 0 … order along every row w of ``directions`` (see :class:`DirectionalJets`)."""
    C, _ = DirectionalJets(model, directions, order).forward(X)
    return C
