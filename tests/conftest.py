import os

# every product on SciPy's BLAS unless a test chooses (tests/test_gemm_providers.py): the tuner's
# choice depends on timings, and with it the last bits of float32 results that accuracy bars see
os.environ.setdefault("SYMPROP_GEMM", "scipy")

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop import layers as L


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _torch_max(*args):
    ts = [a for a in args if isinstance(a, torch.Tensor)]
    out = ts[0]
    for a in args:
        out = torch.maximum(out, a if isinstance(a, torch.Tensor) else torch.full_like(ts[0], float(a)))
    return out


def _torch_min(*args):
    ts = [a for a in args if isinstance(a, torch.Tensor)]
    out = ts[0]
    for a in args:
        out = torch.minimum(out, a if isinstance(a, torch.Tensor) else torch.full_like(ts[0], float(a)))
    return out


def _torch_or_math(name):
    import math

    def fn(a):
        return getattr(torch, name)(a) if isinstance(a, torch.Tensor) else getattr(math, name)(a)
    return fn


def torch_activation(spec, **values):
    """The PyTorch oracle of an elementwise spec: its SymPy expression (parameters at their
    defaults or ``values``) evaluated by torch ops; autograd then differentiates it
    independently of symprop's derivation."""
    import sympy as sp
    expr = spec.expr.subs({sp.Symbol(p): values.get(p, d) for p, d in spec.params})
    return sp.lambdify(spec.var, expr, modules=[{"Max": _torch_max, "Min": _torch_min, "max": _torch_max, "min": _torch_min,
                                                      "amax": _torch_max, "amin": _torch_min,
                                                      "sqrt": _torch_or_math("sqrt"), "exp": _torch_or_math("exp"),
                                                      "log": _torch_or_math("log")}, "torch"])


def _registry_oracles():
    from symprop.derive.builtins import ACTIVATIONS
    return {name: torch_activation(spec) for name, spec in ACTIVATIONS.items()}


#: every registered activation, its PyTorch oracle (the test tables read the registry)
TORCH_ACTIVATIONS = _registry_oracles()


def torch_forward(model, X, params):
    """The same network in PyTorch, from our layer objects and weights."""
    it = iter(params)
    h = torch.tensor(X)

    def run(layers, h):
        for la in layers:
            if isinstance(la, L.Conv2D):
                Wt = next(it)
                bt = next(it) if la.bias else None
                h = F.conv2d(h, Wt, bt, la.stride, la.padding, la.dilation)
            elif isinstance(la, L.Dense):
                h = F.linear(h, next(it), next(it) if la.bias else None)
            elif isinstance(la, L.MaxPool2D):
                h = F.max_pool2d(h, la.kernel_size, la.stride, la.padding)
            elif isinstance(la, L.AvgPool2D):
                h = F.avg_pool2d(h, la.kernel_size, la.stride, la.padding)
            elif isinstance(la, L.Flatten):
                h = h.reshape(h.shape[0], -1)
            elif isinstance(la, L.Residual):
                out = run(la.block, h)
                h = out + (run([la.projection], h) if la.projection else h)
            else:
                h = TORCH_ACTIVATIONS[la.kernel_name](h)
        return h
    return run(model.layers, h)


def torch_loss(model, X, y, params):
    """The model's mean batch loss in PyTorch."""
    out = torch_forward(model, X, params)
    if model.loss.name == "mse":
        return F.mse_loss(out, torch.tensor(np.asarray(y, np.float64)).reshape(out.shape))
    return F.cross_entropy(out, torch.tensor(y))


def check_hvp_against_torch(model, X, y, v, torch_loss_of, tol=1e-9):
    """``model.hvp(X, y, v, return_grad=True)`` against PyTorch's double backward of
    ``torch_loss_of(params)`` at the model's parameters: loss, gradient and HVP. Returns the
    torch parameter tensors (for further checks)."""
    pt = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    lt = torch_loss_of(pt)
    gt = torch.autograd.grad(lt, pt, create_graph=True)
    hvt = torch.autograd.grad(sum((g * torch.tensor(a)).sum() for g, a in zip(gt, v)), pt)
    loss, grads, hv = model.hvp(X, y, v, return_grad=True)
    assert abs(loss - lt.item()) < 1e-12 * max(1, abs(lt.item()))
    assert max(rel_err(a, b.detach().numpy()) for a, b in zip(grads, gt)) < tol
    assert max(rel_err(a, b.numpy()) for a, b in zip(hv, hvt)) < tol
    return pt


def flatten_torch(pt):
    """``(theta, unflatten)``: the parameters as one detached vector, and its inverse."""
    flat = torch.cat([p.reshape(-1) for p in pt]).detach()
    sizes = [p.numel() for p in pt]

    def unflatten(th):
        parts, i = [], 0
        for p, n in zip(pt, sizes):
            parts.append(th[i:i + n].reshape(p.shape))
            i += n
        return parts
    return flat, unflatten


def kernelless_copy(root):
    """A copy of the installed package under ``root`` without its compiled kernels (``.so``
    and ``.c`` left out): what ``symprop generate`` and ``symprop latex`` must run in, since
    generated code never imports the package root and the root imports lazily. Returns
    ``root``, to put on PYTHONPATH."""
    import symprop
    from pathlib import Path
    pkg = Path(symprop.__file__).resolve().parent
    src = {"symprop": pkg}
    for sub in ("derive", "codegen", "generated", "runtime", "document"):
        src[f"symprop/{sub}"] = Path(__import__(f"symprop.{sub}", fromlist=["x"]).__file__).resolve().parent
    for rel, path in src.items():
        dst = root / rel
        dst.mkdir(parents=True, exist_ok=True)
        for f in path.iterdir():
            if f.is_file() and f.suffix not in (".so", ".pyd", ".c"):
                dst.joinpath(f.name).write_bytes(f.read_bytes())
        if rel == "symprop/codegen":
            (dst / "templates").mkdir(exist_ok=True)
            for f in (path / "templates").iterdir():
                (dst / "templates" / f.name).write_bytes(f.read_bytes())
    assert not list((root / "symprop/generated").glob("*.so"))
    return root


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only when asked for (``pytest -m slow``; CI runs them after the
    default suite), so ``pytest`` stays within a few minutes on two cores."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: runs with pytest -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
