"""Optimizers: per-parameter state plus a call to the generated in-place update kernel."""
from __future__ import annotations

import numpy as np

from .kernels import load

_opt = load("optimizers")


class Optimizer:
    """Base class: ``loss_and_grad`` evaluates what the update needs (``fit`` calls it), ``step``
    updates the parameters in place."""
    needs_hessian = False

    def __init__(self, lr: float):
        if not (isinstance(lr, (int, float)) and lr > 0 and np.isfinite(lr)):
            raise ValueError(f"{type(self).__name__}: lr must be a positive finite number, got {lr!r}")
        self.lr = float(lr)
        self.state = None
        self.t = 0

    def _init_state(self, params):
        raise NotImplementedError

    def loss_and_grad(self, model, X, y):
        """``(loss, grads, tape)`` of ``model`` on a validated batch (plus whatever curvature the
        optimizer uses, kept for the next :meth:`step`)."""
        tape = model.trace(X, y, checked=True)
        return tape.loss, model.backward(tape), tape

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if len(params) != len(grads):
            raise ValueError(f"{type(self).__name__}: {len(params)} parameters but {len(grads)} gradients")
        if self.state is None:
            self.state = self._init_state(params)
        self.t += 1
        for i, (p, g) in enumerate(zip(params, grads)):
            if p.shape != g.shape:
                raise ValueError(f"{type(self).__name__}: gradient {i} has shape {g.shape}, parameter {p.shape}")
            self._update(i, p, g, self.state[i])


class SGD(Optimizer):
    """SGD with heavy-ball momentum and L2 weight decay (as ``torch.optim.SGD``)."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)

    def _init_state(self, params):
        return [np.zeros_like(p) for p in params]

    def _update(self, i, p, g, v):
        _opt.sgd_update(p, g, v, self.lr, self.momentum, self.weight_decay)


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay (as ``torch.optim.Adam``)."""

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        self.b1, self.b2, self.eps, self.weight_decay = float(b1), float(b2), float(eps), float(weight_decay)

    def _init_state(self, params):
        return [(np.zeros_like(p), np.zeros_like(p)) for p in params]

    def _update(self, i, p, g, state):
        m, s = state
        _opt.adam_update(p, g, m, s, self.lr, self.b1, self.b2, self.eps, self.weight_decay,
                         1 - self.b1 ** self.t, 1 - self.b2 ** self.t)


class AdaHessian(Optimizer):
    """AdaHessian (Yao et al., AAAI 2021): Adam with the squared gradient replaced by the square
    of a Hutchinson estimate ``D = v ⊙ Hv`` of the Hessian diagonal (Rademacher ``v``, exact HVPs).

    ``hessian_power`` k: denominator ``(E[D²]/bc2)^(k/2) + eps``; ``average_conv_kernel``: for
    4-D (conv) weights ``|D|`` is averaged over each kernel's spatial positions (the paper's
    spatial averaging); ``update_each``: re-estimate D every so many steps and reuse it in
    between; ``n_samples``: probes per estimate; ``weight_decay`` is decoupled (AdamW style).
    Defaults are the paper's (lr 0.15, eps 1e-4).
    """
    needs_hessian = True

    def __init__(self, lr: float = 0.15, betas=(0.9, 0.999), eps: float = 1e-4, weight_decay: float = 0.0,
                 hessian_power: float = 1.0, update_each: int = 1, n_samples: int = 1,
                 average_conv_kernel: bool = True, seed: int = 0):
        super().__init__(lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"AdaHessian: betas must be in [0, 1), got {betas}")
        if not 0 < hessian_power <= 1:
            raise ValueError(f"AdaHessian: hessian_power must be in (0, 1], got {hessian_power}")
        for nm, v in (("update_each", update_each), ("n_samples", n_samples)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AdaHessian: {nm} must be a positive integer, got {v!r}")
        if not eps > 0 or weight_decay < 0:
            raise ValueError(f"AdaHessian: eps must be > 0 and weight_decay >= 0, got {eps}, {weight_decay}")
        self.b1, self.b2, self.eps, self.weight_decay = float(b1), float(b2), float(eps), float(weight_decay)
        self.k, self.update_each, self.n_samples = float(hessian_power), int(update_each), int(n_samples)
        self.average_conv_kernel = bool(average_conv_kernel)
        self.rng = np.random.default_rng(seed)
        self.hessian_diag = None
        self._calls = 0

    def estimate(self, model, X, y):
        """Loss, gradients and the (spatially averaged) Hutchinson diagonal from one shared
        forward/backward pass and ``n_samples`` R-op passes."""
        from .curvature import hutchinson
        tape = model.trace(X, y, checked=True)
        loss, grads = tape.loss, model.backward(tape, keep_output_grads=True)
        D = hutchinson(model, tape, self.n_samples, self.rng)
        for i, d in enumerate(D):
            if self.average_conv_kernel and d.ndim == 4:
                D[i] = np.ascontiguousarray(np.broadcast_to(np.abs(d).mean(axis=(2, 3), keepdims=True), d.shape))
        return loss, grads, D, tape

    def loss_and_grad(self, model, X, y):
        due = self._calls % self.update_each == 0
        self._calls += 1
        if due or self.hessian_diag is None:
            loss, grads, self.hessian_diag, tape = self.estimate(model, X, y)
            return loss, grads, tape
        tape = model.trace(X, y, checked=True)
        return tape.loss, model.backward(tape), tape

    def step(self, params, grads, hessian_diag=None):
        """Update in place; ``hessian_diag`` defaults to the estimate made by :meth:`loss_and_grad`."""
        D = self.hessian_diag if hessian_diag is None else hessian_diag
        if D is None:
            raise ValueError("AdaHessian: no Hessian diagonal; train with fit(), call loss_and_grad(model, X, y) "
                             "first, or pass step(params, grads, hessian_diag=...)")
        if len(D) != len(params) or any(d.shape != p.shape for d, p in zip(D, params)):
            raise ValueError(f"AdaHessian: Hessian diagonal shapes {[d.shape for d in D]} do not match "
                             f"the parameters {[p.shape for p in params]}")
        self._D = [np.ascontiguousarray(d, dtype=p.dtype) for d, p in zip(D, params)]
        super().step(params, grads)

    def _init_state(self, params):
        return [(np.zeros_like(p), np.zeros_like(p)) for p in params]

    def _update(self, i, p, g, state):
        m, s = state
        args = (p, np.ascontiguousarray(g), self._D[i], m, s, self.lr, self.b1, self.b2, self.eps,
                self.weight_decay, 1 - self.b1 ** self.t, 1 - self.b2 ** self.t)
        if self.k == 1:
            _opt.adahessian_update(*args)
        else:
            _opt.adahessian_update_pow(*args, self.k)


class Newton(Optimizer):
    """Damped Newton for tiny models: ``p ← p − lr·(|H| + λI)⁻¹ g`` with the full Hessian H from
    exact HVPs and ``|H|`` its eigen-decomposition with absolute eigenvalues (saddle-free Newton,
    Dauphin et al. 2014): where H is positive definite this is the damped Newton step, and
    negative-curvature directions are descended instead of climbed. λ = ``damping``.
    Refused above ``max_params`` parameters (default 5000: a P×P matrix and P HVPs per step)."""
    needs_hessian = True

    def __init__(self, lr: float = 1.0, damping: float = 0.1, max_params: int | None = None):
        super().__init__(lr)
        if not damping > 0:
            raise ValueError(f"Newton: damping must be > 0, got {damping}")
        from .curvature import MAX_FULL_HESSIAN_PARAMS
        self.damping = float(damping)
        self.max_params = MAX_FULL_HESSIAN_PARAMS if max_params is None else int(max_params)
        self.H = None

    def loss_and_grad(self, model, X, y):
        from .curvature import full_hessian
        loss, grads, self.H, tape = full_hessian(model, X, y, self.max_params, return_tape=True)
        return loss, grads, tape

    def step(self, params, grads, hessian=None):
        H = self.H if hessian is None else np.asarray(hessian, np.float64)
        P = sum(p.size for p in params)
        if H is None or H.shape != (P, P):
            raise ValueError(f"Newton: needs the {P}x{P} Hessian; train with fit() or call "
                             f"loss_and_grad(model, X, y) first (got {None if H is None else H.shape})")
        if len(params) != len(grads):
            raise ValueError(f"Newton: {len(params)} parameters but {len(grads)} gradients")
        g = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in grads])
        lam, U = np.linalg.eigh((H + H.T) / 2)
        step = U @ ((U.T @ g) / (np.abs(lam) + self.damping))
        self.eigenvalues = lam
        self.t += 1
        i = 0
        for p in params:
            p -= (self.lr * step[i:i + p.size]).reshape(p.shape).astype(p.dtype)
            i += p.size


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adahessian": AdaHessian, "newton": Newton}


def get_optimizer(name: str, **kwargs) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kwargs)
