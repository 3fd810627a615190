"""The spec-driven runtime: shared layers, per-call state (threads), the registry, and a runtime
that holds nothing a forward pass could overwrite."""
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop import Sequential, layers as L
from support.torch_oracles import check_hvp_against_torch, torch_activation
from support.numeric import rel_err


def _tied_torch_loss(params, X, y):
    """The tied MLP below in PyTorch: x -> tanh(W1 x + b1) -> tanh(W2 . + b2) -> tanh(W2 . + b2) -> W3 . + b3."""
    W1, b1, W2, b2, W3, b3 = params
    h = torch.tanh(F.linear(torch.tensor(X), W1, b1))
    h = torch.tanh(F.linear(h, W2, b2))
    h = torch.tanh(F.linear(h, W2, b2))
    return F.cross_entropy(F.linear(h, W3, b3), torch.tensor(y))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_layer_used_twice_matches_torch_tied_weights(seed):
    rng = np.random.default_rng(seed)
    n_in, h, n_out, N = (int(a) for a in rng.integers(3, 8, 4))
    act = L.Tanh()                       # one activation object used three times
    tied = L.Dense(h, h)                 # one Dense used twice: tied weights
    model = Sequential([L.Dense(n_in, h), act, tied, act, tied, act, L.Dense(h, n_out)],
                       dtype="float64", seed=seed)
    params = model.parameters()
    assert len(params) == 6 and params[2] is tied.W   # the tied layer's parameters once
    X = rng.normal(size=(N, n_in))
    y = rng.integers(0, n_out, N)
    v = [rng.normal(size=p.shape) for p in params]
    pt = [torch.tensor(p, requires_grad=True) for p in params]
    lt = _tied_torch_loss(pt, X, y)
    gt = torch.autograd.grad(lt, pt, create_graph=True)
    hvt = torch.autograd.grad(sum((g * torch.tensor(vi)).sum() for g, vi in zip(gt, v)), pt)
    loss, grads, hv = model.hvp(X, y, v, return_grad=True)
    assert abs(loss - lt.item()) < 1e-12
    for a, b in zip(grads, gt):
        assert rel_err(a, b.detach().numpy()) < 1e-9
    for a, b in zip(hv, hvt):
        assert rel_err(a, b.numpy()) < 1e-9
    # the Hutchinson diagonal works through exact HVPs; per-use backprop methods refuse
    assert [d.shape for d in model.hessian_diagonal(X, y, "hutchinson", samples=2, seed=0)] == \
        [p.shape for p in params]
    with pytest.raises(ValueError, match="shared parameter.*hutchinson"):
        model.hessian_diagonal(X, y, "exact")


def test_shared_model_checkpoint_keeps_the_tie(tmp_path):
    tied = L.Dense(4, 4)
    model = Sequential([tied, L.ReLU(), tied, L.Dense(4, 3)], dtype="float64", seed=0)
    X, y = np.random.default_rng(0).normal(size=(5, 4)), np.array([0, 1, 2, 0, 1])
    model.save(tmp_path / "m.npz")
    back = Sequential.load(tmp_path / "m.npz")
    assert back.layers[0] is back.layers[2] and len(back.parameters()) == 4
    assert back.loss_and_grad(X, y)[0] == model.loss_and_grad(X, y)[0]


def test_a_layer_in_two_models_shares_weights_and_is_not_reinitialised():
    rng = np.random.default_rng(0)
    conv = L.Conv2D(1, 2, 3, padding=1)
    a = Sequential([conv, L.ReLU(), L.Flatten(), L.Dense(2 * 16, 3)], seed=0)
    X, y = rng.normal(size=(8, 1, 4, 4)).astype(np.float32), rng.integers(0, 3, 8)
    a.fit(X, y, epochs=2, batch_size=4, verbose=0)
    trained = conv.W.copy()
    b = Sequential([conv, L.Tanh(), L.Flatten(), L.Dense(2 * 16, 5)], seed=123)
    assert np.array_equal(conv.W, trained) and b.parameters()[0] is a.parameters()[0]
    with pytest.raises(TypeError, match=r"Conv2D.*float32.*float64"):
        Sequential([conv, L.Flatten(), L.Dense(32, 2)], dtype="float64")


def test_parameters_before_the_first_batch_can_be_copied_from_torch():
    """A PyTorch user copies weights in right after construction (conv-first model)."""
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(12, 4))
    tm = tm.double()
    model = Sequential([L.Conv2D(1, 3, 3), L.ReLU(), L.Flatten(), L.Dense(12, 4)], dtype="float64")
    for p, t in zip(model.parameters(), tm.parameters()):
        p[...] = t.detach().numpy()
    X = np.random.default_rng(1).normal(size=(5, 1, 4, 4))
    assert rel_err(model.forward(X), tm(torch.tensor(X)).detach().numpy()) < 1e-12


def _cnn(seed=0):
    return Sequential([L.Conv2D(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2D(2),
                       L.Residual([L.Conv2D(4, 4, 3, padding=1), L.Tanh(), L.Conv2D(4, 6, 3, padding=1)]),
                       L.AvgPool2D(2), L.Flatten(), L.Dense(6 * 2 * 2, 5)], dtype="float64", seed=seed)


def test_four_threads_on_one_model_give_the_serial_results():
    model = _cnn()
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(6, 1, 8, 8)), rng.integers(0, 5, 6)) for _ in range(4)]
    model.build((1, 8, 8))
    vs = [[rng.normal(size=p.shape) for p in model.parameters()] for _ in batches]
    want = [(model.loss_and_grad(X, y), model.hvp(X, y, v)) for (X, y), v in zip(batches, vs)]
    got = [[] for _ in batches]
    errors = []

    def work(k):
        try:
            for _ in range(6):
                X, y = batches[k]
                got[k].append((model.loss_and_grad(X, y), model.hvp(X, y, vs[k])))
        except Exception as exc:   # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(4):
        (l0, g0), h0 = want[k]
        for (l1, g1), h1 in got[k]:
            assert l1 == pytest.approx(l0, rel=1e-13)
            assert max(rel_err(a, b) for a, b in zip(g1, g0)) < 1e-12
            assert max(rel_err(a, b) for a, b in zip(h1, h0)) < 1e-12


def test_layers_keep_no_per_call_state():
    model = _cnn().build((1, 8, 8))
    X = np.random.default_rng(0).normal(size=(3, 1, 8, 8))
    before = {id(la): set(vars(la)) for la in model.layers}
    model.hvp(X, np.zeros(3, np.int64), [np.ones_like(p) for p in model.parameters()])
    for la in model.layers:
        assert set(vars(la)) == before[id(la)], la.name
    assert not {"_out", "_gs"} & set(vars(model))


def test_hessian_diagonal_exact_at_an_mse_minimum_equals_the_full_hessian():
    """f''·ḡ is zero at every activation when the fit is exact (ḡ = 0): no residual factor."""
    rng = np.random.default_rng(0)
    model = Sequential([L.Dense(3, 4), L.Tanh(), L.Dense(4, 2)], loss="mse", dtype="float64", seed=0)
    X = rng.normal(size=(6, 3))
    Y = model.forward(X)             # targets the model fits exactly
    d = model.hessian_diagonal(X, Y, "exact")
    H = model.hessian(X, Y)
    assert rel_err(np.concatenate([a.reshape(-1) for a in d]), np.diag(H)) < 1e-12
    # a zero weight feeding tanh and dead ReLUs: zero residual for every unit
    model2 = Sequential([L.Dense(3, 4), L.ReLU(), L.Dense(4, 2)], dtype="float64", seed=0)
    model2.parameters()[0][...] = -abs(model2.parameters()[0]) - 1
    d2 = model2.hessian_diagonal(np.abs(X), np.zeros(6, np.int64), "exact")
    assert rel_err(np.concatenate([a.reshape(-1) for a in d2]), np.diag(model2.hessian(np.abs(X), np.zeros(6, np.int64)))) < 1e-12


def test_activation_registry_and_errors():
    names = L.activation_names()
    assert {"tanh", "sigmoid", "relu", "softplus"} <= set(names)
    with pytest.raises(ValueError, match="unknown activation 'nope'.*built-ins"):
        L.Activation("nope")
    cfg = L.Activation("tanh").config()
    assert L.from_config(cfg).kernel_name == "tanh"


@pytest.mark.slow   # compiles or runs the CLI many times: the default suite's 5 minutes
def test_a_spec_line_added_to_builtins_gives_a_working_layer(tmp_path, monkeypatch):
    """One line in (a copy of) derive/builtins.py, regenerated, compiled: gradient and HVP equal
    PyTorch's through the same executor as every built-in."""
    from symprop.codegen.build import load_or_build
    from symprop.codegen.elementwise import render_elementwise_module
    from symprop.derive.elementwise import derive_elementwise
    from symprop.derive import builtins
    monkeypatch.setenv("SYMPROP_CACHE", str(tmp_path / "cache"))
    line = 'ACTIVATIONS["swish1"] = ElementwiseSpec("swish1", x / (1 + sp.exp(-x)), x, doc="swish, beta 1")\n'
    copy = types.ModuleType("symprop.derive.builtins_copy")
    copy.__package__ = "symprop.derive"
    exec(compile(Path(builtins.__file__).read_text() + line, "builtins_copy.py", "exec"), copy.__dict__)
    # what `symprop generate` writes to activations.pyx from the edited registry (the other
    # modules do not read ACTIVATIONS)
    text = render_elementwise_module("activations", [derive_elementwise(s) for s in copy.ACTIVATIONS.values()])
    assert "spec: swish1" in text and '"swish1"' in text
    module, _ = load_or_build("activations_copy", text, "swish1")
    act = L.Activation("swish1", module=module)
    model = Sequential([L.Dense(3, 5), act, L.Dense(5, 3)], dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(7, 3)), rng.integers(0, 3, 7)
    v = [rng.normal(size=p.shape) for p in model.parameters()]
    f = torch_activation(copy.ACTIVATIONS["swish1"])
    check_hvp_against_torch(model, X, y, v, lambda pt: F.cross_entropy(
        F.linear(f(F.linear(torch.tensor(X), pt[0], pt[1])), pt[2], pt[3]), torch.tensor(y)))


@pytest.mark.slow   # compiles or runs the CLI many times: the default suite's 5 minutes
def test_latex_runs_without_compiled_kernels(tmp_path):
    """A copy of the package whose compiled kernels are deleted still exports LaTeX (that it
    also regenerates is tested in test_generate.py, whose one generate run happens there)."""
    from support.numeric import kernelless_copy
    root = kernelless_copy(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-c", "import symprop.cli as c, sys; sys.exit(c.main(['latex', '--layers', "
                        f"'tanh,dense', '-o', {str(tmp_path / 'd.tex')!r}]))"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "\\section" in (tmp_path / "d.tex").read_text()
