"""Layers from specs written in user code (``L.from_spec``): an affine layer and a bias-free
linear layer (contraction specs), LayerNorm, RMSNorm and a per-group normalisation (composite
specs) — loss, gradient, HVP and Hessian diagonals against PyTorch in float64, training,
checkpoints with the spec's hash, and clear refusals."""
import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from support.numeric import rel_err
from symprop import Sequential, layers as L
from symprop.specs import CompositeSpec, ContractionSpec, SpecError, Stage

n, o, i = sp.symbols("n o i", integer=True)
N, O, I = sp.symbols("N O I", integer=True, positive=True)
x, s, b, W = (sp.IndexedBase(a) for a in ("x", "s", "b", "W"))
AFFINE = ContractionSpec("affine", "y", (n, o), x[n, o] * s[o] + b[o], inputs={"x": (n, o)},
                         params={"s": (o,), "b": (o,)}, extents={n: N, o: O}, doc="a learnable scale and shift")
LINEAR = ContractionSpec("linear_nobias", "y", (n, o), sp.Sum(x[n, i] * W[o, i], (i, 0, I - 1)),
                         inputs={"x": (n, i)}, params={"W": (o, i)}, extents={n: N, o: O, i: I})
# two terms in the input pullback (g·s + g·b): no squared form, so no Becker-LeCun/GN roles
TWO_TERM = ContractionSpec("scale_twice", "y", (n, o), x[n, o] * s[o] + x[n, o] * b[o], inputs={"x": (n, o)},
                           params={"s": (o,), "b": (o,)}, extents={n: N, o: O})

X_, mu, var, rstd, Y_, ms, gam, bet = sp.symbols("x mu var rstd y ms gamma beta")
eps = sp.Symbol("eps")
NORMALIZE = CompositeSpec("normalize", X_, (Stage(mu, "mean", X_), Stage(var, "mean", (X_ - mu) ** 2),
                                            Stage(rstd, "map", 1 / sp.sqrt(var + eps)),
                                            Stage(Y_, "map", (X_ - mu) * rstd)),
                          saved=(Y_, rstd), scalars=(("eps", 1e-5),), doc="zero mean, unit variance per group")
RMS = CompositeSpec("rms_normalize", X_, (Stage(ms, "mean", X_ ** 2), Stage(rstd, "map", 1 / sp.sqrt(ms + eps)),
                                          Stage(Y_, "map", X_ * rstd)),
                    saved=(Y_, rstd), scalars=(("eps", 1e-6),))
GROUP_AFFINE = CompositeSpec("group_normalize", X_, (Stage(mu, "mean", X_), Stage(var, "mean", (X_ - mu) ** 2),
                                                     Stage(rstd, "map", 1 / sp.sqrt(var + eps)),
                                                     Stage(Y_, "map", gam * (X_ - mu) * rstd + bet)),
                             saved=(Y_, rstd), params=(gam, bet), scalars=(("eps", 1e-5),))


def _torch_params(model):
    return [torch.tensor(p, requires_grad=True) for p in model.parameters()]


def _check_against(model, torch_loss_of, X, y, rng, diagonals=("gauss_newton", "exact")):
    pt = _torch_params(model)
    lt = torch_loss_of(pt)
    gt = torch.autograd.grad(lt, pt, create_graph=True)
    v = [rng.normal(size=p.shape) for p in model.parameters()]
    hvt = torch.autograd.grad(sum((g * torch.tensor(a)).sum() for g, a in zip(gt, v)), pt)
    loss, grads, hv = model.hvp(X, y, v, return_grad=True)
    assert abs(loss - lt.item()) < 1e-12
    assert max(rel_err(a, b.detach().numpy()) for a, b in zip(grads, gt)) < 1e-9
    assert max(rel_err(a, b.numpy()) for a, b in zip(hv, hvt)) < 1e-9
    flat = torch.cat([p.reshape(-1) for p in pt]).detach()

    def unflat(th):
        out, k = [], 0
        for p in pt:
            out.append(th[k:k + p.numel()].reshape(p.shape))
            k += p.numel()
        return out
    H = torch.autograd.functional.hessian(lambda th: torch_loss_of(unflat(th)), flat).numpy()
    if "exact" in diagonals:
        d = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="exact")])
        assert rel_err(d, np.diag(H)) < 1e-9
    if "gauss_newton" in diagonals:   # diag(Jᵀ H_out J) from torch's Jacobian and output Hessian
        out = torch_loss_of.outputs(unflat(flat)).detach()
        J = torch.autograd.functional.jacobian(lambda th: torch_loss_of.outputs(unflat(th)).reshape(-1), flat).numpy()
        Ho = torch.autograd.functional.hessian(
            lambda o: F.cross_entropy(o.reshape(out.shape), torch.tensor(y)), out.reshape(-1)).numpy()
        ggn = np.einsum("ip,ij,jp->p", J, Ho, J)
        d = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="gauss_newton")])
        assert rel_err(d, ggn) < 1e-9
    return pt


def _mlp_torch(X, y, pieces):
    """A torch loss over parameters: ``pieces`` (callables consuming params) in order, then the
    cross-entropy; ``.outputs(params)`` gives the network's outputs (for Gauss-Newton)."""
    def outputs(pt):
        it = iter(pt)
        h = torch.tensor(X)
        for piece in pieces:
            h = piece(h, it)
        return h

    def loss_of(pt):
        return F.cross_entropy(outputs(pt), torch.tensor(y))
    loss_of.outputs = outputs
    return loss_of


def dense(h, it):
    return F.linear(h, next(it), next(it))


@pytest.mark.parametrize("seed", [0, 1])
def test_affine_layer_equals_pytorch(seed):
    rng = np.random.default_rng(seed)
    nb, d, k = int(rng.integers(3, 8)), int(rng.integers(2, 6)), 3
    aff = L.from_spec(AFFINE, init={"s": lambda shape, r: r.normal(size=shape), "b": 0.5})
    model = Sequential([L.Dense(d, 5), aff, L.Tanh(), L.Dense(5, k)], dtype="float64", seed=seed)
    X, y = rng.normal(size=(nb, d)), rng.integers(0, k, nb)
    _check_against(model, _mlp_torch(X, y, [dense, lambda h, it: torch.tanh(h * next(it) + next(it)), dense]),
                   X, y, rng)
    assert aff.arrays["b"].tolist() == [0.5] * 5


@pytest.mark.slow   # compiles a spec of its own (~5 s cold); the README's specs cover contractions by default
def test_bias_free_linear_from_spec(rng):
    lin = L.from_spec(LINEAR, O=4)   # I comes from the input; W initialised U(±1/sqrt(I))
    model = Sequential([lin, L.Tanh(), L.Dense(4, 3)], dtype="float64", seed=0, input_shape=(5,))
    X, y = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)
    assert model.parameters()[0].shape == (4, 5) and np.abs(model.parameters()[0]).max() <= 1 / np.sqrt(5)
    _check_against(model, _mlp_torch(X, y, [lambda h, it: torch.tanh(h @ next(it).T), dense]), X, y, rng)


def test_scaled_dense_equals_pytorch(rng):
    """y[n,o] = s[o]·Σ_i x[n,i]·W[o,i] (a weight-normalised dense layer's form): a product of
    three arrays with a reduction, lowered to one loop nest per role."""
    spec = ContractionSpec("scaled_dense", "y", (n, o), sp.Sum(x[n, i] * W[o, i] * s[o], (i, 0, I - 1)),
                           inputs={"x": (n, i)}, params={"W": (o, i), "s": (o,)}, extents={n: N, o: O, i: I})
    layer = L.from_spec(spec, O=4, init={"s": lambda shape, r: r.normal(size=shape)})
    model = Sequential([layer, L.Tanh(), L.Dense(4, 3)], dtype="float64", seed=0, input_shape=(5,))
    X, y = rng.normal(size=(6, 5)), rng.integers(0, 3, 6)
    _check_against(model, _mlp_torch(X, y, [lambda h, it: torch.tanh((h @ next(it).T) * next(it)), dense]),
                   X, y, rng)


def test_layernorm_from_two_specs_equals_pytorch(rng):
    """LayerNorm = a per-sample normalisation (composite, groups over axis 1) + an affine layer."""
    ln = L.from_spec(NORMALIZE, axes=(1,))
    aff = L.from_spec(AFFINE, init={"s": lambda shape, r: 1 + 0.3 * r.normal(size=shape), "b": 0.1})
    model = Sequential([L.Dense(4, 6), ln, aff, L.Tanh(), L.Dense(6, 3)], dtype="float64", seed=0)
    X, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
    _check_against(model, _mlp_torch(X, y, [
        dense, lambda h, it: torch.tanh(F.layer_norm(h, (6,), next(it), next(it), eps=1e-5)), dense]),
        X, y, rng, diagonals=("gauss_newton",))
    with pytest.raises(ValueError, match="exact.*normalize"):
        model.hessian_diagonal(X, y, method="exact")


def test_rmsnorm_equals_pytorch(rng):
    rms = L.from_spec(RMS, axes=(1,))
    model = Sequential([L.Dense(4, 6), rms, L.Tanh(), L.Dense(6, 3)], dtype="float64", seed=1)
    X, y = rng.normal(size=(5, 4)), rng.integers(0, 3, 5)
    _check_against(model, _mlp_torch(X, y, [dense, lambda h, it: torch.tanh(F.rms_norm(h, (6,), eps=1e-6)), dense]),
                   X, y, rng, diagonals=("gauss_newton",))


def test_group_normalisation_with_group_parameters(rng):
    """Groups of 3 features (input (N, 2, 3), axes=(2,)): gamma, beta one per group, shared by
    the samples (the kernels see one row per (sample, group); the pullbacks are summed)."""
    gnorm = L.from_spec(GROUP_AFFINE, axes=(2,), init={"gamma": 1.5, "beta": -0.2}, eps=1e-3)
    model = Sequential([gnorm, L.Flatten(), L.Tanh(), L.Dense(6, 3)], dtype="float64", seed=0,
                       input_shape=(2, 3))
    assert [p.shape for p in model.parameters()[:2]] == [(2,), (2,)]
    X, y = rng.normal(size=(4, 2, 3)), rng.integers(0, 3, 4)

    def gn(h, it):
        g, bb = next(it), next(it)
        m = h.mean(dim=2, keepdim=True)
        v = ((h - m) ** 2).mean(dim=2, keepdim=True)
        return torch.tanh((g[None, :, None] * (h - m) / torch.sqrt(v + 1e-3) + bb[None, :, None]).reshape(len(h), -1))
    _check_against(model, _mlp_torch(X, y, [gn, dense]), X, y, rng, diagonals=("gauss_newton", "exact"))


@pytest.mark.slow   # compiles its own user spec (~9 s cold): the default suite's 5 minutes
def test_two_terms_at_one_position_are_squared_together(rng):
    """y = x·s + x·b: the Jacobian entry is s + b, so Becker-LeCun squares (s + b), not s² + b²:
    the same diagonal as an affine layer with scale s + b."""
    twice = L.from_spec(TWO_TERM, init={"s": lambda shape, r: r.normal(size=shape), "b": 0.5})
    Xd, yd = rng.normal(size=(5, 3)), rng.integers(0, 2, 5)
    m1 = Sequential([L.Dense(3, 4), twice, L.Tanh(), L.Dense(4, 2)], dtype="float64", seed=0)
    aff = L.from_spec(AFFINE, init={"s": twice.arrays["s"] + twice.arrays["b"], "b": 0.0})
    m2 = Sequential([L.Dense(3, 4), aff, L.Tanh(), L.Dense(4, 2)], dtype="float64", seed=0)
    for k in (0, 1, 4, 5):
        m2.parameters()[k][...] = m1.parameters()[k]
    _check_against(m1, _mlp_torch(Xd, yd, [dense, lambda h, it: torch.tanh(h * next(it) + h * next(it)), dense]),
                   Xd, yd, rng)
    d1, d2 = (m.hessian_diagonal(Xd, yd, method="becker_lecun") for m in (m1, m2))
    for k in (0, 1, 4, 5):
        np.testing.assert_allclose(d1[k], d2[k], rtol=1e-12)


@pytest.mark.slow   # compiles its own user spec (~9 s cold): the default suite's 5 minutes
def test_pullback_without_squared_form_refuses_only_becker_lecun(rng):
    """y[n,o] = x[n,o]·Σ_j x[n,j]: its input Jacobian is not diagonal, so there is no
    Becker-LeCun role, and it is not linear in x, so neither Becker-LeCun nor the exact diagonal
    (which would need its second derivative) is offered; HVPs, Gauss-Newton and Hutchinson are."""
    j = sp.Symbol("j", integer=True)
    cross = ContractionSpec("times_row_sum", "y", (n, o), sp.Sum(x[n, o] * x[n, j], (j, 0, O - 1)),
                            inputs={"x": (n, o)}, params={}, extents={n: N, o: O, j: O})
    layer = L.from_spec(cross)
    assert not layer.kernels.has("bl:x") and "sum beside other terms" in layer.derived.no_curvature
    model = Sequential([L.Dense(3, 4), layer, L.Tanh(), L.Dense(4, 2)], dtype="float64", seed=0)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, 5)
    _check_against(model, _mlp_torch(X, y, [dense, lambda h, it: torch.tanh(h * h.sum(dim=1, keepdim=True)), dense]),
                   X, y, rng, diagonals=("gauss_newton",))
    with pytest.raises(ValueError, match="becker_lecun.*times_row_sum.*not linear in \\['x'\\]"):
        model.hessian_diagonal(X, y, method="becker_lecun")
    with pytest.raises(ValueError, match="exact.*times_row_sum.*not linear in"):   # no residual role
        model.hessian_diagonal(X, y, method="exact")
    assert all(np.isfinite(a).all() for a in model.hessian_diagonal(X, y, method="hutchinson", samples=4))


def test_trains_saves_and_loads(tmp_path):
    from symprop.runtime.data import load_digits
    (X, y), (Xt, yt) = load_digits()
    model = Sequential([L.Dense(64, 32), L.from_spec(NORMALIZE, axes=(1,)),
                        L.from_spec(AFFINE, init={"s": 1.0, "b": 0.0}), L.ReLU(), L.Dense(32, 10)], seed=0)
    model.fit(X, y, epochs=5, optimizer="adam", verbose=0)
    assert model.evaluate(Xt, yt)["accuracy"] > 0.9
    path = tmp_path / "m.npz"
    model.save(path)
    with pytest.raises(ValueError, match="custom_objects=.*normalize"):
        Sequential.load(path)
    other = ContractionSpec("affine", "y", (n, o), x[n, o] * s[o] * 2 + b[o], inputs={"x": (n, o)},
                            params={"s": (o,), "b": (o,)}, extents={n: N, o: O})
    with pytest.raises(ValueError, match="'affine'.*not the one the model was saved with"):
        Sequential.load(path, custom_objects={"normalize": NORMALIZE, "affine": other})
    back = Sequential.load(path, custom_objects={"normalize": NORMALIZE, "affine": AFFINE})
    np.testing.assert_array_equal(back.predict(Xt), model.predict(Xt))


def test_refusals_name_the_problem(rng):
    s2 = ContractionSpec("exp_scale", "y", (n, o), sp.exp(x[n, o]) * s[o], inputs={"x": (n, o)},
                         params={"s": (o,)}, extents={n: N, o: O})
    with pytest.raises(SpecError, match="exp_scale.*non-constant coefficient exp"):
        L.from_spec(s2)
    with pytest.raises(TypeError, match="unknown size.*'Q'"):
        L.from_spec(AFFINE, Q=3)
    with pytest.raises(TypeError, match="init for unknown parameter.*'w'"):
        L.from_spec(AFFINE, init={"w": 1.0})
    with pytest.raises(TypeError, match="needs axes"):
        L.from_spec(NORMALIZE)
    with pytest.raises(ValueError, match="axis 0 is the batch"):
        Sequential([L.from_spec(NORMALIZE, axes=(0, 1))], input_shape=(4,))
    with pytest.raises(ValueError, match="output extent.*O"):
        Sequential([L.from_spec(LINEAR)], input_shape=(4,))
    with pytest.raises(TypeError, match="ElementwiseSpec, ContractionSpec or CompositeSpec"):
        L.from_spec("relu")


def test_model_latex_documents_user_layers_and_loss(tmp_path):
    from symprop import losses
    zz, tt = sp.symbols("z t")
    huber = losses.from_sympy("huber", sp.Piecewise(((zz - tt) ** 2 / 2, sp.Abs(zz - tt) <= 1),
                                                    (sp.Abs(zz - tt) - sp.S.Half, True)), zz, tt)
    model = Sequential([L.Dense(4, 6), L.from_spec(NORMALIZE, axes=(1,)), L.from_spec(AFFINE, init={"s": 1, "b": 0}),
                        L.ReLU(), L.Dense(6, 1)], loss=huber)
    names, extra = model.specs()
    assert names == ["dense", "relu"] and [s.name for s in extra] == ["normalize", "affine", "huber"]
    text = model.latex(tmp_path / "m.tex")
    assert (tmp_path / "m.tex").read_text() == text
    for needle in ("A learnable scale and shift", "Zero mean, unit variance per group",
                   "Huber (a loss written by the user)", "huber\\_hvp", "affine\\_bl\\_x"):
        assert needle in text, needle
    assert "Sigmoid" not in text.split("\\section{Losses}")[0]   # only the model's activations


def test_learnable_elementwise_spec_from_user_code(rng, tmp_path):
    """A learnable activation written by the user: y = x·tanh(a·x)... here a scaled softsign
    x / (1 + |a·x|) with a learnable per channel, against PyTorch; and a checkpoint."""
    from symprop.specs import ElementwiseSpec
    xs, a = sp.symbols("x a")
    spec = ElementwiseSpec("scaled_softsign", xs / (1 + sp.Abs(a * xs)), xs, (("a", 0.5),), learnable=("a",))
    act = L.from_spec(spec, num_parameters=5, init=0.7)
    model = Sequential([L.Dense(3, 5), act, L.Dense(5, 2)], dtype="float64", seed=0)
    model.parameters()[2][:] = rng.uniform(0.2, 1.5, 5)
    X, y = rng.normal(size=(6, 3)), rng.integers(0, 2, 6)
    _check_against(model, _mlp_torch(X, y, [dense, lambda h, it: (lambda av: h / (1 + torch.abs(av * h)))(next(it)),
                                            dense]), X, y, rng, diagonals=())
    path = tmp_path / "m.npz"
    model.save(path)
    with pytest.raises(ValueError, match="custom_objects=.*scaled_softsign"):
        Sequential.load(path)
    back = Sequential.load(path, custom_objects={"scaled_softsign": spec})
    np.testing.assert_array_equal(back.parameters()[2], model.parameters()[2])
    with pytest.raises(TypeError, match=r"\['a'\] are learnable; give their first values as init"):
        L.from_spec(spec, a=0.3)


def test_abs_in_a_user_activation(rng):
    """|x| in a spec differentiates as a sign (SymPy alone would give complex parts)."""
    xs = sp.Symbol("x")
    soft = L.Activation.from_sympy("softsign_abs", xs / (1 + sp.Abs(xs)), xs)
    model = Sequential([L.Dense(3, 4), soft, L.Dense(4, 2)], dtype="float64", seed=0)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, 5)
    _check_against(model, _mlp_torch(X, y, [dense, lambda h, it: F.softsign(h), dense]), X, y, rng, diagonals=())


def test_spec_checks_refuse_reads_past_the_end_and_reserved_names():
    p = sp.Symbol("p", integer=True)
    P = sp.Symbol("P", integer=True, positive=True)
    past_end = ContractionSpec("past_end", "y", (n, o), x[n, o] * s[o], inputs={"x": (n, o)}, params={"s": (p,)},
                               extents={n: N, o: O, p: P})
    with pytest.raises(SpecError, match=r"past_end.*s\[o\] indexes axis p of s .*read past the end"):
        L.from_spec(past_end, P=2)
    g = sp.IndexedBase("g")
    with pytest.raises(SpecError, match="'g' is reserved"):
        L.from_spec(ContractionSpec("named_g", "y", (n, o), x[n, o] * g[o], inputs={"x": (n, o)},
                                    params={"g": (o,)}, extents={n: N, o: O}), init={"g": 1.0})
    with pytest.raises(SpecError, match="indexed by the batch index n"):
        L.from_spec(ContractionSpec("per_sample", "y", (n, o), x[n, o] * b[n], inputs={"x": (n, o)},
                                    params={"b": (n,)}, extents={n: N, o: O}), init={"b": 1.0})
    with pytest.raises(SpecError, match="runs over"):
        L.from_spec(ContractionSpec("short_sum", "y", (n, o), sp.Sum(x[n, i] * W[o, i], (i, 0, I - 2)),
                                    inputs={"x": (n, i)}, params={"W": (o, i)}, extents={n: N, o: O, i: I}), O=2)
    with pytest.raises(TypeError, match="give init=.*'s'"):
        Sequential([L.from_spec(AFFINE)], input_shape=(3,))


@pytest.mark.slow   # compiles its own user spec (~9 s cold): the default suite's 5 minutes
def test_spec_hash_covers_output_indices():
    p = sp.Symbol("p", integer=True)
    a = ContractionSpec("perm", "y", (n, o, p), x[n, o, p], inputs={"x": (n, o, p)}, params={}, extents={n: N, o: O, p: O})
    b2 = ContractionSpec("perm", "y", (n, p, o), x[n, o, p], inputs={"x": (n, o, p)}, params={}, extents={n: N, o: O, p: O})
    assert a.hash != b2.hash
    X = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)
    la, lb = L.from_spec(a), L.from_spec(b2)
    np.testing.assert_array_equal(Sequential([lb], loss="mse", dtype="float64").predict(X), X.transpose(0, 2, 1))
    np.testing.assert_array_equal(Sequential([la], loss="mse", dtype="float64").predict(X), X)


@pytest.mark.slow   # compiles its own user spec (~9 s cold): the default suite's 5 minutes
def test_becker_lecun_refused_when_two_reads_can_coincide(rng):
    """y[n,o,p] = x[n,o,p] + 2·x[n,p,o]: on o = p the entry is 3, not two entries 1 and 2."""
    p = sp.Symbol("p", integer=True)
    sym = ContractionSpec("plus_transpose", "y", (n, o, p), x[n, o, p] + 2 * x[n, p, o], inputs={"x": (n, o, p)},
                          params={}, extents={n: N, o: O, p: O})
    layer = L.from_spec(sym)
    assert not layer.kernels.has("bl:x") and "may coincide" in layer.derived.no_curvature
    model = Sequential([L.Dense(3, 4), L.from_spec(ContractionSpec("to_square", "y", (n, o, p), x[n, o] * x[n, p],
                                                                   inputs={"x": (n, o)}, params={},
                                                                   extents={n: N, o: O, p: O})),
                        layer, L.Flatten(), L.Dense(16, 2)], dtype="float64", seed=0)
    X, y = rng.normal(size=(3, 3)), rng.integers(0, 2, 3)
    with pytest.raises(ValueError, match="becker_lecun"):
        model.hessian_diagonal(X, y, method="becker_lecun")


@pytest.mark.slow   # compiles a spec of its own (~7 s cold)
def test_squared_parameter_spec_runs_without_its_becker_lecun(rng):
    """x·s²: the Becker-LeCun kernel would need s⁴ (not emitted): it is dropped, the rest works."""
    spec = ContractionSpec("scale_sq", "y", (n, o), x[n, o] * s[o] ** 2, inputs={"x": (n, o)}, params={"s": (o,)},
                           extents={n: N, o: O})
    layer = L.from_spec(spec, init={"s": lambda shape, r: r.normal(size=shape)})
    assert not layer.kernels.has("bl:x")
    model = Sequential([L.Dense(3, 4), layer, L.Tanh(), L.Dense(4, 2)], dtype="float64", seed=0)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, 5)
    _check_against(model, _mlp_torch(X, y, [dense, lambda h, it: torch.tanh(h * next(it) ** 2), dense]), X, y, rng,
                   diagonals=("gauss_newton",))
    with pytest.raises(ValueError, match="exact.*not linear in \\['s'\\]"):
        model.hessian_diagonal(X, y, method="exact")


def test_group_layer_nonlinear_in_its_parameter_refuses_exact(rng):
    gam2 = sp.Symbol("gamma")
    spec = CompositeSpec("exp_scale_norm", X_, (Stage(mu, "mean", X_), Stage(var, "mean", (X_ - mu) ** 2),
                                                Stage(rstd, "map", 1 / sp.sqrt(var + eps)),
                                                Stage(Y_, "map", sp.exp(gam2) * (X_ - mu) * rstd)),
                         saved=(Y_, rstd), params=(gam2,), scalars=(("eps", 1e-5),))
    model = Sequential([L.from_spec(spec, axes=(2,), init={"gamma": 0.3}), L.Flatten(), L.Dense(6, 2)],
                       dtype="float64", seed=0, input_shape=(2, 3))
    X, y = rng.normal(size=(4, 2, 3)), rng.integers(0, 2, 4)
    with pytest.raises(ValueError, match="exact.*not linear in its parameter.*gamma"):
        model.hessian_diagonal(X, y, method="exact")


def test_user_activation_named_like_a_builtin_needs_its_spec(tmp_path):
    xs = sp.Symbol("x")
    cube = L.Activation.from_sympy("tanh", xs ** 3, xs)     # shadows the built-in name
    model = Sequential([L.Dense(2, 3), cube, L.Dense(3, 2)], seed=0)
    model.save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="'tanh' was built from a user spec"):
        Sequential.load(tmp_path / "m.npz")
    back = Sequential.load(tmp_path / "m.npz", custom_objects={"tanh": cube})
    X = np.ones((2, 2), np.float32)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))


def test_float32_user_layers_match_float64(rng):
    ln, aff = L.from_spec(NORMALIZE, axes=(1,)), L.from_spec(AFFINE, init={"s": 1.0, "b": 0.0})
    m64 = Sequential([L.Dense(4, 6), ln, aff, L.Tanh(), L.Dense(6, 3)], dtype="float64", seed=0)
    ln32, aff32 = L.from_spec(NORMALIZE, axes=(1,)), L.from_spec(AFFINE, init={"s": 1.0, "b": 0.0})
    m32 = Sequential([L.Dense(4, 6), ln32, aff32, L.Tanh(), L.Dense(6, 3)], dtype="float32", seed=0)
    for a, b2 in zip(m32.parameters(), m64.parameters()):
        a[...] = b2
    X, y = rng.normal(size=(7, 4)), rng.integers(0, 3, 7)
    l64, g64 = m64.loss_and_grad(X, y)
    l32, g32 = m32.loss_and_grad(X.astype(np.float32), y)
    assert abs(l32 - l64) < 1e-5 * abs(l64)
    assert max(rel_err(a, b2) for a, b2 in zip(g32, g64)) < 1e-4
