"""Optimizers: per-parameter state plus a call to the generated in-place update kernel.

Every first-order rule is an elementwise spec in ``derive/optimizers.py`` with
``torch.optim``'s semantics; this module keeps the state arrays, passes the step-dependent
scalars (bias corrections) and validates hyperparameters and gradients.
"""
from __future__ import annotations

import numbers

import numpy as np

from .kernels import LazyModule, SpecKernels
from .optimizer_defaults import DEFAULTS

_opt = LazyModule("optimizers")   # the compiled update kernels, loaded at first use (tests call them directly)
_rules: dict = {}


def update(rule: str, **arrays_and_scalars) -> None:
    """Run the ``update`` role of the update-rule spec ``rule`` (``generated/optimizers``) as its
    manifest says: arrays and scalars by their names in the spec, passed in the manifest's call
    order; the arrays it marks as written are updated in place (an update role allocates
    nothing, so the kernel is called directly with the bound arguments)."""
    bound = _rules.get(rule)
    if bound is None:
        role = SpecKernels("optimizers", rule, owner=rule).roles["update"]
        bound = _rules[rule] = (role.fn, role.call)
    fn, call = bound
    fn(*[arrays_and_scalars[a] for a in call])


def check_real(owner: str, name: str, v, *, low=None, low_open: bool = False, high=None,
               high_open: bool = True) -> float:
    """``v`` as a float: a real number (Python or NumPy; not a bool), finite, within the bounds
    (``low``/``high`` included unless ``*_open``); otherwise a ValueError naming ``owner.name``."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.integer, np.floating)):
        raise ValueError(f"{owner}: {name} must be a real number, got {v!r}")
    f = float(v)
    if not np.isfinite(f):
        raise ValueError(f"{owner}: {name} must be finite, got {v!r}")
    if low is not None and (f <= low if low_open else f < low):
        raise ValueError(f"{owner}: {name} must be {'>' if low_open else '>='} {low}, got {v!r}")
    if high is not None and (f >= high if high_open else f > high):
        raise ValueError(f"{owner}: {name} must be {'<' if high_open else '<='} {high}, got {v!r}")
    return f


def check_int(owner: str, name: str, v, low: int = 1) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {v!r}")
    return int(v)


def check_betas(owner: str, betas) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    return tuple(check_real(owner, f"beta{i + 1}", b, low=0, high=1) for i, b in enumerate(betas))


def _all_finite(a: np.ndarray) -> bool:
    """No NaN or inf in ``a``: NaN and inf propagate into Σ a² (BLAS's dot: 3x faster than
    NumPy's sum on a 784x256 float32 gradient, which this check runs on every step), so a
    finite result settles it; an overflowing one is checked element by element."""
    s = np.vdot(a, a) if a.dtype.kind == "f" else np.add.reduce(a, axis=None)
    return bool(np.isfinite(s)) or bool(np.isfinite(a).all())


class Optimizer:
    """Base class: ``loss_and_grad`` evaluates what the update needs (``fit`` calls it), ``step``
    updates the parameters in place. ``lr`` may be changed between steps (schedules do)."""
    needs_hessian = False

    def __init__(self, lr: float):
        self.lr = check_real(type(self).__name__, "lr", lr, low=0)
        self.state = None
        self.t = 0

    def __repr__(self):
        keys = [k for k in self.__init__.__code__.co_varnames[1:self.__init__.__code__.co_argcount]
                if hasattr(self, k)]
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"

    def _init_state(self, params):
        raise NotImplementedError

    #: hyperparameters the update kernels read, each with whether it must stay below 1 there
    #: (Newton's damping is not among them: its eigensolve runs in float64)
    _KERNEL_SCALARS = (("lr", False), ("eps", False), ("weight_decay", False), ("lr_decay", False),
                       ("momentum", True), ("alpha", True), ("b1", True), ("b2", True))
    _checked = None

    def check_dtype(self, dtype) -> None:
        """Refuse a hyperparameter that the kernels, which compute in the parameters' ``dtype``,
        would see as 0 (eps 1e-50 in float32: 0/0 = NaN where a gradient entry is 0), as 1 (β₂
        0.99999999: no second-moment average) or as inf (lr 1e39)."""
        dt = np.dtype(dtype)
        if self._checked == (dt, self.lr):
            return
        name = type(self).__name__
        for attr, below_one in self._KERNEL_SCALARS:
            v = getattr(self, attr, None)
            if v is None or not isinstance(v, float):
                continue
            with np.errstate(over="ignore", under="ignore"):
                c = dt.type(v)
            label = {"b1": "betas[0]", "b2": "betas[1]"}.get(attr, attr)
            if not np.isfinite(c):
                raise ValueError(f"{name}: {label}={v!r} overflows {dt} (the update kernels compute in the "
                                 f"parameters' dtype; use dtype='float64' or a smaller value)")
            if v != 0 and abs(c) < np.finfo(dt).tiny:   # 0, or subnormal: eps 1e-45 divided to inf
                raise ValueError(f"{name}: {label}={v!r} {'rounds to 0' if c == 0 else 'is subnormal'} in {dt} (the "
                                 f"update kernels compute in the parameters' dtype); use at least "
                                 f"{np.finfo(dt).tiny:.3g}")
            if below_one and c == 1 and v < 1:
                raise ValueError(f"{name}: {label}={v!r} rounds to 1 in {dt} (the update kernels compute in the "
                                 f"parameters' dtype); use at most {1 - np.finfo(dt).epsneg:.9g}")
        self._checked = (dt, self.lr)

    #: set by ``fit(distributed=True)`` for each batch: averages ``(loss, arrays)`` over the
    #: ranks, weighted by shard size (see :mod:`symprop.runtime.distributed`)
    _reduce = None

    def loss_and_grad(self, model, X, y):
        """``(loss, grads, tape)`` of ``model`` on a validated batch (plus whatever curvature the
        optimizer uses, kept for the next :meth:`step`)."""
        tape = model.trace(X, y, checked=True)
        loss, grads = tape.loss, model.backward(tape)
        if self._reduce is not None:
            loss, grads = self._reduce(loss, grads)
        return loss, grads, tape

    def _check(self, params, grads):
        name = type(self).__name__
        if len(params) != len(grads):
            raise ValueError(f"{name}: {len(params)} parameters but {len(grads)} gradients")
        for i, (p, g) in enumerate(zip(params, grads)):
            if not isinstance(g, np.ndarray):
                raise TypeError(f"{name}: gradient {i} is a {type(g).__name__}, not a numpy array (parameter "
                                f"{p.shape})")
            if p.shape != g.shape:
                raise ValueError(f"{name}: gradient {i} has shape {np.shape(g)}, parameter {p.shape}")
            if np.iscomplexobj(g) or not (np.issubdtype(g.dtype, np.number) or g.dtype == object):
                raise TypeError(f"{name}: gradient {i} has dtype {g.dtype}; gradients must be real numbers "
                                f"(complex ones are not cast silently)")
            if not _all_finite(g):
                raise ValueError(f"{name}: gradient {i} (shape {g.shape}) contains NaN or inf; "
                                 f"no parameter was updated")
            if g.dtype != p.dtype and g.size and \
                    float(np.max(np.abs(g))) > float(np.finfo(p.dtype).max):   # finite here, inf once cast
                raise ValueError(f"{name}: gradient {i} holds values up to {float(np.max(np.abs(g))):.3g}, beyond "
                                 f"the parameters' {p.dtype}; no parameter was updated")

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        """Update ``params`` in place. Every gradient is checked first (shapes, NaN/inf): a bad
        one raises ValueError with no parameter or state touched."""
        self._check(params, grads)
        if params:
            self.check_dtype(params[0].dtype)
        if self.state is None:
            self.state = self._init_state(params)
        self.t += 1
        for i, (p, g) in enumerate(zip(params, grads)):
            self._update(i, p, np.ascontiguousarray(g, dtype=p.dtype), self.state[i])


class SGD(Optimizer):
    """SGD with heavy-ball or Nesterov momentum and L2 weight decay (as ``torch.optim.SGD``,
    dampening 0; default momentum 0.9, see :data:`DEFAULTS`)."""

    def __init__(self, lr: float = DEFAULTS["sgd"]["lr"], momentum: float = DEFAULTS["sgd"]["momentum"],
                 nesterov: bool = False, weight_decay: float = DEFAULTS["sgd"]["weight_decay"]):
        super().__init__(lr)
        self.momentum = check_real("SGD", "momentum", momentum, low=0, high=1)
        self.weight_decay = check_real("SGD", "weight_decay", weight_decay, low=0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ValueError(f"SGD: nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov momentum needs momentum > 0")
        self.nesterov = bool(nesterov)

    def _init_state(self, params):
        return [np.zeros_like(p) for p in params]

    def _update(self, i, p, g, v):
        update("nesterov_update" if self.nesterov else "sgd_update", p=p, g=g, v=v, lr=self.lr, mu=self.momentum,
               wd=self.weight_decay)


class AdaGrad(Optimizer):
    """AdaGrad (as ``torch.optim.Adagrad``, initial accumulator 0): ``s += g²``,
    ``p -= lr_t·g/(√s + eps)`` with ``lr_t = lr/(1 + (t−1)·lr_decay)``."""

    def __init__(self, lr: float = DEFAULTS["adagrad"]["lr"], eps: float = DEFAULTS["adagrad"]["eps"],
                 weight_decay: float = DEFAULTS["adagrad"]["weight_decay"], lr_decay: float = DEFAULTS["adagrad"]["lr_decay"]):
        super().__init__(lr)
        self.eps = check_real("AdaGrad", "eps", eps, low=0, low_open=True)
        self.weight_decay = check_real("AdaGrad", "weight_decay", weight_decay, low=0)
        self.lr_decay = check_real("AdaGrad", "lr_decay", lr_decay, low=0)

    def _init_state(self, params):
        return [np.zeros_like(p) for p in params]

    def _update(self, i, p, g, s):
        update("adagrad_update", p=p, g=g, s=s, lr=self.lr / (1 + (self.t - 1) * self.lr_decay), eps=self.eps,
               wd=self.weight_decay)


class RMSProp(Optimizer):
    """RMSProp (as ``torch.optim.RMSprop``, not centered): ``s = α s + (1−α) g²``,
    ``v = μ v + g/(√s + eps)``, ``p -= lr·v``."""

    def __init__(self, lr: float = DEFAULTS["rmsprop"]["lr"], alpha: float = DEFAULTS["rmsprop"]["alpha"],
                 eps: float = DEFAULTS["rmsprop"]["eps"], momentum: float = DEFAULTS["rmsprop"]["momentum"],
                 weight_decay: float = DEFAULTS["rmsprop"]["weight_decay"]):
        super().__init__(lr)
        self.alpha = check_real("RMSProp", "alpha", alpha, low=0, high=1)
        self.eps = check_real("RMSProp", "eps", eps, low=0, low_open=True)
        self.momentum = check_real("RMSProp", "momentum", momentum, low=0, high=1)
        self.weight_decay = check_real("RMSProp", "weight_decay", weight_decay, low=0)

    def _init_state(self, params):
        return [(np.zeros_like(p), np.zeros_like(p)) for p in params]

    def _update(self, i, p, g, state):
        s, v = state
        update("rmsprop_update", p=p, g=g, s=s, v=v, lr=self.lr, alpha=self.alpha, eps=self.eps, mu=self.momentum,
               wd=self.weight_decay)


RMSprop = RMSProp


class Adam(Optimizer):
    """Adam with bias correction and L2 weight decay (as ``torch.optim.Adam``)."""
    _kernel = "adam_update"

    def __init__(self, lr: float = DEFAULTS["adam"]["lr"], betas=DEFAULTS["adam"]["betas"], eps: float = DEFAULTS["adam"]["eps"],
                 weight_decay: float = DEFAULTS["adam"]["weight_decay"]):
        super().__init__(lr)
        name = type(self).__name__
        self.betas = check_betas(name, betas)
        self.b1, self.b2 = self.betas
        self.eps = check_real(name, "eps", eps, low=0, low_open=True)
        self.weight_decay = check_real(name, "weight_decay", weight_decay, low=0)

    def _init_state(self, params):
        return [(np.zeros_like(p), np.zeros_like(p)) for p in params]

    def _update(self, i, p, g, state):
        m, s = state
        update(self._kernel, p=p, g=g, m=m, s=s, lr=self.lr, beta1=self.b1, beta2=self.b2, eps=self.eps,
               wd=self.weight_decay, bc1=1 - self.b1 ** self.t, bc2=1 - self.b2 ** self.t)


class AdamW(Adam):
    """Adam with decoupled weight decay (as ``torch.optim.AdamW``):
    ``p ← p(1 − lr·wd)`` before the Adam step on the raw gradient."""
    _kernel = "adamw_update"

    def __init__(self, lr: float = DEFAULTS["adamw"]["lr"], betas=DEFAULTS["adamw"]["betas"], eps: float = DEFAULTS["adamw"]["eps"],
                 weight_decay: float = DEFAULTS["adamw"]["weight_decay"]):
        super().__init__(lr, betas, eps, weight_decay)


class AdaHessian(Optimizer):
    """AdaHessian (Yao et al., AAAI 2021): Adam with the squared gradient replaced by the square
    of a Hutchinson estimate ``D = v ⊙ Hv`` of the Hessian diagonal (Rademacher ``v``, exact HVPs).

    ``hessian_power`` k: denominator ``(E[D²]/bc2)^(k/2) + eps``; ``average_conv_kernel``: for
    4-D (conv) weights ``|D|`` is averaged over each kernel's spatial positions (the paper's
    spatial averaging); ``update_each``: re-estimate D every so many steps and reuse it in
    between; ``n_samples``: probes per estimate; ``weight_decay`` is decoupled (AdamW style).
    Defaults are the paper's (lr 0.15, eps 1e-4).

    Reusing a diagonal between estimates is made safe by two rules (the reference
    implementation has neither, and with ``update_each`` 2 or 5 it wrecks the digits CNN):
    the first ``estimate_warmup`` steps re-estimate every step, so the bias-corrected second
    moment averages several batches before any estimate is reused; and an entry whose second
    moment is still exactly 0 (no estimate has seen the parameter active) is not moved
    (see ``derive/optimizers.py``).

    A third rule, ``reuse_trust`` ρ (default 2), is a documented deviation from the reference
    (docs/adahessian-reuse.md): a step that would reuse a stale diagonal first computes the
    largest per-entry step it would take, in units of lr (``|m̂|/(ŝ^(k/2) + eps)``, the generated
    ``adahessian_ratio`` kernel); when that exceeds ρ times the same maximum on the last step
    with a fresh estimate, the diagonal is re-estimated on the current batch instead (counted in
    ``reestimates``) and the next scheduled estimate moves ``update_each`` steps on. A reused
    estimate knows nothing of the batch it is applied to: after a loss spike a parameter whose
    estimates were all ~0 (a unit inactive on every estimation batch) gets gradients of order 1
    divided by ~eps, a step of ~lr·m/eps, which a fresh estimate — as ``update_each=1`` makes —
    would have damped. ``estimate_warmup=0, reuse_trust=None`` give the reference schedule.
    """
    needs_hessian = True

    def __init__(self, lr: float = DEFAULTS["adahessian"]["lr"], betas=DEFAULTS["adahessian"]["betas"],
                 eps: float = DEFAULTS["adahessian"]["eps"], weight_decay: float = DEFAULTS["adahessian"]["weight_decay"],
                 hessian_power: float = 1.0, update_each: int = DEFAULTS["adahessian"]["update_each"], n_samples: int = 1,
                 average_conv_kernel: bool = True, seed: int = 0, estimate_warmup: int = 10,
                 reuse_trust: float | None = 2.0):
        super().__init__(lr)
        self.betas = check_betas("AdaHessian", betas)
        self.b1, self.b2 = self.betas
        self.hessian_power = self.k = check_real("AdaHessian", "hessian_power", hessian_power, low=0,
                                                 low_open=True, high=1, high_open=False)
        self.update_each = check_int("AdaHessian", "update_each", update_each)
        self.n_samples = check_int("AdaHessian", "n_samples", n_samples)
        self.estimate_warmup = check_int("AdaHessian", "estimate_warmup", estimate_warmup, low=0)
        self.reuse_trust = None if reuse_trust is None else check_real("AdaHessian", "reuse_trust", reuse_trust,
                                                                      low=1)
        self.eps = check_real("AdaHessian", "eps", eps, low=0, low_open=True)
        self.weight_decay = check_real("AdaHessian", "weight_decay", weight_decay, low=0)
        if not isinstance(average_conv_kernel, (bool, np.bool_)):
            raise ValueError(f"AdaHessian: average_conv_kernel must be True or False, got {average_conv_kernel!r}")
        self.average_conv_kernel = bool(average_conv_kernel)
        from .model import check_seed
        self.seed = check_seed("AdaHessian", seed)
        self.rng = np.random.default_rng(self.seed)
        self.hessian_diag = None
        self._calls = 0
        self._next_due = self.estimate_warmup   # first scheduled estimate after the warm-up
        self._fresh = False                     # whether the diagonal for the next step is fresh
        self._fresh_ratio = None                # per array: the largest step/lr at the last fresh step
        self.reestimates = 0                    # estimates made because a reuse failed the trust test

    def estimate(self, model, X, y, update_buffers: bool = True):
        """Loss, gradients and the (spatially averaged) Hutchinson diagonal. The first probe is
        drawn before the forward pass, so gradient and first Hessian-vector product come from
        one forward-over-reverse sweep (:meth:`Sequential.forward_over_reverse`: forward+JVP,
        then backward+R-op backward); further probes are R-op passes on the same tape."""
        from .curvature import hutchinson_from, rademacher
        v = rademacher(model.parameters(), self.rng)
        tape, grads, hv = model.forward_over_reverse(X, y, v, update_buffers=update_buffers)
        loss = tape.loss
        D = hutchinson_from(model, tape, v, hv, self.n_samples, self.rng)
        if self._reduce is not None:   # v ⊙ Hv is linear in H: averaged like the gradients
            loss, both = self._reduce(loss, grads + D)
            grads, D = both[:len(grads)], both[len(grads):]
        for i, d in enumerate(D):
            if self.average_conv_kernel and d.ndim == 4:
                D[i] = np.ascontiguousarray(np.broadcast_to(np.abs(d).mean(axis=(2, 3), keepdims=True), d.shape))
        return loss, grads, D, tape

    def estimate_due(self) -> bool:
        """Whether the next :meth:`loss_and_grad` re-estimates the diagonal on schedule (the
        warm-up, then every ``update_each`` calls after the last estimate)."""
        return self.hessian_diag is None or self._calls < self.estimate_warmup or self._calls >= self._next_due

    def _estimated(self) -> None:
        self._fresh = True
        if self._calls > self.estimate_warmup:
            self._next_due = self._calls - 1 + self.update_each

    def loss_and_grad(self, model, X, y):
        due = self.estimate_due()
        self._calls += 1
        if due:
            loss, grads, self.hessian_diag, tape = self.estimate(model, X, y)
            self._estimated()
            return loss, grads, tape
        loss, grads, tape = super().loss_and_grad(model, X, y)
        self._fresh = False
        if self.reuse_trust is not None and self._fresh_ratio is not None and self.state is not None:
            ratio = self._step_ratios(grads, self.hessian_diag)
            if any(r > self.reuse_trust * f for r, f in zip(ratio, self._fresh_ratio)):
                # the stale diagonal would step further than any entry did on fresh curvature: estimate
                # on this batch (its forward already updated the running statistics)
                loss, grads, self.hessian_diag, tape = self.estimate(model, X, y, update_buffers=False)
                self.reestimates += 1
                self._estimated()
        return loss, grads, tape

    def _step_ratios(self, grads, D) -> list[float]:
        """Per parameter array, the largest |step|/lr the next update would take with gradients
        ``grads`` and diagonal ``D`` (the generated ``adahessian_ratio`` kernel, before any update)."""
        t = self.t + 1
        bc1, bc2 = 1 - self.b1 ** t, 1 - self.b2 ** t
        out = []
        for (m, s), g, d in zip(self.state, grads, D):
            r = np.empty_like(m)
            update("adahessian_ratio", g=np.ascontiguousarray(g, dtype=m.dtype), d=np.ascontiguousarray(d, dtype=m.dtype),
                   m=m, s=s, r=r, beta1=self.b1, beta2=self.b2, eps=self.eps, bc1=bc1, bc2=bc2, k=self.k)
            out.append(float(r.max()) if r.size else 0.0)
        return out

    def step(self, params, grads, hessian_diag=None):
        """Update in place; ``hessian_diag`` defaults to the estimate made by :meth:`loss_and_grad`."""
        D = self.hessian_diag if hessian_diag is None else hessian_diag
        if D is None:
            raise ValueError("AdaHessian: no Hessian diagonal; train with fit(), call loss_and_grad(model, X, y) "
                             "first, or pass step(params, grads, hessian_diag=...)")
        if len(D) != len(params) or any(np.shape(d) != p.shape for d, p in zip(D, params)):
            raise ValueError(f"AdaHessian: Hessian diagonal shapes {[np.shape(d) for d in D]} do not match "
                             f"the parameters {[p.shape for p in params]}")
        D = [np.ascontiguousarray(d, dtype=p.dtype) for d, p in zip(D, params)]
        for i, d in enumerate(D):
            if not _all_finite(d):
                raise ValueError(f"AdaHessian: Hessian diagonal {i} (shape {d.shape}) contains NaN or inf; "
                                 f"no parameter was updated")
        self._D = D
        if self.reuse_trust is not None and self.update_each > 1 and (self._fresh or hessian_diag is not None):
            self._check(params, grads)
            if self.state is None:
                self.state = self._init_state(params)
            self._fresh_ratio = self._step_ratios(grads, D)
        super().step(params, grads)   # checks the gradients before updating anything

    def _init_state(self, params):
        return [(np.zeros_like(p), np.zeros_like(p)) for p in params]

    def _update(self, i, p, g, state):
        m, s = state
        args = dict(p=p, g=g, d=self._D[i], m=m, s=s, lr=self.lr, beta1=self.b1, beta2=self.b2, eps=self.eps,
                    wd=self.weight_decay, bc1=1 - self.b1 ** self.t, bc2=1 - self.b2 ** self.t)
        if self.k == 1:
            update("adahessian_update", **args)
        else:
            update("adahessian_update_pow", k=self.k, **args)


class Newton(Optimizer):
    """Damped Newton for tiny models: ``p ← p − lr·(|H| + λI)⁻¹ g`` with the full Hessian H from
    exact HVPs and ``|H|`` its eigen-decomposition with absolute eigenvalues (saddle-free Newton,
    Dauphin et al. 2014): where H is positive definite this is the damped Newton step, and
    negative-curvature directions are descended instead of climbed. λ = ``damping``.
    Refused above ``max_params`` parameters (default 5000: a P×P matrix and P HVPs per step)."""
    needs_hessian = True

    def __init__(self, lr: float = DEFAULTS["newton"]["lr"], damping: float = DEFAULTS["newton"]["damping"],
                 max_params: int | None = None):
        super().__init__(lr)
        from .curvature import MAX_FULL_HESSIAN_PARAMS
        self.damping = check_real("Newton", "damping", damping, low=0, low_open=True)
        self.max_params = MAX_FULL_HESSIAN_PARAMS if max_params is None else check_int("Newton", "max_params",
                                                                                      max_params)
        self.H = None

    def loss_and_grad(self, model, X, y):
        from .curvature import full_hessian
        if self._reduce is not None:
            raise ValueError("Newton: distributed training is not supported (the full Hessian would be "
                             "reduced across ranks); use a first-order optimizer or AdaHessian")
        loss, grads, self.H, tape = full_hessian(model, X, y, self.max_params, return_tape=True)
        return loss, grads, tape

    def step(self, params, grads, hessian=None):
        H = self.H if hessian is None else np.asarray(hessian, np.float64)
        P = sum(p.size for p in params)
        if H is None or H.shape != (P, P):
            raise ValueError(f"Newton: needs the {P}x{P} Hessian; train with fit() or call "
                             f"loss_and_grad(model, X, y) first (got {None if H is None else H.shape})")
        self._check(params, grads)
        if not np.isfinite(H).all():
            raise ValueError("Newton: the Hessian contains NaN or inf; no parameter was updated")
        g = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in grads])
        from ..blas_threads import one_thread
        # BLAS held at one thread, as the kernels hold it: a threaded eigh gave different bits on
        # 1 and 2 threads (and was 4x slower on 2 threads for P = 1210 beside other jobs)
        with one_thread():
            lam, U = np.linalg.eigh((H + H.T) / 2)
            step = U @ ((U.T @ g) / (np.abs(lam) + self.damping))
        self.eigenvalues = lam
        self.t += 1
        i = 0
        for p in params:
            p -= (self.lr * step[i:i + p.size]).reshape(p.shape).astype(p.dtype)
            i += p.size


def _nesterov(lr: float = DEFAULTS["nesterov"]["lr"], momentum: float = DEFAULTS["nesterov"]["momentum"],
              weight_decay: float = DEFAULTS["nesterov"]["weight_decay"]) -> SGD:
    return SGD(lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": SGD, "nesterov": _nesterov, "adagrad": AdaGrad, "rmsprop": RMSProp, "adam": Adam,
              "adamw": AdamW, "adahessian": AdaHessian, "newton": Newton}


def get_optimizer(name, **kwargs) -> Optimizer:
    """An optimizer by name (``OPTIMIZERS``; "nesterov" is SGD with Nesterov momentum 0.9), with
    its default hyperparameters unless given; an :class:`Optimizer` is returned as is."""
    if isinstance(name, type) and issubclass(name, Optimizer):
        raise TypeError(f"got the optimizer class {name.__name__}, not an optimizer: pass an instance such as "
                        f"O.{name.__name__}() (its defaults) or O.{name.__name__}(lr=...), or the name "
                        f"{name.__name__.lower()!r}")
    if isinstance(name, Optimizer):
        if kwargs:
            raise ValueError("get_optimizer: hyperparameters given with an optimizer instance")
        return name
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name.lower()](**kwargs)
