"""Optimizers: per-parameter state plus a call to the generated in-place update kernel."""
from __future__ import annotations

import numpy as np

from ..generated import optimizers as _opt


class Optimizer:
    needs_hessian = False

    def __init__(self, lr: float):
        if not (isinstance(lr, (int, float)) and lr > 0 and np.isfinite(lr)):
            raise ValueError(f"{type(self).__name__}: lr must be a positive finite number, got {lr!r}")
        self.lr = float(lr)
        self.state = None
        self.t = 0

    def _init_state(self, params):
        raise NotImplementedError

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if len(params) != len(grads):
            raise ValueError(f"{type(self).__name__}: {len(params)} parameters but {len(grads)} gradients")
        if self.state is None:
            self.state = self._init_state(params)
        self.t += 1
        for i, (p, g) in enumerate(zip(params, grads)):
            if p.shape != g.shape:
                raise ValueError(f"{type(self).__name__}: gradient {i} has shape {g.shape}, parameter {p.shape}")
            self._update(p, g, self.state[i])


class SGD(Optimizer):
    """SGD with heavy-ball momentum and L2 weight decay (as ``torch.optim.SGD``)."""

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)

    def _init_state(self, params):
        return [np.zeros_like(p) for p in params]

    def _update(self, p, g, v):
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

    def _update(self, p, g, state):
        m, s = state
        _opt.adam_update(p, g, m, s, self.lr, self.b1, self.b2, self.eps, self.weight_decay,
                         1 - self.b1 ** self.t, 1 - self.b2 ** self.t)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get_optimizer(name: str, **kwargs) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kwargs)
