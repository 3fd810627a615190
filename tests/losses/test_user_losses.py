"""Losses written in SymPy (``symprop.losses.from_sympy``): derived gradient and Hessian term
against PyTorch, training, every curvature method, checkpoints with the spec's hash."""
import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from support.torch_oracles import check_hvp_against_torch, torch_forward
from support.numeric import rel_err
from symprop import Sequential, layers as L, losses
from symprop.derive.elementwise import SpecError

z, t = sp.symbols("z t")
d = z - t
HUBER = sp.Piecewise((d ** 2 / 2, sp.Abs(d) <= 1), (sp.Abs(d) - sp.S.Half, True))
LOG_COSH = sp.log(sp.cosh(z - t))
# Poisson negative log-likelihood of a log-rate z (PyTorch's poisson_nll_loss, log_input=True)
POISSON = sp.exp(z) - t * z

CASES = {
    "huber": (HUBER, lambda o, y: F.huber_loss(o, y, delta=1.0)),
    "log_cosh": (LOG_COSH, lambda o, y: torch.log(torch.cosh(o - y)).mean()),
    "poisson_nll": (POISSON, lambda o, y: F.poisson_nll_loss(o, y, log_input=True, full=False)),
}


@pytest.fixture(scope="module")
def user_losses():
    return {name: losses.from_sympy(name, expr, z, t) for name, (expr, _) in CASES.items()}


def _model(loss, seed, k=3):
    return Sequential([L.Dense(5, 7), L.Tanh(), L.Dense(7, k)], loss=loss, dtype="float64", seed=seed)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_grad_hvp_equal_pytorch(user_losses, name, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    model = _model(user_losses[name], seed)
    X = rng.normal(size=(n, 5))
    y = rng.normal(size=(n, 3)) * 2 if name != "poisson_nll" else rng.poisson(2.0, size=(n, 3)).astype(float)
    v = [rng.normal(size=p.shape) for p in model.parameters()]
    torch_of = CASES[name][1]
    check_hvp_against_torch(model, X, y, v, lambda pt: torch_of(torch_forward(model, X, pt), torch.tensor(y)))


def test_hessian_diagonals_equal_pytorch(user_losses):
    rng = np.random.default_rng(3)
    model = _model(user_losses["log_cosh"], 3, k=2)
    X, y = rng.normal(size=(4, 5)), rng.normal(size=(4, 2))
    pt = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    flat = torch.cat([p.reshape(-1) for p in pt]).detach()

    def loss_of(th):
        parts, i = [], 0
        for p in pt:
            parts.append(th[i:i + p.numel()].reshape(p.shape))
            i += p.numel()
        return CASES["log_cosh"][1](torch_forward(model, X, parts), torch.tensor(y))
    H = torch.autograd.functional.hessian(loss_of, flat).numpy()
    exact = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="exact")])
    assert rel_err(exact, np.diag(H)) < 1e-9
    # Gauss-Newton: J^T diag(l'') J, with l'' = 1/cosh^2 > 0
    out = torch_forward(model, X, [flat[i:j].reshape(p.shape) for p, i, j in _slices(pt)])
    J = torch.autograd.functional.jacobian(lambda th: torch_forward(model, X, [th[i:j].reshape(p.shape) for p, i, j in _slices(pt)]).reshape(-1), flat).numpy()
    w = (1 / np.cosh(out.detach().numpy() - y) ** 2).reshape(-1) / y.size
    gn = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="gauss_newton")])
    assert rel_err(gn, np.einsum("kp,k,kp->p", J, w, J)) < 1e-9


def _slices(pt):
    i = 0
    for p in pt:
        yield p, i, i + p.numel()
        i += p.numel()


def test_trains_saves_and_loads_with_custom_objects(user_losses, tmp_path):
    huber = user_losses["huber"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 4)).astype(np.float32)
    y = (X @ rng.normal(size=(4, 1))).astype(np.float32) + 3 * (rng.random((256, 1)) < 0.05)   # outliers
    model = Sequential([L.Dense(4, 16), L.Tanh(), L.Dense(16, 1)], loss=huber, seed=0)
    before = model.evaluate(X, y)["loss"]
    model.fit(X, y, epochs=30, batch_size=32, optimizer="adam", verbose=0)
    after = model.evaluate(X, y)["loss"]
    assert after < 0.3 * before
    path = tmp_path / "huber.npz"
    model.save(path)
    with pytest.raises(ValueError, match="custom_objects=.*huber"):
        Sequential.load(path)
    from symprop.specs import PointwiseLossSpec   # a spec is compiled only once its hash matched
    other = PointwiseLossSpec("huber", sp.Piecewise((d ** 2 / 2, sp.Abs(d) <= 2), (2 * sp.Abs(d) - 2, True)), z, t)
    with pytest.raises(ValueError, match="not the one the model was saved with"):
        Sequential.load(path, custom_objects={"huber": other})
    back = Sequential.load(path, custom_objects={"huber": huber})
    assert back.loss is huber
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    again = Sequential.load(path, custom_objects={"huber": huber.spec})
    assert again.loss.spec == huber.spec


@pytest.mark.slow   # compiles its own user spec (~9 s cold): the default suite's 5 minutes
def test_user_activation_hash_checked_on_load(tmp_path):
    x = sp.Symbol("x")
    act = L.Activation.from_sympy("cube_tanh", sp.tanh(x) ** 3, x)
    model = Sequential([L.Dense(3, 4), act, L.Dense(4, 2)], seed=0)
    path = tmp_path / "m.npz"
    model.save(path)
    from symprop.specs import ElementwiseSpec
    wrong = ElementwiseSpec("cube_tanh", sp.tanh(x) ** 5, x)
    with pytest.raises(ValueError, match="cube_tanh.*not the one the model was saved with"):
        Sequential.load(path, custom_objects={"cube_tanh": wrong})
    assert Sequential.load(path, custom_objects={"cube_tanh": act}).layers[1] is act
    assert Sequential.load(path, custom_objects={"cube_tanh": act.spec}).layers[1].spec == act.spec


@pytest.mark.parametrize("expr, syms, match", [
    (z ** 2 + sp.Symbol("c") * t, (z, t), r"unbound symbol\(s\) \['c'\]"),
    (t ** 2, (z, t), "does not depend on the prediction z"),
    (z - t, (z, z), "different symbols"),
    (z - t, ("z", t), "must be a sympy.Symbol"),
])
def test_bad_specs_refused_by_name(expr, syms, match):
    with pytest.raises(SpecError, match=match):
        losses.from_sympy("bad_loss", expr, *syms)


def test_builtin_name_refused():
    with pytest.raises(SpecError, match="built-in"):
        losses.from_sympy("mse", (z - t) ** 2, z, t)


def test_unknown_loss_name_points_to_from_sympy():
    with pytest.raises(ValueError, match="from_sympy"):
        Sequential([L.Dense(2, 2)], loss="hubr")
