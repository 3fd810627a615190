"""Huber and log-cosh: built-in losses written as PointwiseLossSpecs (derive/losses.py), their
kernels in the generated losses module. Value, gradient, HVP and Hessian diagonals against
PyTorch (float64), float32 stability far from the target, training, checkpoints (Huber's delta
kept), from_torch with torch loss modules, and misuse refused by name."""
import numpy as np
import pytest
import torch

from support.numeric import rel_err
from support.torch_oracles import check_hvp_against_torch, flatten_torch, torch_forward
from symprop import Sequential, layers as L, losses, optimizers as O
from symprop.interop import from_torch, loss_from_torch, loss_to_torch

nn = torch.nn

#: (our loss, its PyTorch oracle on outputs and targets)
CASES = {
    "huber": (lambda: losses.get_loss("huber"), nn.HuberLoss()),
    "huber_delta_0.7": (lambda: losses.Huber(delta=0.7), nn.HuberLoss(delta=0.7)),
    "huber_delta_3": (lambda: losses.get_loss("huber", delta=3), nn.HuberLoss(reduction="mean", delta=3.0)),
    "log_cosh": (lambda: losses.get_loss("log_cosh"), lambda o, y: torch.log(torch.cosh(o - y)).mean()),
}


def _case(name, seed):
    """A small random MLP with the loss, and data whose residuals fall on both sides of delta."""
    rng = np.random.default_rng(seed)
    n, d_in, hidden, k = (int(v) for v in rng.integers(2, 7, size=4))
    loss, oracle = CASES[name]
    model = Sequential([L.Dense(d_in, hidden), L.Tanh(), L.Dense(hidden, k)], loss=loss(),
                       dtype="float64", seed=seed)
    X = rng.normal(size=(n, d_in))
    y = rng.normal(size=(n, k)) * 2.5
    return model, X, y, oracle, rng


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_gradient_hvp_equal_pytorch(name, seed):
    model, X, y, oracle, rng = _case(name, seed)
    if name.startswith("huber"):   # both branches of the piecewise loss are exercised
        r = np.abs(model.predict(X) - y)
        delta = model.loss.scalars["delta"]
        assert (r < delta).any() and (r > delta).any() or y.size < 6
    v = [rng.normal(size=p.shape) for p in model.parameters()]
    check_hvp_against_torch(model, X, y, v, lambda pt: oracle(torch_forward(model, X, pt), torch.tensor(y)))
    assert model.evaluate(X, y)["loss"] == pytest.approx(float(oracle(torch.tensor(model.predict(X)),
                                                                       torch.tensor(y))), rel=1e-12)


@pytest.mark.parametrize("name", ["huber", "huber_delta_0.7", "log_cosh"])
def test_exact_and_gauss_newton_hessian_diagonals_equal_pytorch(name):
    model, X, y, oracle, _ = _case(name, 5)
    pt = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    flat, unflatten = flatten_torch(pt)
    H = torch.autograd.functional.hessian(lambda th: oracle(torch_forward(model, X, unflatten(th)), torch.tensor(y)),
                                          flat).numpy()
    exact = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="exact")])
    assert rel_err(exact, np.diag(H)) < 1e-9
    # Gauss-Newton: J^T diag(l'') J, l'' the loss Hessian w.r.t. the outputs (diagonal), by torch
    J = torch.autograd.functional.jacobian(lambda th: torch_forward(model, X, unflatten(th)).reshape(-1), flat).numpy()
    out = torch.tensor(model.predict(X), requires_grad=True)
    (g,) = torch.autograd.grad(oracle(out, torch.tensor(y)), out, create_graph=True)
    (w,) = torch.autograd.grad(g.sum(), out)   # the Hessian is diagonal: row sums are its diagonal
    gn = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="gauss_newton")])
    assert rel_err(gn, np.einsum("kp,k,kp->p", J, w.numpy().reshape(-1), J)) < 1e-9


def _log_cosh_reference(d):
    """log cosh d in float64 without overflow: log(e^d + e^-d) − log 2."""
    return np.logaddexp(d, -d) - np.log(2.0)


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e3, 1e4])
def test_float32_finite_and_accurate_far_from_target(scale):
    rng = np.random.default_rng(int(np.log10(scale)))
    out = (rng.normal(size=(64, 3)) * scale).astype(np.float32)
    y = rng.normal(size=(64, 3)).astype(np.float32)
    d = out.astype(np.float64) - y
    v = rng.normal(size=out.shape).astype(np.float32)
    with np.errstate(over="ignore"):
        naive = np.log(np.cosh(np.float32(d.max())))
    assert scale < 1e2 or not np.isfinite(naive)   # the textbook form would overflow here
    for loss, value, grad, hess in [
        (losses.LogCosh(), _log_cosh_reference(d), np.tanh(d), 1 / np.cosh(np.minimum(np.abs(d), 300)) ** 2),
        (losses.Huber(delta=1.5), np.where(np.abs(d) <= 1.5, d ** 2 / 2, 1.5 * (np.abs(d) - 0.75)),
         np.clip(d, -1.5, 1.5), (np.abs(d) <= 1.5).astype(float))]:
        got, g, _ = loss.value_and_grad(out, y)
        hv = loss.hvp(None, out, y, v)
        assert np.isfinite(got) and np.isfinite(g).all() and np.isfinite(hv).all()
        assert g.dtype == hv.dtype == np.float32
        assert got == pytest.approx(value.mean(), rel=1e-5)
        assert loss.value(out, y) == pytest.approx(got, rel=1e-6)
        assert np.abs(g - grad / d.size).max() <= 1e-6 * np.abs(grad / d.size).max()
        assert np.abs(hv - hess * v / d.size).max() <= 1e-6 * np.abs(v / d.size).max()


@pytest.mark.parametrize("loss", ["huber", "log_cosh"])
def test_training_reduces_loss(loss):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 4)).astype(np.float32)
    y = (X @ rng.normal(size=(4, 1))).astype(np.float32) + 4 * (rng.random((256, 1)) < 0.05)   # outliers
    model = Sequential([L.Dense(4, 16), L.Tanh(), L.Dense(16, 1)], loss=loss, seed=0)
    before = model.evaluate(X, y)["loss"]
    model.fit(X, y, epochs=30, batch_size=32, optimizer=O.Adam(lr=0.01), verbose=0)
    assert model.evaluate(X, y)["loss"] < 0.3 * before


@pytest.mark.parametrize("loss", [losses.Huber(delta=2.5), losses.LogCosh(), "huber"])
def test_checkpoint_round_trip_keeps_the_loss_and_delta(loss, tmp_path):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(9, 3)), rng.normal(size=(9, 2)) * 4
    model = Sequential([L.Dense(3, 5), L.Tanh(), L.Dense(5, 2)], loss=loss, dtype="float64", seed=0)
    path = tmp_path / "m.npz"
    model.save(path)
    back = Sequential.load(path)   # a built-in: no custom_objects, no compile
    assert type(back.loss) is type(model.loss) and back.loss.scalars == model.loss.scalars
    assert back.loss_and_grad(X, y)[0] == model.loss_and_grad(X, y)[0]
    np.testing.assert_array_equal(back.predict(X), model.predict(X))


def test_runtime_losses_are_the_specs():
    """The losses registered as spec built-ins are exactly derive/losses.py's, with its defaults."""
    from symprop.derive.losses import POINTWISE_LOSSES
    spec_losses = {n: c for n, c in losses.LOSSES.items() if issubclass(c, losses.SpecLoss)}
    assert sorted(spec_losses) == sorted(POINTWISE_LOSSES) == ["huber", "log_cosh"]
    for name, cls in spec_losses.items():
        assert cls.defaults == POINTWISE_LOSSES[name].defaults()
        assert cls().spec is POINTWISE_LOSSES[name]


def _torch_mlp(dtype=torch.float64, k=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, k)).to(dtype)


@pytest.mark.parametrize("module, name, targets", [
    (nn.HuberLoss(delta=0.5), "huber", "real"),
    (nn.HuberLoss(), "huber", "real"),
    (nn.MSELoss(), "mse", "real"),
    (nn.CrossEntropyLoss(), "softmax_cross_entropy", "labels"),
    (nn.BCEWithLogitsLoss(), "sigmoid_cross_entropy", "probabilities"),
])
def test_from_torch_takes_torch_loss_modules(module, name, targets):
    rng = np.random.default_rng(2)
    seq = _torch_mlp()
    model = from_torch(seq, loss=module)
    assert model.loss.name == name
    if name == "huber":
        assert model.loss.scalars == {"delta": module.delta}
    X = rng.normal(size=(7, 4))
    y = {"real": rng.normal(size=(7, 3)) * 2, "labels": rng.integers(0, 3, size=7),
         "probabilities": rng.random((7, 3))}[targets]
    want = module(seq(torch.tensor(X)), torch.tensor(y)).item()
    assert model.evaluate(X, y)["loss"] == pytest.approx(want, rel=1e-12)


def test_loss_to_torch_is_the_inverse():
    for ours in ("huber", losses.Huber(delta=0.25), "mse", "softmax_cross_entropy", "sigmoid_cross_entropy"):
        mod = loss_to_torch(ours)
        back = loss_from_torch(mod)
        assert type(back) is type(losses.get_loss(ours)) and back.scalars == losses.get_loss(ours).scalars
    assert loss_to_torch(losses.Huber(delta=0.25)).delta == 0.25
    with pytest.raises(ValueError, match="loss_to_torch: the loss 'log_cosh' has no torch.nn module"):
        loss_to_torch("log_cosh")


def test_from_torch_keeps_string_and_symprop_losses():
    assert from_torch(_torch_mlp(), loss="log_cosh").loss.name == "log_cosh"
    h = losses.Huber(delta=2.0)
    assert from_torch(_torch_mlp(), loss=h).loss is h
    assert loss_from_torch("mse") == "mse"


@pytest.mark.parametrize("module, match", [
    (nn.HuberLoss(reduction="sum"), r"HuberLoss with reduction='sum' is not supported.*reduction='mean'"),
    (nn.MSELoss(reduction="none"), r"MSELoss with reduction='none'"),
    (nn.CrossEntropyLoss(label_smoothing=0.1), r"label_smoothing=0.1"),
    (nn.CrossEntropyLoss(weight=torch.ones(3)), r"CrossEntropyLoss with weight=set"),
    (nn.CrossEntropyLoss(ignore_index=0), r"ignore_index=0"),
    (nn.BCEWithLogitsLoss(pos_weight=torch.ones(3)), r"pos_weight=set"),
    (nn.L1Loss(), r"L1Loss has no symprop equivalent; supported: nn.MSELoss, nn.HuberLoss"),
])
def test_from_torch_refuses_losses_it_does_not_compute(module, match):
    with pytest.raises(ValueError, match=match):
        from_torch(_torch_mlp(), loss=module)


def test_misuse_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown loss 'hubr'; choose from .*'huber'.*'log_cosh'"):
        Sequential([L.Dense(2, 2)], loss="hubr")
    with pytest.raises(TypeError, match=r"Huber: unknown argument\(s\) \['reduction'\]; it takes delta=1"):
        losses.get_loss("huber", reduction="sum")
    with pytest.raises(TypeError, match=r"loss 'mse' takes no arguments"):
        losses.get_loss("mse", delta=2.0)
    with pytest.raises(TypeError, match=r"LogCosh: unknown argument\(s\) \['delta'\]; it takes none"):
        losses.LogCosh(delta=1.0)
    for bad, err, match in [(0.0, ValueError, "delta must be positive"), (-1, ValueError, "delta must be positive"),
                            (float("nan"), ValueError, "delta must be finite"),
                            ("1", TypeError, "delta must be a real number")]:
        with pytest.raises(err, match=match):
            losses.Huber(delta=bad)
    with pytest.raises(ValueError, match=r"huber: targets must have shape \(4, 2\), got \(4, 3\)"):
        Sequential([L.Dense(3, 2)], loss="huber", dtype="float64").loss_and_grad(np.zeros((4, 3)), np.zeros((4, 3)))


def test_user_loss_named_like_the_builtin_is_told_apart_on_load(tmp_path):
    """A user's ``from_sympy("huber", ...)`` (δ = 1 written as a number: the README's) is its own
    loss: its checkpoint asks for it by name, as its spec hash is not the built-in's; the same
    expression as the built-in log-cosh has the built-in's hash, so loads as the built-in. (The
    specs are test_user_losses.py's: compiled once per cache.)"""
    import sympy as sp
    z, t = sp.symbols("z t")
    d = z - t
    mine = losses.from_sympy("huber", sp.Piecewise((d ** 2 / 2, sp.Abs(d) <= 1), (sp.Abs(d) - sp.S.Half, True)), z, t)
    assert isinstance(mine, losses.PointwiseLoss) and mine.spec.hash != losses.Huber().spec.hash
    model = Sequential([L.Dense(3, 2)], loss=mine, dtype="float64", seed=0, input_shape=(3,))
    model.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"custom_objects=\{'huber'"):
        Sequential.load(tmp_path / "m.npz")
    back = Sequential.load(tmp_path / "m.npz", custom_objects={"huber": mine})
    assert back.loss is mine
    same = losses.from_sympy("log_cosh", sp.log(sp.cosh(z - t)), z, t)
    assert same.spec.hash == losses.LogCosh().spec.hash
    model = Sequential([L.Dense(3, 2)], loss=same, dtype="float64", seed=0, input_shape=(3,))
    model.save(tmp_path / "c.npz")
    assert isinstance(Sequential.load(tmp_path / "c.npz").loss, losses.LogCosh)


def test_latex_documents_the_builtin_losses():
    model = Sequential([L.Dense(3, 2)], loss=losses.Huber(delta=2.0), seed=0, input_shape=(3,))
    page = model.latex()
    for text in ("\\subsection{Huber}", "\\subsection{Log cosh}", "huber\\_hvp", "log\\_cosh\\_hvp",
                 "\\label{eq:loss:huber:def}", "\\delta = 1$ by default", "\\log{\\left(2 \\right)}"):
        assert text in page, text
    assert "written by the user" not in page


@pytest.mark.slow   # compiles its own user spec (~10 s cold)
def test_user_loss_with_a_scalar_argument(tmp_path):
    """The door the built-in Huber came through, from user code: a pseudo-Huber loss with a
    scalar δ, set per loss and kept by the checkpoint."""
    import sympy as sp
    z, t, delta = sp.symbols("z t delta")
    pseudo = losses.from_sympy("pseudo_huber", delta ** 2 * (sp.sqrt(1 + ((z - t) / delta) ** 2) - 1), z, t,
                               scalars={"delta": 1.0})
    wide = pseudo.with_scalars(delta=2.5)
    assert pseudo.scalars == {"delta": 1.0} and wide.scalars == {"delta": 2.5}
    for loss, dl in ((pseudo, 1.0), (wide, 2.5)):
        model = Sequential([L.Dense(4, 5), L.Tanh(), L.Dense(5, 2)], loss=loss, dtype="float64", seed=3)
        rng = np.random.default_rng(4)
        X, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 2)) * 3
        v = [rng.normal(size=p.shape) for p in model.parameters()]
        check_hvp_against_torch(model, X, y, v, lambda pt: (dl ** 2 * (torch.sqrt(
            1 + ((torch_forward(model, X, pt) - torch.tensor(y)) / dl) ** 2) - 1)).mean())
    model.save(tmp_path / "p.npz")
    back = Sequential.load(tmp_path / "p.npz", custom_objects={"pseudo_huber": pseudo})
    assert back.loss.scalars == {"delta": 2.5}
    np.testing.assert_array_equal(back.loss_and_grad(X, y)[1][0], model.loss_and_grad(X, y)[1][0])
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['beta'\]; it takes delta=1"):
        pseudo.with_scalars(beta=1.0)


def test_summary_names_the_loss_with_its_scalars():
    """``summary()`` shows a loss's scalars (Huber's δ): two models differing only in δ print
    differently; a loss without scalars prints its bare name."""
    lines = {}
    for key, loss in (("huber2", losses.Huber(delta=2.0)), ("huber", "huber"), ("mse", "mse")):
        m = Sequential([L.Dense(4, 3)], loss=loss, seed=0, input_shape=(4,))
        out = []
        m.summary(print_fn=out.append)
        lines[key] = out[0]
    assert "loss huber(delta=2)," in lines["huber2"]
    assert "loss huber(delta=1)," in lines["huber"]
    assert "loss mse," in lines["mse"]
