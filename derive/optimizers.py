"""Optimizer updates as elementwise update specs (state arrays updated in place).

Every rule follows ``torch.optim``'s update exactly (same order of operations up to rounding);
step-dependent scalars (bias corrections, decayed learning rates) are passed in by the runtime.
"""
from __future__ import annotations

import sympy as sp

from .elementwise import Kernel

p, g, vel, m1, m2, hd = sp.symbols("p g v m s d")
lr, mu, wd, b1, b2, eps, bc1, bc2, kpow = sp.symbols("lr mu wd beta1 beta2 eps bc1 bc2 k")
alpha = sp.Symbol("alpha")


def sgd_kernel() -> Kernel:
    """SGD with (heavy-ball) momentum and L2 weight decay, as torch.optim.SGD (dampening 0):
    v ← μ v + (g + wd p);  p ← p − lr v."""
    v_new = mu * vel + g + wd * p
    return Kernel(name="sgd_update", inputs=["p", "g", "v"], scalars=["lr", "mu", "wd"],
                  outputs=[("v", v_new), ("p", p - lr * v_new)], inplace={"v": "v", "p": "p"})


def nesterov_kernel() -> Kernel:
    """SGD with Nesterov momentum, as torch.optim.SGD(nesterov=True):
    v ← μ v + (g + wd p);  p ← p − lr (g + wd p + μ v)."""
    ge = g + wd * p
    v_new = mu * vel + ge
    return Kernel(name="nesterov_update", inputs=["p", "g", "v"], scalars=["lr", "mu", "wd"],
                  outputs=[("v", v_new), ("p", p - lr * (ge + mu * v_new))], inplace={"v": "v", "p": "p"})


def adagrad_kernel() -> Kernel:
    """AdaGrad (Duchi et al. 2011), as torch.optim.Adagrad: s ← s + (g + wd p)²;
    p ← p − lr·(g + wd p)/(√s + eps) (``lr`` already divided by 1 + (t−1)·lr_decay)."""
    ge = g + wd * p
    s_new = m2 + ge ** 2
    return Kernel(name="adagrad_update", inputs=["p", "g", "s"], scalars=["lr", "eps", "wd"],
                  outputs=[("s", s_new), ("p", p - lr * ge / (sp.sqrt(s_new) + eps))],
                  inplace={"s": "s", "p": "p"})


def rmsprop_kernel() -> Kernel:
    """RMSProp (Tieleman & Hinton), as torch.optim.RMSprop (not centered):
    s ← α s + (1 − α)(g + wd p)²;  v ← μ v + (g + wd p)/(√s + eps);  p ← p − lr v
    (with μ = 0 this is torch's momentum-free update p ← p − lr (g + wd p)/(√s + eps))."""
    ge = g + wd * p
    s_new = alpha * m2 + (1 - alpha) * ge ** 2
    v_new = mu * vel + ge / (sp.sqrt(s_new) + eps)
    return Kernel(name="rmsprop_update", inputs=["p", "g", "s", "v"], scalars=["lr", "alpha", "eps", "mu", "wd"],
                  outputs=[("s", s_new), ("v", v_new), ("p", p - lr * v_new)],
                  inplace={"s": "s", "v": "v", "p": "p"})


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


def adamw_kernel() -> Kernel:
    """AdamW (Loshchilov & Hutter): Adam on the raw gradient, weight decay decoupled,
    as torch.optim.AdamW: p ← p(1 − lr·wd) − lr·(m/bc1)/(√(s/bc2) + eps)."""
    m_new = b1 * m1 + (1 - b1) * g
    s_new = b2 * m2 + (1 - b2) * g ** 2
    step = lr * (m_new / bc1) / (sp.sqrt(s_new / bc2) + eps)
    return Kernel(name="adamw_update", inputs=["p", "g", "m", "s"],
                  scalars=["lr", "beta1", "beta2", "eps", "wd", "bc1", "bc2"],
                  outputs=[("m", m_new), ("s", s_new), ("p", p * (1 - lr * wd) - step)],
                  inplace={"m": "m", "s": "s", "p": "p"})


def adahessian_kernel(power=None) -> Kernel:
    """AdaHessian (Yao et al. 2021): Adam's second moment replaced by the running mean of the
    squared Hessian-diagonal estimate d (Hutchinson, optionally averaged over conv kernels),
    Hessian power k, bias corrections passed in, weight decay decoupled as in AdamW:
    p ← p(1 − lr·wd) − [s > 0]·(lr/bc1)·m / ((s/bc2)^(k/2) + eps).

    The factor [s > 0] leaves an entry alone until some estimate has seen curvature there
    (s = 0 means every estimate so far was exactly 0: the parameter was inactive — a dead
    ReLU, a position max pooling never selected, an input pixel that was 0 — on every batch
    the diagonal was estimated on). When the diagonal is re-estimated every step this never
    fires (an inactive parameter's gradient is 0 on the same batch); with a diagonal reused
    between estimates it prevents steps of lr·g/eps on parameters active on the current batch.

    ``power=1`` fixes k = 1 (the default; a square root instead of a pow call)."""
    k = kpow if power is None else sp.Integer(power)
    m_new = b1 * m1 + (1 - b1) * g
    s_new = b2 * m2 + (1 - b2) * hd ** 2
    step = lr * (m_new / bc1) / ((s_new / bc2) ** (k / 2) + eps)
    seen = sp.Piecewise((1, s_new > 0), (0, True))
    return Kernel(name="adahessian_update" if power == 1 else "adahessian_update_pow",
                  inputs=["p", "g", "d", "m", "s"],
                  scalars=["lr", "beta1", "beta2", "eps", "wd", "bc1", "bc2"] + (["k"] if power is None else []),
                  outputs=[("m", m_new), ("s", s_new), ("p", p * (1 - lr * wd) - seen * step)],
                  inplace={"m": "m", "s": "s", "p": "p"})


def adahessian_ratio_kernel() -> Kernel:
    """The per-entry step of :func:`adahessian_kernel` in units of lr, written into ``r`` and
    nothing else updated: r = [s′ > 0]·|m′/bc1| / ((s′/bc2)^(k/2) + eps), with m′, s′ the moments
    the update would form from (g, d, m, s). The runtime compares its maximum on a step that
    would reuse a stale diagonal with its maximum on the last step with a fresh one (the
    reuse trust test; ``runtime/optimizers.py``). The same expressions as the update, so the
    ratio is the step the update would take."""
    m_new = b1 * m1 + (1 - b1) * g
    s_new = b2 * m2 + (1 - b2) * hd ** 2
    seen = sp.Piecewise((1, s_new > 0), (0, True))
    ratio = seen * sp.Abs(m_new / bc1) / ((s_new / bc2) ** (kpow / 2) + eps)
    return Kernel(name="adahessian_ratio", inputs=["g", "d", "m", "s", "r"],
                  scalars=["beta1", "beta2", "eps", "bc1", "bc2", "k"],
                  outputs=[("r", ratio)], inplace={"r": "r"})


OPTIMIZER_KERNELS = [sgd_kernel, nesterov_kernel, adagrad_kernel, rmsprop_kernel, adam_kernel, adamw_kernel,
                     lambda: adahessian_kernel(1), adahessian_kernel, adahessian_ratio_kernel]
