"""Taylor-mode sweeps through composite layers — Softmax, LayerNorm, RMSNorm and GroupNorm, run
by their specs' derived ``taylor:K`` roles and pullbacks (``DerivedComposite.taylor``) — against
PyTorch nested autograd in float64: the forward Laplacian, orders 1–4 along coordinates, the
anisotropic (collapsed second-order) sweep, and the parameter gradient of Σ cotangent·derivative.

The oracle writes the normalisations and softmax with primitive ops: PyTorch 2.13's own
``layer_norm`` gives wrong third derivatives (its double backward is not differentiated
correctly: ∂³/∂x0³ of Σ v·layer_norm(x) differs from the same formula written out by 0.3 in a
case of O(1) values), which would fail any order-3 check here."""
import numpy as np
import pytest
import torch

from symprop import layers as L
from symprop.runtime.model import Sequential
from symprop.runtime.taylor import CollapsedJets, CollapsedSecondOrder, InputDerivatives
from support.numeric import rel_err
from support.torch_oracles import nested_input_derivatives as nested

F = 6          # features the composite layer sees
EPS = 1e-5


def _layernorm(h, p):
    mu = h.mean(1, keepdim=True)
    var = ((h - mu) ** 2).mean(1, keepdim=True)
    return (h - mu) / torch.sqrt(var + EPS) * p[0] + p[1]


def _rmsnorm(h, p):
    return h / torch.sqrt((h ** 2).mean(1, keepdim=True) + EPS) * p[0]


def _groupnorm(h, p):   # 2 groups of 3 channels
    g = h.reshape(h.shape[0], 2, F // 2)
    mu = g.mean(2, keepdim=True)
    var = ((g - mu) ** 2).mean(2, keepdim=True)
    return ((g - mu) / torch.sqrt(var + EPS)).reshape(h.shape) * p[0] + p[1]


def _softmax(h, p):
    e = torch.exp(h - h.max(1, keepdim=True).values.detach())
    return e / e.sum(1, keepdim=True)


#: layer, the same function in torch primitives (given its parameters)
NORMS = {
    "softmax": (lambda: L.Softmax(), _softmax),
    "layernorm": (lambda: L.LayerNorm(F, eps=EPS), _layernorm),
    "rmsnorm": (lambda: L.RMSNorm(F, eps=EPS), _rmsnorm),
    "groupnorm": (lambda: L.GroupNorm(2, F, eps=EPS), _groupnorm),
}


def model_and_torch(norm, rng, residual=False):
    """Dense(3, 6) → tanh → the composite layer (inside a residual block when ``residual``) →
    Dense(6, 4) → softplus → Dense(4, 1), random weights, and the same function in torch."""
    make, fn = NORMS[norm]
    mid = L.Residual([make()]) if residual else make()
    model = Sequential([L.Dense(3, F), L.Activation("tanh"), mid, L.Dense(F, 4), L.Activation("softplus"),
                        L.Dense(4, 1)], loss="mse", dtype="float64", seed=5, input_shape=(3,))
    for p in model.parameters():
        p[...] = rng.normal(size=p.shape)
    tp = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    lin, k = torch.nn.functional.linear, len(tp) - 6

    def f(X):
        h = torch.tanh(lin(X, tp[0], tp[1]))
        h = fn(h, tp[2:2 + k]) + (h if residual else 0)
        h = torch.nn.functional.softplus(lin(h, tp[2 + k], tp[3 + k]))
        return lin(h, tp[4 + k], tp[5 + k])[:, 0]
    return model, f, tp


def check(model, f, tp, X, which, rng, tol=1e-10):
    sweep = InputDerivatives(model, which)
    res, tape = sweep.forward(X)
    want = nested(f, X, which)
    for q in which:
        assert rel_err(res[q], want[q].detach().numpy()) < tol, q
    cot = {q: rng.normal(size=np.shape(v)) for q, v in res.items()}
    grads = sweep.backward(tape, cot)
    total = sum((want[q] * torch.tensor(cot[q])).sum() for q in which)
    tgrads = torch.autograd.grad(total, tp, allow_unused=True)
    assert len(grads) == len(tgrads)
    for i, (a, b) in enumerate(zip(grads, tgrads)):
        assert rel_err(a, np.zeros_like(a) if b is None else b.numpy()) < tol, (which, i)


@pytest.mark.parametrize("which", [("u", "grad", "laplacian"), ((0,), (1, 1))])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_composite_layers_match_nested_autograd(norm, which, rng):
    """Orders 1-2 (the built-in composite module's roles): the forward Laplacian and jets."""
    model, f, tp = model_and_torch(norm, rng)
    check(model, f, tp, rng.uniform(-1, 1, (7, 3)), which, rng)


@pytest.mark.slow   # compiles each spec's order-4 Taylor module (~10 s cold each)
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_composite_layers_orders_3_and_4_match_nested_autograd(norm, rng):
    model, f, tp = model_and_torch(norm, rng, residual=norm == "layernorm")
    check(model, f, tp, rng.uniform(-1, 1, (5, 3)), ((2, 2, 2), (0, 0, 0, 0), (1,)), rng)


def test_layernorm_in_a_residual_block_matches_nested_autograd(rng):
    model, f, tp = model_and_torch("layernorm", rng, residual=True)
    check(model, f, tp, rng.uniform(-1, 1, (4, 3)), ("u", "grad", "laplacian"), rng)


def test_anisotropic_sweep_through_layernorm_matches_the_hessian(rng):
    """CollapsedSecondOrder (Σ_ij A_ij ∂²u/∂x_i∂x_j by direction groups) through a LayerNorm:
    each group's collapsed sum against vᵀHv from torch's Hessian, and its parameter gradient."""
    model, f, tp = model_and_torch("layernorm", rng)
    X = rng.uniform(-1, 1, (4, 3))
    groups = [rng.normal(size=(2, 3)), rng.normal(size=(1, 3))]
    sweep = CollapsedSecondOrder(model, groups)
    C, tape = sweep.forward(X)
    tX = torch.tensor(X, requires_grad=True)
    u = f(tX)
    g = torch.autograd.grad(u.sum(), tX, create_graph=True)[0]
    H = torch.stack([torch.autograd.grad(g[:, i].sum(), tX, create_graph=True)[0] for i in range(3)], 1)
    want = [u] + [g @ torch.tensor(v) for V in groups for v in V]
    want += [sum(torch.einsum("i,nij,j->n", torch.tensor(v), H, torch.tensor(v)) for v in V) for V in groups]
    want = torch.stack(want)
    assert rel_err(C, want.detach().numpy()) < 1e-10
    cot = rng.normal(size=C.shape)
    grads = sweep.backward(tape, cot)
    tgrads = torch.autograd.grad((want * torch.tensor(cot)).sum(), tp)
    for a, b in zip(grads, tgrads):
        assert rel_err(a, b.numpy()) < 1e-10


@pytest.mark.slow   # compiles the order-4 Taylor module of rms_scale (shared with the test above)
def test_collapsed_jets_through_a_composite_layer_match_the_plain_jets(rng):
    """The collapsed order-4 sweep through RMSNorm (T = Dy[T] plus the directions' order-4
    coefficients at x_4 = 0, weighted, some weights negative or zero) against the plain jets'
    coefficients combined with the weights, and their parameter gradients."""
    from symprop.runtime.taylor import DirectionalJets
    model, _, _ = model_and_torch("rmsnorm", rng)
    X = rng.uniform(-1, 1, (6, 3))
    W, c, K = rng.normal(size=(3, 3)), np.array([1.5, -0.7, 0.0]), 4
    jets, col = DirectionalJets(model, W, K), CollapsedJets(model, W, K, c)
    (Cj, tj), (Cc, tc) = jets.forward(X), col.forward(X)
    m = len(c)
    top = slice(1 + (K - 1) * m, 1 + K * m)
    assert rel_err(Cc[:-1], Cj[:top.start]) < 1e-12
    assert rel_err(Cc[-1], np.tensordot(c, Cj[top], 1)) < 1e-10
    G = rng.normal(size=Cc.shape)
    Gj = np.concatenate([G[:-1], c[:, None] * G[-1][None]])
    for a, b in zip(col.backward(tc, G), jets.backward(tj, Gj)):
        assert rel_err(a, b) < 1e-10


def float32_twin(norm, rng):
    """(the float64 model of :func:`model_and_torch`, the same network in float32)."""
    model, _, _ = model_and_torch(norm, rng)
    make, _ = NORMS[norm]
    model32 = Sequential([L.Dense(3, F), L.Activation("tanh"), make(), L.Dense(F, 4), L.Activation("softplus"),
                          L.Dense(4, 1)], loss="mse", dtype="float32", input_shape=(3,))
    for p, q in zip(model32.parameters(), model.parameters()):
        p[...] = q
    return model, model32


def test_float32_sweep_through_softmax_and_layernorm_agrees_with_float64(rng):
    """The float32 kernels (group sums in double) against the float64 sweep."""
    for norm in ("softmax", "layernorm"):
        model, model32 = float32_twin(norm, rng)
        X = rng.uniform(-1, 1, (16, 3))
        want = model.input_derivatives(X, "u", "grad", "laplacian")
        got = model32.input_derivatives(X.astype(np.float32), "u", "grad", "laplacian")
        for q in want:
            assert got[q].dtype == np.float32
            assert rel_err(got[q], want[q]) < 1e-4, (norm, q)


@pytest.mark.slow   # compiles the README's three user specs (~15 s cold)
def test_user_composite_spec_of_the_readme_in_the_sweep_matches_nested_autograd(rng):
    """The README's LayerNorm written by a user — ``normalize`` (a CompositeSpec) between a
    weight-scaled dense layer and a scale-and-shift (ContractionSpecs linear in their input) —
    in the forward-Laplacian sweep and in order-1/2 jets: the user composite's own module
    carries the derived Taylor roles."""
    import sympy as sp
    from symprop.specs import CompositeSpec, ContractionSpec, Stage
    n, o, i = sp.symbols("n o i", integer=True)
    N, O, I = sp.symbols("N O I", integer=True, positive=True)
    x, s, b, W = (sp.IndexedBase(a) for a in ("x", "s", "b", "W"))
    affine = ContractionSpec("affine", "y", (n, o), x[n, o] * s[o] + b[o], inputs={"x": (n, o)},
                             params={"s": (o,), "b": (o,)}, extents={n: N, o: O})
    scaled = ContractionSpec("scaled_dense", "y", (n, o), sp.Sum(x[n, i] * W[o, i] * s[o], (i, 0, I - 1)),
                             inputs={"x": (n, i)}, params={"W": (o, i), "s": (o,)}, extents={n: N, o: O, i: I})
    X_, mu, var, rstd, Y_, eps = sp.symbols("x mu var rstd y eps")
    normalize = CompositeSpec("normalize", X_, (Stage(mu, "mean", X_), Stage(var, "mean", (X_ - mu) ** 2),
                                                Stage(rstd, "map", 1 / sp.sqrt(var + eps)),
                                                Stage(Y_, "map", (X_ - mu) * rstd)),
                              saved=(Y_, rstd), scalars=(("eps", EPS),))
    model = Sequential([L.from_spec(scaled, O=F, init={"s": 1.0}), L.Activation("tanh"),
                        L.from_spec(normalize, axes=(1,)),
                        L.from_spec(affine, init={"s": 1.0, "b": 0.0}), L.Activation("softplus"), L.Dense(F, 1)],
                       loss="mse", dtype="float64", seed=2, input_shape=(3,))
    for p in model.parameters():
        p[...] = rng.normal(size=p.shape)
    tp = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    Wt, st, sa, ba, Wd, bd = tp

    def f(X):
        h = torch.tanh((X @ Wt.T) * st)
        h = torch.nn.functional.softplus(_layernorm(h, [sa, ba]))
        return (h @ Wd.T + bd)[:, 0]
    X = rng.uniform(-1, 1, (5, 3))
    for which in (("u", "grad", "laplacian"), ((0,), (2, 2))):
        check(model, f, tp, X, which, rng)


@pytest.mark.slow   # compiles two user specs (~10 s cold each)
def test_user_composite_specs_with_group_parameters_match_nested_autograd(rng):
    """A user's group specs with parameters in the sweeps: a gain-and-offset standardisation
    (linear in its parameters) and a softmax with a learnable temperature (nonlinear in it),
    one group per sample; the parameters' pullbacks come from the derived vjp:taylor roles."""
    import sympy as sp
    from symprop.specs import CompositeSpec, Stage
    x, mu, d, var, rstd, y, a, c, eps = sp.symbols("x mu d var rstd y a c eps")
    gain = CompositeSpec("gain_norm", x, (Stage(mu, "mean", x), Stage(d, "map", x - mu), Stage(var, "mean", d ** 2),
                                          Stage(rstd, "map", 1 / sp.sqrt(var + eps)),
                                          Stage(y, "map", a * d * rstd + c)),
                         saved=(y, rstd), params=(a, c), scalars=(("eps", EPS),))
    m, e, s_, tau = sp.symbols("m e s tau")
    temp = CompositeSpec("temp_softmax", x, (Stage(m, "max", x), Stage(e, "map", sp.exp(tau * (x - m))),
                                             Stage(s_, "sum", e), Stage(y, "map", e / s_)),
                         saved=(y,), params=(tau,))

    def torch_gain(h, p):
        mu = h.mean(1, keepdim=True)
        v = ((h - mu) ** 2).mean(1, keepdim=True)
        return p[0] * (h - mu) / torch.sqrt(v + EPS) + p[1]

    def torch_temp(h, p):
        z = p[0] * (h - h.max(1, keepdim=True).values.detach())
        return torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    for spec, fn, init in ((gain, torch_gain, {"a": 1.3, "c": -0.2}), (temp, torch_temp, {"tau": 0.7})):
        model = Sequential([L.Dense(3, F), L.Activation("tanh"), L.from_spec(spec, axes=(1,), init=init),
                            L.Dense(F, 1)], loss="mse", dtype="float64", seed=6, input_shape=(3,))
        for p in model.parameters():
            if p.size > 1:
                p[...] = rng.normal(size=p.shape)
        tp = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
        k = len(tp) - 4

        def f(X, fn=fn, tp=tp, k=k):
            h = fn(torch.tanh(X @ tp[0].T + tp[1]), tp[2:2 + k])
            return (h @ tp[2 + k].T + tp[3 + k])[:, 0]
        X = rng.uniform(-1, 1, (5, 3))
        for which in (("u", "grad", "laplacian"), ((0,), (2, 2), (1, 1, 1))):
            check(model, f, tp, X, which, rng)
        first = Sequential([L.from_spec(spec, axes=(1,), init=init), L.Dense(3, 1)], loss="mse", dtype="float64",
                           seed=7, input_shape=(3,))   # first: no input cotangent, but its parameters' gradients
        tq = [torch.tensor(p, requires_grad=True) for p in first.parameters()]

        def g(X, fn=fn, tq=tq):
            return (fn(X, tq[:-2]) @ tq[-2].T + tq[-1])[:, 0]
        check(first, g, tq, X, ("u", "grad", "laplacian"), rng)


def test_names_that_clash_with_the_taylor_arrays_are_refused_by_name():
    """A stage or scalar named like a Taylor role's array (x1, g2, y1, gx) would be read in its
    place: refused when the Taylor roles are derived, naming the spec and the names."""
    import sympy as sp
    from symprop.derive.composite import DerivedComposite
    from symprop.derive.elementwise import SpecError
    from symprop.specs import CompositeSpec, Stage
    x, mu, x1, y, g2 = sp.symbols("x mu x1 y g2")
    stage = CompositeSpec("clash_stage", x, (Stage(mu, "mean", x), Stage(x1, "map", x - mu), Stage(y, "map", x1 * 2)),
                          saved=(y,))
    scalar = CompositeSpec("clash_scalar", x, (Stage(mu, "mean", x), Stage(y, "map", (x - mu) * g2)),
                           saved=(y,), scalars=(("g2", 1.0),))
    for spec, names in ((stage, r"\['x1'\]"), (scalar, r"\['g2'\]")):
        d = DerivedComposite(spec)
        d.role_kernels                       # its first- and second-order roles are unaffected
        with pytest.raises(SpecError, match=rf"{spec.name}.*{names}.*Taylor roles' arrays"):
            d.taylor_kernels(2)


@pytest.mark.slow   # compiles a user spec and its Taylor module
def test_a_composite_spec_linear_in_its_input_runs_in_the_sweep(rng):
    """Centering, y = x − mean(x): its pullback does not depend on x, so the Taylor pullback's
    x-cotangent is 0 and its higher coefficients vanish — still written per element."""
    import sympy as sp
    from symprop.specs import CompositeSpec, Stage
    x, mu, y = sp.symbols("x mu y")
    center = CompositeSpec("center", x, (Stage(mu, "mean", x), Stage(y, "map", x - mu)), saved=(y,))
    model = Sequential([L.Dense(3, F), L.Activation("tanh"), L.from_spec(center, axes=(1,)),
                        L.Activation("softplus"), L.Dense(F, 1)], loss="mse", dtype="float64", seed=8,
                       input_shape=(3,))
    tp = [torch.tensor(p, requires_grad=True) for p in model.parameters()]

    def f(X):
        h = torch.tanh(X @ tp[0].T + tp[1])
        h = torch.nn.functional.softplus(h - h.mean(1, keepdim=True))
        return (h @ tp[2].T + tp[3])[:, 0]
    X = rng.uniform(-1, 1, (5, 3))
    for which in (("u", "grad", "laplacian"), ((0,), (1, 1))):
        check(model, f, tp, X, which, rng)


@pytest.mark.parametrize("which", [("u", "grad", "laplacian"), ((0,), (5, 5))])
def test_groupnorm_on_images_matches_nested_autograd(which, rng):
    """GroupNorm on (N, C, H, W) feature maps (groups of channels and their pixels; the scale
    and shift per channel) between Conv2D layers, one input coordinate per pixel."""
    model = Sequential([L.Conv2D(1, 4, 3, padding=1), L.Activation("tanh"), L.GroupNorm(2, 4, eps=EPS),
                        L.Activation("softplus"), L.Flatten(), L.Dense(4 * 16, 1)],
                       loss="mse", dtype="float64", seed=9, input_shape=(1, 4, 4))
    for p in model.parameters():
        p[...] = rng.normal(size=p.shape)
    tp = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    Wc, bc, gam, bet, Wd, bd = tp

    def f(X):
        h = torch.tanh(torch.nn.functional.conv2d(X, Wc, bc, padding=1))
        g = h.reshape(h.shape[0], 2, -1)
        mu = g.mean(2, keepdim=True)
        var = ((g - mu) ** 2).mean(2, keepdim=True)
        h = ((g - mu) / torch.sqrt(var + EPS)).reshape(h.shape) * gam[None, :, None, None] + bet[None, :, None, None]
        h = torch.nn.functional.softplus(h)
        return (h.reshape(h.shape[0], -1) @ Wd.T + bd)[:, 0]
    check(model, f, tp, rng.uniform(-1, 1, (3, 1, 4, 4)), which, rng)


@pytest.mark.slow   # the order-4 Taylor modules (shared with the tests above)
def test_float32_orders_3_and_4_through_composite_layers_agree_with_float64(rng):
    """The float32 order-3/4 kernels of softmax and the normalisations against float64."""
    for norm in ("softmax", "layernorm", "rmsnorm"):
        model, model32 = float32_twin(norm, rng)
        X = rng.uniform(-1, 1, (16, 3))
        which = ((0, 0, 0), (1, 1, 1, 1))
        want = model.input_derivatives(X, *which)
        got = model32.input_derivatives(X.astype(np.float32), *which)
        for q in which:
            assert got[q].dtype == np.float32 and np.isfinite(got[q]).all()
            assert rel_err(got[q], want[q]) < 1e-4, (norm, q)   # measured 3e-7 … 2e-6
