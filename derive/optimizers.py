"""Optimizer updates as elementwise update specs (state arrays updated in place)."""
from __future__ import annotations

import sympy as sp

from .elementwise import Kernel

p, g, vel, m1, m2, hd = sp.symbols("p g v m s d")
lr, mu, wd, b1, b2, eps, bc1, bc2, kpow = sp.symbols("lr mu wd beta1 beta2 eps bc1 bc2 k")


def sgd_kernel() -> Kernel:
    """SGD with (heavy-ball) momentum and L2 weight decay, as torch.optim.SGD:
    v ← μ v + (g + wd p);  p ← p − lr v."""
    v_new = mu * vel + g + wd * p
    return Kernel(name="sgd_update", inputs=["p", "g", "v"], scalars=["lr", "mu", "wd"],
                  outputs=[("v", v_new), ("p", p - lr * v_new)], inplace={"v": "v", "p": "p"})


def adam_kernel() -> Kernel:
    """Adam (Kingma & Ba) with bias corrections bc1 = 1 − β1ᵗ, bc2 = 1 − β2ᵗ passed in,
    L2 weight decay folded into the gradient, as torch.optim.Adam."""
    ge = g + wd * p
    m_new = b1 * m1 + (1 - b1) * ge
    s_new = b2 * m2 + (1 - b2) * ge ** 2
    step = lr * (m_new / bc1) / (sp.sqrt(s_new / bc2) + eps)
    return Kernel(name="adam_update", inputs=["p", "g", "m", "s"],
                  scalars=["lr", "beta1", "beta2", "eps", "wd", "bc1", "bc2"],
                  outputs=[("m", m_new), ("s", s_new), ("p", p - step)],
                  inplace={"m": "m", "s": "s", "p": "p"})


def adahessian_kernel(power=None) -> Kernel:
    """AdaHessian (Yao et al. 2021): Adam's second moment replaced by the running mean of the
    squared Hessian-diagonal estimate d (Hutchinson, optionally averaged over conv kernels),
    Hessian power k, bias corrections passed in, weight decay decoupled as in AdamW:
    p ← p(1 − lr·wd) − (lr/bc1)·m / ((s/bc2)^(k/2) + eps).

    ``power=1`` fixes k = 1 (the default; a square root instead of a pow call)."""
    k = kpow if power is None else sp.Integer(power)
    m_new = b1 * m1 + (1 - b1) * g
    s_new = b2 * m2 + (1 - b2) * hd ** 2
    step = lr * (m_new / bc1) / ((s_new / bc2) ** (k / 2) + eps)
    return Kernel(name="adahessian_update" if power == 1 else "adahessian_update_pow",
                  inputs=["p", "g", "d", "m", "s"],
                  scalars=["lr", "beta1", "beta2", "eps", "wd", "bc1", "bc2"] + (["k"] if power is None else []),
                  outputs=[("m", m_new), ("s", s_new), ("p", p * (1 - lr * wd) - step)],
                  inplace={"m": "m", "s": "s", "p": "p"})


OPTIMIZER_KERNELS = [sgd_kernel, adam_kernel, lambda: adahessian_kernel(1), adahessian_kernel]
