"""The sweep engine (runtime/sweep.py) on plain and Residual-containing models, against
PyTorch in float64: the gradient, the HVP by both routes (the fused forward-over-reverse
sweep and the separate JVP + R-op passes on a tape), the Gauss-Newton and exact Hessian
diagonals; and its recording mode against the kernels the executor actually runs."""
import numpy as np
import pytest
import torch
from support.numeric import rel_err
from support.torch_oracles import check_hvp_against_torch, flatten_torch, torch_forward, torch_loss

from symprop import Sequential
from symprop import layers as L
from symprop.runtime import kernels, sweep


@pytest.fixture(autouse=True)
def _torch_one_thread():
    """The oracles run many tiny backward passes: threads only contend (a conv Hessian took 10 s
    on two busy cores instead of 0.4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dense_plain(d, h, k):
    return [L.Dense(d, h), L.Tanh(), L.Dense(h, h), L.Sigmoid(), L.Dense(h, k)]


def _dense_residual(d, h, k):
    # a Residual first (its branches need no input gradient), an identity skip, a projection
    return [L.Residual([L.Dense(d, h), L.Tanh()]), L.Residual([L.Dense(h, h), L.SoftPlus()]),
            L.Residual([L.Dense(h, k), L.Sigmoid()]), L.Dense(k, k)]


def _conv_residual(d, h, k):
    return [L.Conv2D(1, 2, 3, padding=1), L.Tanh(), L.Residual([L.Conv2D(2, 2, 3, padding=1), L.Sigmoid()]),
            L.Residual([L.Conv2D(2, 3, 3, stride=2, padding=1), L.SoftPlus()]), L.AvgPool2D(2), L.Flatten(),
            L.Dense(3, k)]


MODELS = {"plain": (_dense_plain, None), "residual": (_dense_residual, None),
          "conv_residual": (_conv_residual, (1, 4, 4))}


def _case(name, seed):
    rng = np.random.default_rng(seed)
    d, h, k = (int(v) for v in rng.integers(2, 6, 3))
    build, image = MODELS[name]
    shape = image or (d,)
    model = Sequential(build(d, h, k), dtype="float64", seed=seed, input_shape=shape)
    n = int(rng.integers(2, 6))
    X = rng.standard_normal((n,) + shape)
    y = rng.integers(0, k, n)
    v = [rng.standard_normal(p.shape) for p in model.parameters()]
    return model, X, y, v


def _torch_params(model):
    return [torch.tensor(p, requires_grad=True) for p in model.parameters()]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_grad_and_hvp_by_both_routes_match_torch(name, seed):
    model, X, y, v = _case(name, seed)
    pt = check_hvp_against_torch(model, X, y, v, lambda p: torch_loss(model, X, y, p))
    lt = torch_loss(model, X, y, pt)
    gt = torch.autograd.grad(lt, pt, create_graph=True)
    hvt = torch.autograd.grad(sum((g * torch.tensor(a)).sum() for g, a in zip(gt, v)), pt)
    tape = model.trace(X, y)
    grads = model.backward(tape, keep_output_grads=True)      # the separate passes on a tape
    assert max(rel_err(a, b.detach().numpy()) for a, b in zip(grads, gt)) < 1e-10
    assert max(rel_err(a, b.numpy()) for a, b in zip(model.rop(tape, v), hvt)) < 1e-9


def _torch_hessian_and_ggn_diagonals(model, X, y):
    theta, unflat = flatten_torch(_torch_params(model))
    H = torch.autograd.functional.hessian(lambda th: torch_loss(model, X, y, unflat(th)), theta)
    J = torch.autograd.functional.jacobian(lambda th: torch_forward(model, X, unflat(th)), theta)   # (N, K, P)
    out = torch_forward(model, X, unflat(theta)).detach()
    p = torch.softmax(out, 1)
    Hout = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / len(X)                      # per sample
    ggn = torch.einsum("nkp,nkl,nlp->p", J, Hout, J)
    split = lambda t: [a.numpy() for a in unflat(t)]  # noqa: E731
    return split(torch.diagonal(H)), split(ggn)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("seed", [2, 3])
def test_hessian_diagonals_match_torch(name, seed):
    model, X, y, _ = _case(name, seed)
    exact_t, ggn_t = _torch_hessian_and_ggn_diagonals(model, X, y)
    for method, want in (("exact", exact_t), ("gauss_newton", ggn_t)):
        got = model.hessian_diagonal(X, y, method=method)
        assert max(rel_err(a, b) for a, b in zip(got, want)) < 1e-9, method


def _executed(fn):
    """The kernels the executor runs during ``fn()``, intercepted at SpecKernels._call (not by
    the engine's observer): ``[(spec, role)]`` in order, the loss's kernels aside (the engine
    notes them itself, outside the layers)."""
    ran, original = [], kernels.SpecKernels._call

    def spy(self, role, env, *a, **kw):
        out = original(self, role, env, *a, **kw)
        if out is not None and self.entry.get("family") != "loss":
            ran.append((self.spec, role))
        return out
    kernels.SpecKernels._call = spy
    try:
        fn()
    finally:
        kernels.SpecKernels._call = original
    return ran


@pytest.mark.parametrize("name", list(MODELS))
def test_recorded_schedule_is_what_the_executor_runs(name):
    model, X, y, v = _case(name, 4)
    sched = sweep.record_schedule(model, batch=3, seed=5)
    rng = np.random.default_rng(5)   # record_schedule's own batch, drawn again
    Xr = rng.standard_normal((3,) + model.input_shape)
    yr = rng.integers(0, model.output_shape[-1], 3)
    vr = [rng.standard_normal(p.shape) for p in model.parameters()]
    calls = {"loss_and_grad": lambda: model.loss_and_grad(Xr, yr), "hvp": lambda: model.hvp(Xr, yr, vr),
             "exact": lambda: model.hessian_diagonal(Xr, yr, method="exact"),
             "gauss_newton": lambda: model.hessian_diagonal(Xr, yr, method="gauss_newton"),
             "hutchinson": lambda: model.hessian_diagonal(Xr, yr, method="hutchinson", samples=1, seed=5)}
    if name == "plain":
        calls["becker_lecun"] = lambda: model.hessian_diagonal(Xr, yr, method="becker_lecun")
    assert set(sched) == set(calls)     # Becker-LeCun is refused through a skip connection
    for call, fn in calls.items():
        recorded = [(c.spec, c.role) for c in sched[call] if c.position]
        assert recorded == _executed(fn), call
        assert recorded, call
        assert [c.kernel for c in sched[call] if not c.position][:1] == ["softmax_cross_entropy"], call
    # positions: a layer inside a Residual is (k, branch, j), its k the Residual's index
    for c in sched["hvp"]:
        if len(c.position) > 1:
            k, branch, j = c.position
            assert isinstance(model.layers[k], L.Residual) and branch in (0, 1)
            chain = model.layers[k].branches()[branch]
            assert chain[j].kernels.spec == c.spec
    assert any(len(c.position) == 3 for c in sched["hvp"]) == (name != "plain")
    # the shapes logged are the outputs' (batch first)
    first = next(c for c in sched["loss_and_grad"] if c.position)
    assert first.shapes[0][0] == 3


def test_fan_out_joins():
    """The factor-group join: incoming groups summed column by column, groups born in a branch
    appended; a Becker-LeCun pass is refused through a fan-out."""
    rng = np.random.default_rng(0)
    a = [(rng.standard_normal((2, 3, 4)), np.ones((2, 3)))]
    born = (rng.standard_normal((1, 3, 4)), -np.ones((1, 3)))
    b = [(rng.standard_normal((2, 3, 4)), np.ones((2, 3)))]
    joined = sweep.join_factor_groups([a + [born], b], a)
    assert len(joined) == 2 and np.array_equal(joined[0][0], a[0][0] + b[0][0]) and joined[1] is born
    assert sweep.join_sum([None, np.ones(2), 2 * np.ones(2)], None).tolist() == [3.0, 3.0]
    assert sweep.add((None, np.ones(1)), (np.ones(1), None))[0].tolist() == [1.0]
    res = L.Residual([L.Dense(3, 3)])
    with pytest.raises(ValueError, match="not defined through a fan-out"):
        sweep.through_branches(sweep.BECKER_LECUN, res, [[L.Dense(3, 3)], []], {"branches": [[None], []],
                                                                                "kept": {"g": [[None], []]}},
                               np.ones((1, 3)))
