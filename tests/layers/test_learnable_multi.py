"""A learnable elementwise spec from user code with several learnable parameters, each shared
or one per channel, and a fixed parameter beside them: y = a·tanh(b·x) + c·x. Every pass
(forward, input and parameter pullbacks, JVP, R-op), the HVP, the exact and Gauss–Newton
Hessian diagonals against PyTorch autograd in float64; float32; training; checkpoints; refusals.

One spec for the whole file (compiled once into the cache, as docs/api.md's example is)."""
import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from symprop import Sequential, layers as L, optimizers as O
from symprop.specs import ElementwiseSpec
from support.numeric import rel_err
from support.torch_oracles import check_hvp_against_torch, flatten_torch

#: the spec's derivation and compile take ~40 s on a cold cache: the file runs with the slow
#: tests (CI runs both sets); tests/layers/test_user_layers.py keeps one learnable spec in the default set
pytestmark = pytest.mark.slow

xs, a, b, c = sp.symbols("x a b c")
SPEC = ElementwiseSpec("scaled_tanh", a * sp.tanh(b * xs) + c * xs, xs, (("a", 1.0), ("b", 0.5), ("c", 0.0)),
                       doc="a·tanh(b·x) + c·x, a and b learnable", learnable=("a", "b"))
C = 3

#: num_parameters per case: both shared, both per channel, one of each
SHARING = {"shared": 1, "channels": C, "mixed": {"a": C}}


def _per_channel(p, t):
    """A (1,)- or (C,)-parameter broadcast against t (N, C, ...), as PyTorch's PReLU does."""
    return p.reshape((1, -1) + (1,) * (t.ndim - 2)) if p.numel() > 1 else p


def torch_act(t, pa, pb, cval):
    return _per_channel(pa, t) * torch.tanh(_per_channel(pb, t) * t) + cval * t


def _layer(sharing, cval, rng, shape, dtype="float64"):
    layer = L.from_spec(SPEC, num_parameters=SHARING[sharing], init={"b": 0.8}, c=cval)
    layer.build(shape[1:], dtype, rng)
    for p in layer.parameters():   # away from the init, and different per channel
        p[:] = rng.uniform(0.4, 1.6, p.shape)
    return layer


@pytest.mark.parametrize("sharing", sorted(SHARING))
@pytest.mark.parametrize("shape,seed", [((7, C), 0), ((4, C, 3, 5), 1), ((2, C, 6), 2)])
def test_layer_passes_equal_torch(sharing, shape, seed):
    """forward, vjp (input and parameters), jvp and rvjp of the layer against torch.func."""
    rng = np.random.default_rng(seed)
    layer = _layer(sharing, 0.3, rng, shape)
    pa, pb = layer.parameters()
    if sharing == "mixed":
        assert pa.shape == (C,) and pb.shape == (1,)
    X, G = rng.normal(size=shape) * 2, rng.normal(size=shape)
    Rx, Rg = rng.normal(size=shape), rng.normal(size=shape)
    Rp = [rng.normal(size=p.shape) for p in (pa, pb)]

    T = lambda v: torch.tensor(v)   # noqa: E731
    f = lambda x, ta, tb: torch_act(x, ta, tb, 0.3)   # noqa: E731

    def pullback(x, ta, tb, g):
        return torch.func.vjp(f, x, ta, tb)[1](g)

    y, rec = layer.forward(X)
    assert rel_err(y, f(T(X), T(pa), T(pb)).numpy()) < 1e-13
    gx, (ga, gb) = layer.vjp(rec, G)
    tgx, tga, tgb = pullback(T(X), T(pa), T(pb), T(G))
    assert rel_err(gx, tgx.numpy()) < 1e-12
    assert ga.shape == pa.shape and gb.shape == pb.shape
    assert rel_err(ga, tga.numpy()) < 1e-12 and rel_err(gb, tgb.numpy()) < 1e-12
    Ry = layer.jvp(rec, Rx, Rp)
    _, tRy = torch.func.jvp(f, (T(X), T(pa), T(pb)), (T(Rx), T(Rp[0]), T(Rp[1])))
    assert rel_err(Ry, tRy.numpy()) < 1e-12
    Rgx, (Rga, Rgb) = layer.rvjp(rec, G, Rg, Rx, Rp)
    _, (tRgx, tRga, tRgb) = torch.func.jvp(pullback, (T(X), T(pa), T(pb), T(G)),
                                          (T(Rx), T(Rp[0]), T(Rp[1]), T(Rg)))
    for mine, theirs in ((Rgx, tRgx), (Rga, tRga), (Rgb, tRgb)):
        assert rel_err(mine, theirs.numpy()) < 1e-12


def _model(kind, sharing, seed, dtype="float64"):
    act = L.from_spec(SPEC, num_parameters=SHARING[sharing], init={"a": 1.2, "b": 0.7}, c=0.1)
    if kind == "dense":
        layers = [L.Dense(4, C), act, L.Dense(C, 3)]
    else:
        layers = [L.Conv2D(2, C, 3, padding=1), act, L.Flatten(), L.Dense(C * 9, 3)]
    return Sequential(layers, dtype=dtype, seed=seed)


def _torch_loss(kind, X, y):
    def loss(pt):
        return F.cross_entropy(_torch_logits(kind, X, pt), torch.tensor(y))
    return loss


def _torch_logits(kind, X, pt):
    W1, b1, pa, pb, W2, b2 = pt
    pre = F.linear(torch.tensor(X), W1, b1) if kind == "dense" else F.conv2d(torch.tensor(X), W1, b1, padding=1)
    return F.linear(torch_act(pre, pa, pb, 0.1).reshape(X.shape[0], -1), W2, b2)


def _data(kind, rng, n=6):
    X = rng.normal(size=(n, 4) if kind == "dense" else (n, 2, 3, 3)) * 1.5
    return X, rng.integers(0, 3, n)


@pytest.mark.parametrize("sharing", sorted(SHARING))
@pytest.mark.parametrize("kind,seed", [("dense", 3), ("conv", 4)])
def test_model_gradient_hvp_and_diagonals_equal_torch(kind, sharing, seed):
    """Loss, gradient and HVP (torch double backward); the exact Hessian diagonal (torch's full
    Hessian) and the Gauss–Newton diagonal (Σ_n J_nᵀ H_n J_n from torch's Jacobian)."""
    rng = np.random.default_rng(seed)
    model = _model(kind, sharing, seed)
    X, y = _data(kind, rng)
    model.forward(X)   # builds the layers
    params = model.parameters()
    assert len(params) == 6
    params[2][:] = rng.uniform(0.5, 1.5, params[2].shape)
    params[3][:] = rng.uniform(0.3, 1.2, params[3].shape)
    v = [rng.normal(size=p.shape) for p in params]
    loss_of = _torch_loss(kind, X, y)
    pt = check_hvp_against_torch(model, X, y, v, loss_of)
    flat, unflatten = flatten_torch(pt)
    H = torch.autograd.functional.hessian(lambda th: loss_of(unflatten(th)), flat).numpy()
    exact = np.concatenate([d.reshape(-1) for d in model.hessian_diagonal(X, y, "exact")])
    assert rel_err(exact, np.diag(H)) < 1e-9

    def logits(th):
        return _torch_logits(kind, X, unflatten(th))
    J = torch.autograd.functional.jacobian(logits, flat).numpy()            # (N, K, P)
    p = torch.softmax(logits(flat), 1).numpy()
    Hz = (np.einsum("nk,kl->nkl", p, np.eye(3)) - np.einsum("nk,nl->nkl", p, p)) / len(y)
    gn_torch = np.einsum("nkp,nkl,nlp->p", J, Hz, J)
    gn = np.concatenate([d.reshape(-1) for d in model.hessian_diagonal(X, y, "gauss_newton")])
    assert rel_err(gn, gn_torch) < 1e-9


@pytest.mark.parametrize("sharing", sorted(SHARING))
def test_becker_lecun_terms_are_exact_at_the_output(sharing):
    """At the output under the MSE loss the loss Hessian is diagonal, so the Becker–LeCun rule
    for the activation's parameters, Σ (∂f/∂a)²·h + ∂²f/∂a²·ḡ, is their exact Hessian diagonal."""
    rng = np.random.default_rng(7)
    act = L.from_spec(SPEC, num_parameters=SHARING[sharing], c=0.1)
    model = Sequential([L.Dense(4, C), act], loss="mse", dtype="float64", seed=2)
    X, T = rng.normal(size=(5, 4)) * 1.5, rng.normal(size=(5, C))
    model.forward(X)
    for p in act.parameters():
        p[:] = rng.uniform(0.5, 1.5, p.shape)
    pt = [torch.tensor(p) for p in model.parameters()]

    def loss_of(pa, pb):
        return F.mse_loss(torch_act(F.linear(torch.tensor(X), pt[0], pt[1]), pa, pb, 0.1), torch.tensor(T))
    H = torch.autograd.functional.hessian(loss_of, (pt[2], pt[3]))
    bl = model.hessian_diagonal(X, T, "becker_lecun")
    for k in range(2):
        assert rel_err(bl[2 + k], torch.diagonal(H[k][k]).numpy()) < 1e-10


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_float32_matches_float64(kind):
    rng = np.random.default_rng(5)
    m64 = _model(kind, "mixed", 0)
    m32 = _model(kind, "mixed", 0, dtype="float32")
    X, y = _data(kind, rng)
    m64.forward(X), m32.forward(X.astype(np.float32))
    for p32, p64 in zip(m32.parameters(), m64.parameters()):
        p64[:] = rng.normal(size=p64.shape) * 0.5 + (1.0 if p64.ndim == 1 and p64.size <= C else 0.0)
        p32[:] = p64
    l64, g64 = m64.loss_and_grad(X, y)
    l32, g32 = m32.loss_and_grad(X.astype(np.float32), y)
    assert all(g.dtype == np.float32 for g in g32)
    assert abs(l32 - l64) < 1e-5 * max(1, abs(l64))
    assert max(rel_err(a32, a64) for a32, a64 in zip(g32, g64)) < 1e-4


def test_training_reduces_the_loss_and_moves_both_parameters():
    from symprop.runtime.data import load_digits
    (X, y), _ = load_digits()
    X, y = X[:400], y[:400]
    act = L.from_spec(SPEC, num_parameters={"a": 16}, c=0.05)
    model = Sequential([L.Dense(64, 16), act, L.Dense(16, 10)], seed=0)
    before = model.evaluate(X, y)["loss"]
    model.fit(X, y, epochs=5, batch_size=32, optimizer=O.AdamW(lr=0.01, weight_decay=0.0), verbose=0)
    after = model.evaluate(X, y)["loss"]
    assert after < 0.5 * before
    pa, pb = act.parameters()
    assert pa.shape == (16,) and pb.shape == (1,)
    assert not np.allclose(pa, 1.0) and not np.allclose(pb, 0.5)   # the spec's values moved


def test_checkpoint_round_trip_with_custom_objects_and_hash_check(tmp_path):
    rng = np.random.default_rng(6)
    model = _model("conv", "mixed", 1)
    X, y = _data("conv", rng)
    model.forward(X)
    model.parameters()[2][:] = rng.uniform(0.5, 1.5, C)
    path = tmp_path / "m.npz"
    model.save(path)
    with pytest.raises(ValueError, match=r"custom_objects=.*scaled_tanh"):
        Sequential.load(path)
    back = Sequential.load(path, custom_objects={"scaled_tanh": SPEC})
    act = back.layers[1]
    assert act.counts == {"a": C, "b": 1} and act.params == {"c": 0.1} and act.inits == {"a": 1.2, "b": 0.7}
    for p, q in zip(back.parameters(), model.parameters()):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    other = ElementwiseSpec("scaled_tanh", a * sp.tanh(b * xs) + c * xs, xs, (("a", 1.0), ("b", 0.5), ("c", 0.0)),
                            learnable=("a",))   # same name, another spec: another hash
    with pytest.raises(ValueError, match="not the one the model was saved with"):
        Sequential.load(path, custom_objects={"scaled_tanh": other})


def test_refusals_name_the_problem():
    from symprop.derive.elementwise import SpecError
    with pytest.raises(TypeError, match=r"init for unknown parameter\(s\) \['z'\].*\['a', 'b'\]"):
        L.from_spec(SPEC, init={"z": 1.0})
    with pytest.raises(ValueError, match=r"init must be \{name: value\}"):
        L.from_spec(SPEC, init=0.5)
    with pytest.raises(ValueError, match="init of b must be a finite number"):
        L.from_spec(SPEC, init={"b": float("nan")})
    with pytest.raises(ValueError, match="num_parameters of a must be a positive integer, got 0"):
        L.from_spec(SPEC, num_parameters=0)
    with pytest.raises(TypeError, match=r"num_parameters for unknown parameter\(s\) \['c'\]"):
        L.from_spec(SPEC, num_parameters={"c": 3})
    with pytest.raises(ValueError, match="must agree on the channel count"):
        L.from_spec(SPEC, num_parameters={"a": 3, "b": 4})
    with pytest.raises(ValueError, match=r"scaled_tanh.*5 parameters need 5 channels.*\(6,\)"):
        Sequential([L.Dense(4, 6), L.from_spec(SPEC, num_parameters=5)]).forward(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"\['b'\] are learnable; give their first values as init"):
        L.from_spec(SPEC, b=0.3)
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['d'\].*fixed parameters \['c'\]"):
        L.from_spec(SPEC, d=1.0)
    with pytest.raises(ValueError, match="c must be a finite number"):
        L.from_spec(SPEC, c=float("inf"))
    with pytest.raises(SpecError, match=r"learnable \['k'\] must be among its params"):
        ElementwiseSpec("bad", a * xs, xs, (("a", 1.0),), learnable=("a", "k"))
    with pytest.raises(SpecError, match=r"names \['w'\] are reserved in a spec with learnable parameters"):
        ElementwiseSpec("bad", a * xs + sp.Symbol("w"), xs, (("a", 1.0), ("w", 0.0)), learnable=("a",))
    with pytest.raises(SpecError, match="names a parameter twice"):
        ElementwiseSpec("bad", a * xs, xs, (("a", 1.0),), learnable=("a", "a"))
