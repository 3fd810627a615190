"""First-order optimizers against torch.optim (25 steps, same gradient sequence, float64),
hyperparameter validation, and the refusal of non-finite gradients."""
import numpy as np
import pytest
import torch

from symprop import optimizers as O
from support.numeric import rel_err

SHAPES = [(3, 4), (4,), (2, 3, 2, 2)]


def gradient_sequence(steps=25, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s) * rng.choice([1e-3, 1.0, 10.0]) for s in SHAPES] for _ in range(steps)]


CASES = [
    (lambda: O.SGD(0.1, momentum=0), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda: O.SGD(0.05, momentum=0.9, weight_decay=0.01),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)),
    (lambda: O.SGD(0.05, momentum=0.8, nesterov=True, weight_decay=1e-3),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True, weight_decay=1e-3)),
    (lambda: O.get_optimizer("nesterov"), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    (lambda: O.AdaGrad(), lambda p: torch.optim.Adagrad(p)),
    (lambda: O.AdaGrad(0.1, eps=1e-6, weight_decay=0.01, lr_decay=0.05),
     lambda p: torch.optim.Adagrad(p, lr=0.1, eps=1e-6, weight_decay=0.01, lr_decay=0.05)),
    (lambda: O.RMSProp(), lambda p: torch.optim.RMSprop(p)),
    (lambda: O.RMSProp(0.003, alpha=0.9, eps=1e-6, momentum=0.9, weight_decay=0.01),
     lambda p: torch.optim.RMSprop(p, lr=0.003, alpha=0.9, eps=1e-6, momentum=0.9, weight_decay=0.01)),
    (lambda: O.Adam(), lambda p: torch.optim.Adam(p)),
    (lambda: O.Adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    (lambda: O.AdamW(), lambda p: torch.optim.AdamW(p)),
    (lambda: O.AdamW(0.01, betas=(0.5, 0.9), eps=1e-7, weight_decay=0.3),
     lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.5, 0.9), eps=1e-7, weight_decay=0.3)),
]


@pytest.mark.parametrize("ours,theirs", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_optimizer_matches_torch_over_25_steps(ours, theirs):
    rng = np.random.default_rng(1)
    params = [rng.normal(size=s) for s in SHAPES]
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    opt, topt = ours(), theirs(tp)
    for grads in gradient_sequence():
        opt.step(params, grads)
        for t, g in zip(tp, grads):
            t.grad = torch.tensor(g)
        topt.step()
    for a, b in zip(params, tp):
        assert rel_err(a, b.detach().numpy()) <= 1e-9


def test_lr_change_between_steps_is_seen():
    p = [np.ones(3)]
    opt = O.SGD(0.1, momentum=0)
    opt.step(p, [np.ones(3)])
    opt.lr = 0.5
    opt.step(p, [np.ones(3)])
    assert np.allclose(p[0], 1 - 0.1 - 0.5)


def test_float32_parameters_update_in_place():
    p = [np.ones((2, 2), np.float32)]
    ref = p[0]
    O.AdamW().step(p, [np.ones((2, 2))])          # float64 gradient cast to the parameter's dtype
    assert p[0] is ref and p[0].dtype == np.float32 and (p[0] < 1).all()


@pytest.mark.parametrize("make", [
    lambda: O.SGD(-0.1), lambda: O.SGD(float("nan")), lambda: O.SGD(True), lambda: O.SGD("0.1"),
    lambda: O.SGD(0.1, momentum=1.0), lambda: O.SGD(0.1, momentum=-0.1), lambda: O.SGD(0.1, weight_decay=-1),
    lambda: O.SGD(0.1, momentum=0, nesterov=True), lambda: O.SGD(0.1, momentum=0.9, nesterov=1),
    lambda: O.AdaGrad(eps=-1e-10), lambda: O.AdaGrad(float("inf")), lambda: O.AdaGrad(weight_decay=float("nan")),
    lambda: O.RMSProp(alpha=1.0), lambda: O.RMSProp(momentum=np.nan), lambda: O.RMSProp(eps=-1),
    lambda: O.Adam(betas=(0.9, 1.0)), lambda: O.Adam(betas=(-0.1, 0.9)), lambda: O.Adam(betas=(0.9,)),
    lambda: O.Adam(betas=(True, 0.9)), lambda: O.AdamW(weight_decay=-0.01), lambda: O.AdamW(eps=np.inf),
    lambda: O.AdaHessian(eps=0), lambda: O.AdaHessian(betas=(0.9, 1)), lambda: O.AdaHessian(update_each=True),
    lambda: O.AdaHessian(weight_decay=-1), lambda: O.AdaHessian(estimate_warmup=-1),
    lambda: O.Newton(damping=0), lambda: O.Newton(lr=np.nan),
])
def test_invalid_hyperparameters_raise_at_construction(make):
    with pytest.raises(ValueError):
        make()


def test_numpy_scalars_are_accepted():
    opt = O.Adam(np.float32(0.01), betas=(np.float64(0.9), 0.99), eps=np.float64(1e-8), weight_decay=np.int64(0))
    assert isinstance(opt.lr, float) and opt.b1 == 0.9
    assert O.AdaHessian(update_each=np.int64(2)).update_each == 2
    assert O.SGD(np.int32(1)).lr == 1.0


@pytest.mark.parametrize("name", sorted(O.OPTIMIZERS))
def test_optimizers_by_name(name):
    opt = O.get_optimizer(name)
    assert isinstance(opt, O.Optimizer)
    assert O.get_optimizer(name.upper()).__class__ is opt.__class__
    with pytest.raises(ValueError, match="unknown optimizer"):
        O.get_optimizer("adamx")


@pytest.mark.parametrize("make", [O.SGD, lambda: O.SGD(0.1, momentum=0.9), O.AdaGrad, O.RMSProp, O.Adam, O.AdamW])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gradient_is_refused_and_nothing_changes(make, bad):
    opt = make()
    params = [np.ones(3), np.ones(2)]
    opt.step(params, [np.ones(3), np.ones(2)])
    before = [p.copy() for p in params]
    state = [tuple(np.copy(s) for s in (st if isinstance(st, tuple) else (st,))) for st in opt.state]
    with pytest.raises(ValueError, match="gradient 1 .*NaN or inf; no parameter was updated"):
        opt.step(params, [np.ones(3), np.array([1.0, bad])])
    assert all(np.array_equal(a, b) for a, b in zip(params, before))
    after = [tuple(st if isinstance(st, tuple) else (st,)) for st in opt.state]
    assert all(np.array_equal(a, b) for s1, s2 in zip(state, after) for a, b in zip(s1, s2))
    assert opt.t == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finite_check_on_large_gradients(dtype, rng):
    """The check sums g² (NaN and inf propagate): a finite gradient whose g² overflows is still
    finite and is applied; one NaN or inf anywhere in a large gradient is refused."""
    big = np.finfo(dtype).max / 4
    params = [np.zeros(1000, dtype=dtype)]
    opt = O.SGD(lr=1e-300 if dtype == "float64" else 1e-37, momentum=0)
    opt.step(params, [np.full(1000, big, dtype=dtype)])
    assert np.all(np.isfinite(params[0])) and np.all(params[0] < 0)
    for bad in (np.nan, np.inf, -np.inf):
        g = rng.normal(size=(300, 70)).astype(dtype)
        g[rng.integers(300), rng.integers(70)] = bad
        with pytest.raises(ValueError, match="gradient 0 .*NaN or inf"):
            O.SGD().step([np.zeros((300, 70), dtype=dtype)], [g])


def test_adahessian_refuses_non_finite_gradient_or_diagonal():
    opt = O.AdaHessian()
    params = [np.ones(3)]
    with pytest.raises(ValueError, match="Hessian diagonal 0 .*NaN"):
        opt.step(params, [np.ones(3)], hessian_diag=[np.array([1, np.nan, 1])])
    with pytest.raises(ValueError, match="gradient 0 .*NaN"):
        opt.step(params, [np.array([1, np.inf, 1])], hessian_diag=[np.ones(3)])
    assert np.array_equal(params[0], np.ones(3)) and opt.t == 0


def test_adahessian_leaves_entries_with_no_curvature_seen():
    """An entry whose Hessian-diagonal estimates were all exactly 0 is not moved by a reused
    estimate (the cause of the update_each collapse); the others take the usual step."""
    opt = O.AdaHessian(lr=0.1, eps=1e-4)
    p = [np.zeros(2)]
    opt.step(p, [np.array([1.0, 1.0])], hessian_diag=[np.array([2.0, 0.0])])
    assert p[0][1] == 0 and p[0][0] == pytest.approx(-0.1 / (2 + 1e-4))


@pytest.mark.parametrize("make,message", [
    (lambda: O.Adam(eps=1e-50), r"eps=1e-50 rounds to 0 in float32"),
    (lambda: O.AdamW(eps=1e-50), r"eps=1e-50 rounds to 0 in float32"),
    (lambda: O.AdaGrad(eps=1e-50), r"eps=1e-50 rounds to 0 in float32"),
    (lambda: O.RMSProp(eps=1e-50), r"eps=1e-50 rounds to 0 in float32"),
    (lambda: O.SGD(1e39), r"lr=1e\+39 overflows float32"),
    (lambda: O.Adam(betas=(0.9, 0.99999999)), r"betas\[1\]=0.99999999 rounds to 1 in float32"),
    (lambda: O.AdaHessian(weight_decay=1e39), r"weight_decay=1e\+39 overflows float32"),
    (lambda: O.AdaHessian(eps=1e-45), r"eps=1e-45 is subnormal in float32"),   # 0-second-moment step: inf
])
def test_hyperparameters_that_break_in_float32_are_refused_there_and_work_in_float64(make, message):
    p32, g32 = [np.ones(3, np.float32)], [np.zeros(3, np.float32)]
    opt = make()
    with pytest.raises(ValueError, match=message):
        opt.hessian_diag = [np.ones(3, np.float32)]   # AdaHessian's step needs a diagonal
        opt.step(p32, g32)
    assert (p32[0] == 1).all() and opt.state is None   # nothing touched
    from symprop import Sequential, layers as L
    X, y = np.ones((4, 3)), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=message):
        Sequential([L.Dense(3, 2)], dtype="float32").fit(X, y, epochs=1, optimizer=make(), verbose=0)
    p64 = [np.ones(3)]
    opt = make()
    opt.hessian_diag = [np.ones(3)]
    opt.step(p64, [np.zeros(3)])   # float64 represents all of them
