"""LayerNorm, RMSNorm and GroupNorm (built-ins composed of a normalisation spec and a
per-channel scale-and-shift spec) against PyTorch in float64: loss, gradients, HVPs (double
backward), Gauss-Newton and exact Hessian diagonals; float32; checkpoints; interop; refusals."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support.numeric import rel_err
from support.torch_oracles import check_hvp_against_torch, flatten_torch, torch_forward, torch_loss
from symprop import Sequential, layers as L

# (name, layers, per-sample input shape): each norm inside an MLP or a small CNN, with its options
CASES = {
    "layernorm_mlp": (lambda: [L.Dense(5, 6), L.LayerNorm(6), L.Tanh(), L.Dense(6, 3)], (5,)),
    "layernorm_no_bias": (lambda: [L.Dense(4, 6), L.LayerNorm(6, bias=False), L.Tanh(), L.Dense(6, 3)], (4,)),
    "layernorm_plain": (lambda: [L.Dense(4, 5), L.LayerNorm(5, elementwise_affine=False), L.Dense(5, 3)], (4,)),
    "layernorm_chw": (lambda: [L.Conv2D(2, 3, 2), L.LayerNorm((3, 4, 4), eps=1e-3), L.Tanh(), L.Flatten(),
                               L.Dense(48, 3)], (2, 5, 5)),
    "rmsnorm": (lambda: [L.Dense(5, 7), L.RMSNorm(7), L.Tanh(), L.Dense(7, 3)], (5,)),
    "rmsnorm_plain_eps": (lambda: [L.Dense(5, 4), L.RMSNorm(4, eps=1e-4, elementwise_affine=False), L.Tanh(),
                                   L.Dense(4, 3)], (5,)),
    "groupnorm_conv": (lambda: [L.Conv2D(2, 4, 2), L.GroupNorm(2, 4), L.Tanh(), L.Flatten(), L.Dense(36, 3)],
                       (2, 4, 4)),
    "groupnorm_vector": (lambda: [L.Dense(3, 6), L.GroupNorm(3, 6, affine=False), L.Tanh(), L.Dense(6, 3)], (3,)),
}


def _model(case, seed, dtype="float64"):
    make, shape = CASES[case]
    rng = np.random.default_rng(seed)
    model = Sequential(make(), loss="softmax_cross_entropy", dtype=dtype, seed=seed, input_shape=shape)
    for p in model.parameters():   # away from γ = 1, β = 0 so every term of the derivatives counts
        p[...] = rng.normal(size=p.shape)
    X = rng.normal(size=(int(rng.integers(3, 7)),) + shape)
    y = rng.integers(0, 3, size=len(X))
    return model, X, y, rng


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_gradient_hvp_equal_pytorch(case, seed):
    model, X, y, rng = _model(case, seed)
    assert np.abs(model.outputs(X) - torch_forward(model, X, [torch.tensor(p) for p in model.parameters()])
                  .numpy()).max() < 1e-12
    v = [rng.normal(size=p.shape) for p in model.parameters()]
    check_hvp_against_torch(model, X, y, v)


def _gauss_newton_diagonal(model, X, y):
    pt = [torch.tensor(p) for p in model.parameters()]
    flat, unflat = flatten_torch(pt)
    out = torch_forward(model, X, pt)
    J = torch.autograd.functional.jacobian(lambda th: torch_forward(model, X, unflat(th)).reshape(-1), flat).numpy()
    Ho = torch.autograd.functional.hessian(lambda o: F.cross_entropy(o.reshape(out.shape), torch.tensor(y)),
                                           out.reshape(-1)).numpy()
    return np.einsum("ip,ij,jp->p", J, Ho, J), flat, unflat


@pytest.mark.parametrize("case", ["layernorm_mlp", "rmsnorm", "groupnorm_conv"])
def test_gauss_newton_and_hutchinson_diagonals(case):
    model, X, y, _ = _model(case, 3)
    ggn, _, _ = _gauss_newton_diagonal(model, X, y)
    ours = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="gauss_newton")])
    assert rel_err(ours, ggn) < 1e-9
    est = model.hessian_diagonal(X, y, method="hutchinson", samples=2, seed=0)
    assert all(np.isfinite(a).all() and a.shape == p.shape for a, p in zip(est, model.parameters()))


@pytest.mark.parametrize("norm", [lambda: L.LayerNorm(6), lambda: L.RMSNorm(6), lambda: L.GroupNorm(3, 6)])
def test_exact_diagonal_as_first_layer_and_refused_below_it(norm):
    rng = np.random.default_rng(5)
    model = Sequential([norm(), L.Dense(6, 4), L.Tanh(), L.Dense(4, 3)], dtype="float64", seed=5, input_shape=(6,))
    for p in model.parameters():
        p[...] = rng.normal(size=p.shape)
    X, y = rng.normal(size=(4, 6)), rng.integers(0, 3, size=4)
    pt = [torch.tensor(p) for p in model.parameters()]
    flat, unflat = flatten_torch(pt)
    H = torch.autograd.functional.hessian(lambda th: torch_loss(model, X, y, unflat(th)), flat).numpy()
    ours = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="exact")])
    assert rel_err(ours, np.diag(H)) < 1e-9
    below = Sequential([L.Dense(6, 6), norm(), L.Dense(6, 3)], dtype="float64", seed=0, input_shape=(6,))
    name = below.layers[1].name
    with pytest.raises(ValueError, match=rf"exact.*{name.split('(')[0]}"):
        below.hessian_diagonal(X, y, method="exact")
    with pytest.raises(ValueError, match=rf"{name.split('(')[0]}.*becker_lecun"):
        below.hessian_diagonal(X, y, method="becker_lecun")


@pytest.mark.parametrize("case", ["layernorm_chw", "rmsnorm", "groupnorm_conv"])
def test_float32_matches_float64(case):
    m64, X, y, _ = _model(case, 7)
    m32 = Sequential(CASES[case][0](), dtype="float32", seed=7, input_shape=CASES[case][1])
    for a, b in zip(m32.parameters(), m64.parameters()):
        a[...] = b
    l32, g32 = m32.loss_and_grad(X.astype(np.float32), y)
    l64, g64 = m64.loss_and_grad(X, y)
    assert abs(l32 - l64) < 1e-5 * max(1, abs(l64))
    assert max(rel_err(a, b) for a, b in zip(g32, g64)) < 1e-4


def test_trains_saves_and_loads(tmp_path):
    from sklearn.datasets import load_digits
    d = load_digits()
    X, y = (d.data / 16.0).astype(np.float32), d.target
    model = Sequential([L.Dense(64, 32), L.LayerNorm(32), L.Tanh(), L.Dense(32, 10)], seed=0, input_shape=(64,))
    before = model.evaluate(X, y)["loss"]
    model.fit(X, y, epochs=3, batch_size=64, optimizer="adam", verbose=0)
    assert model.evaluate(X, y)["loss"] < 0.5 * before
    conv = Sequential([L.Conv2D(1, 4, 3), L.GroupNorm(2, 4), L.ReLU(), L.Flatten(), L.Dense(144, 10),
                       L.RMSNorm(10, elementwise_affine=False)], seed=1, input_shape=(1, 8, 8))
    for m in (model, conv):
        path = tmp_path / "norms.npz"
        m.save(path)
        same = Sequential.load(path)
        Xin = X if m is model else X.reshape(-1, 1, 8, 8)
        assert [la.config() for la in same.layers] == [la.config() for la in m.layers]
        assert np.array_equal(same.outputs(Xin[:50]), m.outputs(Xin[:50]))


def test_interop_both_ways():
    from symprop.interop import from_torch, to_torch
    torch.manual_seed(0)
    nn = torch.nn
    seq = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4, eps=1e-4), nn.Tanh(), nn.LayerNorm((4, 3, 3)),
                        nn.Flatten(), nn.Linear(36, 6), nn.RMSNorm(6), nn.LayerNorm(6, elementwise_affine=False),
                        nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in seq.parameters():
            p.normal_()
    X = np.random.default_rng(0).normal(size=(5, 2, 5, 5))
    model = from_torch(seq, input_shape=(2, 5, 5))
    ref = seq(torch.tensor(X)).detach().numpy()
    assert np.abs(model.outputs(X) - ref).max() < 1e-12
    back = to_torch(model)
    assert np.abs(back(torch.tensor(X)).detach().numpy() - ref).max() < 1e-12
    assert [type(m).__name__ for m in back] == [type(m).__name__ for m in seq]


def test_bad_arguments_and_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match="GroupNorm: num_groups 3 must divide num_channels 4"):
        L.GroupNorm(3, 4)
    with pytest.raises(ValueError, match="LayerNorm: normalized_shape must be a positive integer"):
        L.LayerNorm((4, 0))
    with pytest.raises(ValueError, match="RMSNorm: eps must be a finite number"):
        L.RMSNorm(4, eps=-1.0)
    with pytest.raises(ValueError, match=r"LayerNorm\(6\): expects per-sample inputs whose last 1 dimension"):
        Sequential([L.LayerNorm(6)], input_shape=(5,))
    with pytest.raises(ValueError, match=r"GroupNorm\(2, 4\): expects per-sample inputs \(4, \.\.\.\), got \(3, 5, 5\)"):
        Sequential([L.GroupNorm(2, 4)], input_shape=(3, 5, 5))
    model = Sequential([L.LayerNorm(6), L.Dense(6, 2)], input_shape=(6,))
    with pytest.raises(ValueError, match=r"LayerNorm\(6\)"):
        model.predict(np.zeros((3, 5), np.float32))


def test_summary_and_document_name_the_norms(tmp_path):
    model = Sequential([L.Conv2D(1, 4, 3), L.GroupNorm(2, 4), L.ReLU(), L.Flatten(), L.Dense(144, 8),
                        L.LayerNorm(8), L.Dense(8, 10)], input_shape=(1, 8, 8))
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "GroupNorm(2, 4)" in text and "LayerNorm(8)" in text
    tex = model.latex(str(tmp_path / "norms.tex"))
    for title in ("Standardisation (LayerNorm, GroupNorm)", "Scale and shift per channel"):
        assert f"\\subsection{{{title}}}" in tex
