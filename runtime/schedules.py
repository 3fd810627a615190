"""Learning-rate schedules, applied per epoch, with ``torch.optim.lr_scheduler``'s values.

A schedule maps the number of completed epochs ``e`` (0 during the first epoch) and the
optimizer's initial learning rate η₀ to the learning rate of epoch ``e``; ``fit`` sets
``optimizer.lr`` from it before every epoch. Like a torch scheduler a schedule object counts
the epochs it has scheduled, so successive ``fit`` calls with the same object continue it.
Closed forms are used (torch's chainable updates agree to rounding).
"""
from __future__ import annotations

import math

from .optimizers import check_int, check_real


class Schedule:
    """Base class: :meth:`lr_at` gives the rate of epoch ``e`` for an initial rate ``base``."""

    def __init__(self):
        self.epoch = 0          # epochs scheduled so far (torch's last_epoch)

    def lr_at(self, epoch: int, base: float) -> float:
        raise NotImplementedError

    def lrs(self, base: float, epochs: int) -> list[float]:
        """The rates of epochs 0 .. epochs−1 (does not advance the schedule)."""
        return [self.lr_at(e, base) for e in range(epochs)]

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "epoch")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    def lr_at(self, epoch, base):
        return base


class StepLR(Schedule):
    """η₀·γ^⌊e / step_size⌋ (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, step_size: int, gamma: float = 0.1):
        super().__init__()
        self.step_size = check_int("StepLR", "step_size", step_size)
        self.gamma = check_real("StepLR", "gamma", gamma, low=0, low_open=True)

    def lr_at(self, epoch, base):
        return base * self.gamma ** (epoch // self.step_size)


class ExponentialLR(Schedule):
    """η₀·γᵉ (``ExponentialLR``)."""

    def __init__(self, gamma: float):
        super().__init__()
        self.gamma = check_real("ExponentialLR", "gamma", gamma, low=0, low_open=True)

    def lr_at(self, epoch, base):
        return base * self.gamma ** epoch


class CosineAnnealingLR(Schedule):
    """η_min + (η₀ − η_min)(1 + cos(π e / T_max))/2 (``CosineAnnealingLR``; past T_max the
    cosine continues, as torch's)."""

    def __init__(self, T_max: int, eta_min: float = 0.0):
        super().__init__()
        self.T_max = check_int("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = check_real("CosineAnnealingLR", "eta_min", eta_min, low=0)

    def lr_at(self, epoch, base):
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class CosineAnnealingWarmRestarts(Schedule):
    """SGDR (Loshchilov & Hutter): cosine annealing over T_i epochs, then a restart at η₀ with
    T_i ← T_i·T_mult (``CosineAnnealingWarmRestarts``, stepped once per epoch)."""

    def __init__(self, T_0: int, T_mult: int = 1, eta_min: float = 0.0):
        super().__init__()
        self.T_0 = check_int("CosineAnnealingWarmRestarts", "T_0", T_0)
        self.T_mult = check_int("CosineAnnealingWarmRestarts", "T_mult", T_mult)
        self.eta_min = check_real("CosineAnnealingWarmRestarts", "eta_min", eta_min, low=0)

    def lr_at(self, epoch, base):
        T_cur, T_i = epoch, self.T_0
        while T_cur >= T_i:
            T_cur -= T_i
            T_i *= self.T_mult
        return self.eta_min + (base - self.eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2


class LinearLR(Schedule):
    """η₀·(s + (f − s)·min(e, T)/T) with s = ``start_factor``, f = ``end_factor``,
    T = ``total_iters`` (``LinearLR``): linear warm-up (s < f) or linear decay (s > f)."""

    def __init__(self, start_factor: float = 1 / 3, end_factor: float = 1.0, total_iters: int = 5):
        super().__init__()
        self.start_factor = check_real("LinearLR", "start_factor", start_factor, low=0, low_open=True,
                                       high=1, high_open=False)
        self.end_factor = check_real("LinearLR", "end_factor", end_factor, low=0, high=1, high_open=False)
        self.total_iters = check_int("LinearLR", "total_iters", total_iters)

    def lr_at(self, epoch, base):
        k = min(epoch, self.total_iters)
        return base * (self.start_factor + (self.end_factor - self.start_factor) * k / self.total_iters)


def linear_annealing(eta_tau_factor: float, tau: int) -> LinearLR:
    """The course's linear ("simulated") annealing: η_k = (1 − k/τ)·η₀ + (k/τ)·η_τ for k ≤ τ,
    η_τ afterwards, with η_τ = ``eta_tau_factor``·η₀ (typically 0.01)."""
    return LinearLR(1.0, eta_tau_factor, tau)


class Warmup(Schedule):
    """Linear warm-up from ``start_factor``·η₀ to η₀ over ``epochs`` epochs, then ``then``
    (another schedule, counted from the end of the warm-up; constant η₀ if None). Equals torch's
    ``SequentialLR([LinearLR(start_factor, 1, epochs), then], milestones=[epochs])``."""

    def __init__(self, epochs: int, start_factor: float = 0.1, then: Schedule | None = None):
        super().__init__()
        self.warmup = LinearLR(start_factor, 1.0, check_int("Warmup", "epochs", epochs))
        if then is not None and not isinstance(then, Schedule):
            raise ValueError(f"Warmup: then must be a Schedule, got {then!r}")
        self.then = then

    def lr_at(self, epoch, base):
        w = self.warmup.total_iters
        if epoch < w or self.then is None:
            return self.warmup.lr_at(epoch, base)
        return self.then.lr_at(epoch - w, base)


SCHEDULES = ("constant", "step", "exponential", "cosine", "cosine_restarts", "linear", "warmup", "warmup_cosine")


def get_schedule(schedule, epochs: int) -> Schedule:
    """A :class:`Schedule` as is, or one by name set up for a run of ``epochs`` epochs:
    ``constant``; ``step`` (×0.1 every ⌈epochs/3⌉); ``exponential`` (γ with γ^epochs = 0.01);
    ``cosine`` (T_max = epochs); ``cosine_restarts`` (T_0 = ⌈epochs/3⌉, T_mult 1);
    ``linear`` (annealing to 0.01·η₀ at the last epoch); ``warmup`` (linear from 0.1·η₀ over
    ⌈epochs/10⌉ epochs, then constant); ``warmup_cosine`` (that warm-up, then cosine over the rest)."""
    if isinstance(schedule, Schedule):
        return schedule
    if not isinstance(schedule, str) or schedule.lower() not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)} "
                         f"or pass a symprop.runtime.schedules.Schedule")
    name, n = schedule.lower(), check_int("schedule", "epochs", epochs)
    third, tenth = max(1, math.ceil(n / 3)), max(1, math.ceil(n / 10))
    if name == "constant":
        return Constant()
    if name == "step":
        return StepLR(third, 0.1)
    if name == "exponential":
        return ExponentialLR(0.01 ** (1 / max(1, n - 1)))
    if name == "cosine":
        return CosineAnnealingLR(n)
    if name == "cosine_restarts":
        return CosineAnnealingWarmRestarts(third)
    if name == "linear":
        return linear_annealing(0.01, max(1, n - 1))
    if name == "warmup":
        return Warmup(tenth)
    return Warmup(tenth, then=CosineAnnealingLR(max(1, n - tenth)))
