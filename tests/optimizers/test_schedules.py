"""Learning-rate schedules against torch.optim.lr_scheduler, epoch by epoch."""
import math

import pytest
import torch
from torch.optim import lr_scheduler as T

from symprop.runtime import schedules as S

EPOCHS = 40


def torch_lrs(make, base=0.1, epochs=EPOCHS):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base)
    sched = make(opt)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


CASES = [
    (S.StepLR(7, 0.5), lambda o: T.StepLR(o, 7, 0.5)),
    (S.StepLR(3), lambda o: T.StepLR(o, 3)),
    (S.ExponentialLR(0.9), lambda o: T.ExponentialLR(o, 0.9)),
    (S.CosineAnnealingLR(10), lambda o: T.CosineAnnealingLR(o, 10)),
    (S.CosineAnnealingLR(25, eta_min=1e-3), lambda o: T.CosineAnnealingLR(o, 25, eta_min=1e-3)),
    (S.CosineAnnealingWarmRestarts(5), lambda o: T.CosineAnnealingWarmRestarts(o, 5)),
    (S.CosineAnnealingWarmRestarts(3, T_mult=2, eta_min=1e-4),
     lambda o: T.CosineAnnealingWarmRestarts(o, 3, T_mult=2, eta_min=1e-4)),
    (S.LinearLR(), lambda o: T.LinearLR(o)),
    (S.linear_annealing(0.01, 30), lambda o: T.LinearLR(o, start_factor=1.0, end_factor=0.01, total_iters=30)),
    (S.Warmup(5), lambda o: T.LinearLR(o, start_factor=0.1, end_factor=1.0, total_iters=5)),
    (S.Warmup(4, 0.25, then=S.CosineAnnealingLR(36)),
     lambda o: T.SequentialLR(o, [T.LinearLR(o, 0.25, 1.0, 4), T.CosineAnnealingLR(o, 36)], milestones=[4])),
    (S.Warmup(3, then=S.StepLR(5, 0.5)),
     lambda o: T.SequentialLR(o, [T.LinearLR(o, 0.1, 1.0, 3), T.StepLR(o, 5, 0.5)], milestones=[3])),
]


@pytest.mark.parametrize("ours,theirs", CASES, ids=[repr(c[0]) for c in CASES])
def test_schedule_equals_torch_epoch_by_epoch(ours, theirs):
    want = torch_lrs(theirs)
    got = ours.lrs(0.1, EPOCHS)
    for e, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= 1e-9 * abs(b) + 1e-15, (e, a, b)


@pytest.mark.parametrize("name", S.SCHEDULES)
def test_named_schedules(name):
    s = S.get_schedule(name, 20)
    lrs = s.lrs(1.0, 20)
    assert all(0 < v <= 1.0 + 1e-12 for v in lrs)
    if name in ("cosine", "linear", "exponential"):
        assert lrs[0] == 1.0 and lrs[-1] < 0.05
    if name == "linear":
        assert math.isclose(lrs[-1], 0.01)


@pytest.mark.parametrize("bad", [lambda: S.StepLR(0), lambda: S.StepLR(2, gamma=float("nan")),
                                 lambda: S.ExponentialLR(-1), lambda: S.CosineAnnealingLR(1.5),
                                 lambda: S.LinearLR(start_factor=0), lambda: S.Warmup(3, then="cosine"),
                                 lambda: S.get_schedule("cosin", 10), lambda: S.get_schedule("cosine", 0)])
def test_bad_schedules(bad):
    with pytest.raises(ValueError):
        bad()
