"""User-defined activations: derive -> codegen -> compile on the fly, cached by spec hash."""
import numpy as np
import pytest
import sympy as sp
import torch

from symprop import Sequential, layers as L
from symprop.derive.elementwise import SpecError
from support.numeric import rel_err

x = sp.Symbol("x")
GELU_EXPR = x * (1 + sp.erf(x / sp.sqrt(2))) / 2


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMPROP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_gelu_matches_torch_and_second_use_hits_cache(cache):
    gelu = L.Activation.from_sympy("gelu", GELU_EXPR, x)
    assert gelu.compiled and any(cache.iterdir())
    again = L.Activation.from_sympy("gelu", GELU_EXPR, x)
    assert not again.compiled          # loaded from the cache, no compiler run
    rng = np.random.default_rng(0)
    model = Sequential([L.Dense(5, 7), gelu, L.Dense(7, 3)], dtype="float64", seed=1)
    X, y = rng.normal(size=(9, 5)) * 3, rng.integers(0, 3, 9)
    loss, grads = model.loss_and_grad(X, y)
    ps = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    h = torch.nn.functional.linear(torch.tensor(X), ps[0], ps[1])
    h = torch.nn.functional.linear(torch.nn.functional.gelu(h), ps[2], ps[3])
    lt = torch.nn.functional.cross_entropy(h, torch.tensor(y))
    assert abs(loss - lt.item()) < 1e-12
    for g, gt in zip(grads, torch.autograd.grad(lt, ps)):
        assert rel_err(g, gt.numpy()) < 1e-9
    # second derivative through the generated R-op kernel
    xs = rng.normal(size=50) * 4
    xt = torch.tensor(xs, requires_grad=True)
    (d1,) = torch.autograd.grad(torch.nn.functional.gelu(xt).sum(), xt, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), xt)
    # the same manifest roles as a built-in (rvjp:x with Rx = 1, Rg = 0 is f'')
    assert set(gelu.kernels.roles) >= {"forward", "vjp:x", "jvp", "rvjp:x", "curv:x", "bl:x"}
    y_, rec = gelu.forward(xs[None, :])
    out, _ = gelu.rvjp(rec, np.ones_like(y_), np.zeros_like(y_), np.ones_like(y_), [])
    assert rel_err(out[0], d2.numpy()) < 1e-9


def test_bad_specs_raise_clear_errors(cache):
    f = sp.Function("f")
    with pytest.raises(SpecError, match="weird"):
        L.Activation.from_sympy("weird", f(x), x)
    with pytest.raises(SpecError, match="unbound"):
        L.Activation.from_sympy("free", x * sp.Symbol("a"), x)
    with pytest.raises(SpecError, match="identifier"):
        L.Activation.from_sympy("bad name", x, x)


def test_compile_failure_names_spec_and_kept_file(cache):
    from symprop.codegen.build import BuildError, load_or_build
    with pytest.raises(BuildError, match=r"spec 'broken'.*kept at .*\.pyx"):
        load_or_build("act_broken", "def f(:\n    pass\n", "broken")


@pytest.mark.parametrize("name", ["g", "H", "y", "Rx"])
def test_parameter_names_the_kernels_use_are_refused(name):
    """A parameter named like the incoming gradient (g), the output-Hessian diagonal (H), the
    output or a direction would merge with it in the derivation and the document."""
    from symprop.derive import ElementwiseSpec
    x, p = sp.Symbol("x"), sp.Symbol(name)
    with pytest.raises(SpecError, match=rf"\['{name}'\] are reserved"):
        ElementwiseSpec("scaled_tanh", p * sp.tanh(x), x, ((name, 1.0),))
    with pytest.raises(SpecError, match="reserved"):
        ElementwiseSpec("masked", p * x, x, arrays=(name,))
