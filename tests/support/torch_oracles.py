"""PyTorch oracles: activations from their SymPy specs, networks built from our layer objects and
weights, and the double-backward HVP check every curvature test uses."""
import numpy as np
import torch
import torch.nn.functional as F

from symprop import layers as L
from support.numeric import rel_err


def _torch_extreme(pick):
    """SymPy's Max/Min of tensors and numbers, elementwise (``pick``: torch.maximum or minimum)."""
    def fn(*args):
        ts = [a for a in args if isinstance(a, torch.Tensor)]
        out = ts[0]
        for a in args:
            out = pick(out, a if isinstance(a, torch.Tensor) else torch.full_like(ts[0], float(a)))
        return out
    return fn


_torch_max, _torch_min = _torch_extreme(torch.maximum), _torch_extreme(torch.minimum)


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
            elif isinstance(la, (L.LayerNorm, L.RMSNorm, L.GroupNorm)):
                ws = [next(it) for _ in la.trainable()]
                if isinstance(la, L.GroupNorm):
                    h = F.group_norm(h, la.num_groups, *ws, eps=la.eps)
                    continue
                ns = la.normalized_shape
                ws = [w.reshape(ns) for w in ws]
                if isinstance(la, L.LayerNorm):
                    h = F.layer_norm(h, ns, *(ws + [None] * (2 - len(ws))), eps=la.eps)
                else:
                    h = F.rms_norm(h, ns, *ws, eps=la.eps)
            elif isinstance(la, L.Residual):
                out = run(la.block, h)
                h = out + (run([la.projection], h) if la.projection else h)
            else:
                h = TORCH_ACTIVATIONS[la.kernel_name](h)
        return h
    return run(model.layers, h)


def torch_mlp(params, X, act=torch.tanh):
    """A Dense-activation-…-Dense stack in PyTorch with a native torch activation (independent
    of our specs): ``params`` alternate weight and bias, as ``model.parameters()`` lists them."""
    h = torch.as_tensor(np.asarray(X, np.float64))
    for k in range(0, len(params), 2):
        h = F.linear(h, params[k], params[k + 1])
        if k + 2 < len(params):
            h = act(h)
    return h


def torch_loss(model, X, y, params):
    """The model's mean batch loss in PyTorch."""
    out = torch_forward(model, X, params)
    if model.loss.name == "mse":
        return F.mse_loss(out, torch.tensor(np.asarray(y, np.float64)).reshape(out.shape))
    return F.cross_entropy(out, torch.tensor(y))


def torch_hvp(model, X, y, v):
    """PyTorch's double backward at the model's parameters (float64): loss, gradient, H·v."""
    params = [torch.tensor(p.astype(np.float64), requires_grad=True) for p in model.parameters()]
    loss = torch_loss(model, X, y, params)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hv = torch.autograd.grad(grads, params, [torch.tensor(np.asarray(a, np.float64)) for a in v])
    return float(loss.detach()), [g.detach().numpy() for g in grads], [h.numpy() for h in hv]


def check_hvp_against_torch(model, X, y, v, torch_loss_of=None, tol=1e-9):
    """``model.hvp(X, y, v, return_grad=True)`` against PyTorch's double backward of
    ``torch_loss_of(params)`` (default: the same network and loss built by ``torch_loss``) at the
    model's parameters: loss, gradient and HVP, shapes included. Returns the torch parameter
    tensors (for further checks)."""
    if torch_loss_of is None:
        torch_loss_of = lambda pt: torch_loss(model, X, y, pt)  # noqa: E731
    pt = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    lt = torch_loss_of(pt)
    gt = torch.autograd.grad(lt, pt, create_graph=True)
    hvt = torch.autograd.grad(sum((g * torch.tensor(a)).sum() for g, a in zip(gt, v)), pt)
    loss, grads, hv = model.hvp(X, y, v, return_grad=True)
    assert abs(loss - lt.item()) < 1e-12 * max(1, abs(lt.item()))
    assert max(rel_err(a, b.detach().numpy()) for a, b in zip(grads, gt)) < tol
    assert max(rel_err(a, b.numpy()) for a, b in zip(hv, hvt)) < tol
    assert [h.shape for h in hv] == [p.shape for p in model.parameters()]
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


def nested_input_derivatives(f, X, which, d=None):
    """{query: tensor} by nested autograd of ``f`` (keeping the graph) at X (N, *shape), one
    coordinate per element of a sample (``d`` of them): "u", "grad", "laplacian" or a pure
    partial as a coordinate tuple."""
    d = int(np.prod(X.shape[1:])) if d is None else d
    tX = torch.tensor(X, requires_grad=True)
    N = X.shape[0]
    u = f(tX)
    flat = lambda t: t.reshape(N, d)  # noqa: E731
    g = flat(torch.autograd.grad(u.sum(), tX, create_graph=True)[0])
    out = {}
    for q in which:
        if q == "u":
            out[q] = u
        elif q == "grad":
            out[q] = g
        elif q == "laplacian":
            out[q] = sum(flat(torch.autograd.grad(g[:, i].sum(), tX, create_graph=True)[0])[:, i] for i in range(d))
        else:
            v = u
            for _ in q:
                v = flat(torch.autograd.grad(v.sum(), tX, create_graph=True)[0])[:, q[0]]
            out[q] = v
    return out
