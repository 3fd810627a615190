"""NaN and ±inf through every activation and every role, against PyTorch.

What is guaranteed (docs/reliability-activations.md), for every registered activation and
learnable activation, every role (forward, vjp, jvp, rvjp, residual, Becker–LeCun, the
parameter's pullbacks and the fused forward+jvp / vjp+rvjp), float32 and float64, at the
default parameters and at them doubled and halved:

* NaN in → NaN out: a NaN input gives NaN in every output that reads the input;
* at ±inf every output is its limit (±inf where the function diverges);
* every finite input up to the float32 maximum gives the finite value (when it is finite in
  the dtype), within 1e-5 (float32) / 1e-10 (float64) of float64 PyTorch relative to
  max(|value|, 1).

The oracle is torch.nn.functional (x·sigmoid(βx) for swish) with autograd first and second
derivatives, in float64. Where PyTorch's own formula gives NaN at ±inf (inf·0 in silu, gelu,
mish and swish at −inf, their derivatives at ±inf) the mathematical limit exists and is the
target: PyTorch's value at the first of ±1e300, ±1e100, ±1e30 where it is not NaN. Where
PyTorch's derivative at a NaN input is a number (ReLU's, leaky ReLU's and ELU's
backward give 1, α and 1: they compare the input), symprop's is NaN — the stricter rule,
asserted here. Leaky ReLU, PReLU and ELU at exactly 0 differ by convention (a kink of f or
f'): PyTorch's leaky slope there is α, symprop's a.e. derivative [x > 0] + α[x < 0] is 0;
ELU's f''(0) is α (PyTorch: 0); the test skips their derivative roles at 0 only.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from symprop.runtime.kernels import SpecKernels, load
from support.torch_oracles import torch_activation

ACT = load("activations")
LEARN = load("learnable")
MAX32 = float(np.finfo(np.float32).max)
SPECIAL = np.array([np.nan, np.inf, -np.inf, MAX32, -MAX32, 1e4, -1e4, 0.0])
TOL = {np.float32: 1e-5, np.float64: 1e-10}

#: PyTorch's own functionals; an activation registered without one here falls back to its
#: SymPy expression evaluated by torch ops (support.torch_oracles.torch_activation)
FUNCTIONAL = {
    "tanh": lambda t, **p: torch.tanh(t),
    "sigmoid": lambda t, **p: torch.sigmoid(t),
    "relu": lambda t, **p: F.relu(t),
    "softplus": lambda t, **p: F.softplus(t, threshold=40.0),   # torch's default 20 cuts f' to 1 at 2e-9
    "leaky_relu": lambda t, alpha: F.leaky_relu(t, alpha),
    "elu": lambda t, alpha: F.elu(t, alpha),
    "silu": lambda t, **p: F.silu(t),
    "swish": lambda t, beta: t * torch.sigmoid(beta * t),
    "gelu": lambda t, **p: F.gelu(t),
    "mish": lambda t, **p: F.mish(t),
}
KINKED = {"leaky_relu", "prelu", "elu"}   # derivatives at exactly 0: a convention (see the docstring)


def _specs(registry_name):
    from symprop.derive import builtins
    return getattr(builtins, registry_name)


def param_sets(defaults: dict) -> list[dict]:
    """Defaults, doubled, halved and negated (what the derivation checks its forms at), and
    ×10, ×0.1, ×−2."""
    out = [dict(defaults)]
    for s in (2.0, 0.5, -1.0, 10.0, 0.1, -2.0):
        d = {k: v * s for k, v in defaults.items()}
        if d not in out:
            out.append(d)
    return out


def points(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([SPECIAL, rng.normal(0, 3, 40), rng.uniform(-50, 50, 40),
                           rng.choice([-1, 1], 8) * 10.0 ** rng.uniform(2, 38.5, 8)])


def _grad(out, wrt):
    g = torch.autograd.grad(out.sum(), wrt, create_graph=True, allow_unused=True)
    return [torch.zeros_like(w) if d is None else d for w, d in zip(wrt, g)]


def torch_derivatives(fn, x: np.ndarray, p: np.ndarray | None = None) -> dict:
    """float64 PyTorch f and its first and second derivatives (in x, and in the parameter p
    when given, p elementwise like x) at the points x, exactly as autograd gives them."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    if p is None:
        y = fn(xt)
        (fx,) = _grad(y, [xt])
        (fxx,) = _grad(fx, [xt])
        return {"f": y, "fx": fx, "fxx": fxx}
    pt = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    y = fn(xt, pt)
    fx, fp = _grad(y, [xt, pt])
    fxx, fxp = _grad(fx, [xt, pt])
    (fpp,) = _grad(fp, [pt])
    return {"f": y, "fx": fx, "fxx": fxx, "fp": fp, "fxp": fxp, "fpp": fpp}


def sympy_derivatives(spec, params: dict, x: np.ndarray) -> dict:
    """50-digit mpmath values of the spec's f, f', f'' (SymPy's own differentiation of the
    spec expression, parameters substituted) at the points x."""
    import mpmath
    import sympy as sp
    from symprop.derive.rewrite import clean_distributions
    e = spec.expr.subs({sp.Symbol(p): v for p, v in params.items()})
    exprs = {"f": e, "fx": clean_distributions(sp.diff(e, spec.var))}
    exprs["fxx"] = clean_distributions(sp.diff(exprs["fx"], spec.var))
    out = {}
    with mpmath.workdps(50):
        for k, ex in exprs.items():
            f = sp.lambdify(spec.var, ex, modules="mpmath")
            out[k] = np.array([float(f(mpmath.mpf(float(v)))) for v in x])
    return out


def oracle(fn, x: np.ndarray, p: np.ndarray | None = None, spec=None, params=None) -> dict:
    """The target values: PyTorch's, except where PyTorch gives NaN at a number. At ±inf
    (inf·0 in its formula though the limit exists) the value at the first of ±1e300, ±1e100,
    ±1e30 where it is not NaN; where float64 PyTorch is NaN at a finite point or at all of
    those (mish's second derivative beyond x ≈ 710: exp overflows in its double backward),
    a 50-digit mpmath value of SymPy's derivative of the spec (at the point, or at ±1e300)."""
    want = {k: v.detach().numpy().copy() for k, v in torch_derivatives(fn, x, p).items()}
    inf = np.isinf(x)
    for far in (1e300, 1e100, 1e30):
        xf = np.where(inf, np.sign(x) * far, x)
        got = {k: v.detach().numpy() for k, v in torch_derivatives(fn, xf, p).items()}
        for k in want:
            fix = inf & np.isnan(want[k]) & ~np.isnan(got[k])
            want[k][fix] = got[k][fix]
    left = ~np.isnan(x) & np.any([np.isnan(want[k]) for k in ("f", "fx", "fxx")], axis=0)
    if left.any():
        assert spec is not None, f"PyTorch gives NaN at {x[left]} and there is no other oracle"
        at = np.where(np.isinf(x[left]), np.sign(x[left]) * 1e300, x[left])
        ref = sympy_derivatives(spec, params, at)
        for k in ("f", "fx", "fxx"):
            bad = np.isnan(want[k][left])
            want[k][np.flatnonzero(left)[bad]] = ref[k][bad]
    return want


def expected_roles(w: dict, a: dict, param: str | None) -> dict:
    """Every role's outputs from f, its derivatives and the role inputs ``a``."""
    fx, fxx = w["fx"], w["fxx"]
    out = {("forward", "y"): w["f"], ("vjp:x", "gx"): a["g"] * fx, ("curv:x", "r"): fxx * a["g"],
           ("bl:x", "hx"): fx ** 2 * a["H"] + fxx * a["g"]}
    if param is None:
        out[("jvp", "Ry")] = fx * a["Rx"]
        out[("rvjp:x", "Rgx")] = fxx * a["Rx"] * a["g"] + fx * a["Rg"]
        out[("forward+jvp", "y")], out[("forward+jvp", "Ry")] = out[("forward", "y")], out[("jvp", "Ry")]
        out[("vjp+rvjp", "gx")], out[("vjp+rvjp", "Rgx")] = out[("vjp:x", "gx")], out[("rvjp:x", "Rgx")]
        return out
    fp, fxp, fpp, Rp = w["fp"], w["fxp"], w["fpp"], a["R" + param]
    out[("jvp", "Ry")] = fx * a["Rx"] + fp * Rp
    out[("rvjp:x", "Rgx")] = fxx * a["Rx"] * a["g"] + fxp * Rp * a["g"] + fx * a["Rg"]
    out[(f"vjp:{param}", "g" + param)] = a["g"] * fp
    out[(f"rvjp:{param}", "Rg" + param)] = fxp * a["Rx"] * a["g"] + fpp * Rp * a["g"] + fp * a["Rg"]
    out[(f"bl:{param}", "h" + param)] = fp ** 2 * a["H"] + fpp * a["g"]
    out[(f"sqvjp:{param}", "s" + param)] = fp ** 2       # S = 1, w = 1
    return out


def role_inputs(n: int, dtype, rng, param: str | None = None) -> dict:
    """Upstream gradients, directions and the Hessian diagonal: random, magnitudes in [0.5, 2]."""
    names = ["g", "Rx", "Rg", "H"] + (["R" + param] if param else [])
    return {k: (rng.choice([-1, 1], n) * rng.uniform(0.5, 2, n)).astype(dtype) for k in names}


def assert_matches(got: np.ndarray, want: np.ndarray, x: np.ndarray, dtype, what: str, skip=None):
    """NaN at every NaN input; elsewhere the target: NaN where it is NaN, the same infinity, or
    within the tolerance relative to max(|target|, 1)."""
    got = np.asarray(got, np.float64).reshape(-1)
    with np.errstate(over="ignore"):   # a value beyond float32's range is inf there
        want = np.asarray(want, np.float64).astype(dtype).astype(np.float64)   # rounded to the dtype
    nan_in = np.isnan(x)
    assert np.isnan(got[nan_in]).all(), f"{what}: NaN input gave {got[nan_in]}"
    check = ~nan_in if skip is None else ~nan_in & ~skip
    g, w, xs = got[check], want[check], x[check]
    same_special = (np.isnan(g) & np.isnan(w)) | (np.isinf(w) & (g == w))
    with np.errstate(all="ignore"):
        err = np.where(same_special, 0.0, np.abs(g - w) / np.maximum(np.abs(w), 1.0))
    bad = ~(err <= TOL[dtype])
    assert not bad.any(), f"{what}: at x={xs[bad][:4]} got {g[bad][:4]}, want {w[bad][:4]}"


def _run(K, role, env, dtype, scalars, shapes):
    return K.run_named(role, env, dtype, scalars, shapes)


def _activation_cases():
    specs = _specs("ACTIVATIONS")
    for name in sorted(specs):
        defaults = {p: float(v) for p, v in specs[name].params}
        for i, ps in enumerate(param_sets(defaults)):
            yield pytest.param(name, ps, id=f"{name}-{i}")


@pytest.mark.parametrize("name, params", list(_activation_cases()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_activation_role_at_nan_inf_and_float32_max(name, params, dtype):
    specs = _specs("ACTIVATIONS")
    functional = FUNCTIONAL.get(name)
    fn = (lambda t: functional(t, **params)) if functional else torch_activation(specs[name], **params)
    x64 = points(len(name) + 7 * len(params))
    x = x64.astype(dtype)
    x64 = x.astype(np.float64)            # the points the kernel sees
    want = expected_roles(oracle(fn, x64, spec=specs[name], params=params), role_inputs(x.size, np.float64, np.random.default_rng(1)), None)
    a = {k: v.astype(dtype) for k, v in role_inputs(x.size, np.float64, np.random.default_rng(1)).items()}
    K = SpecKernels(ACT, name)
    shapes = {"x": x.shape, "y": x.shape}
    y = _run(K, "forward", {"x": x}, dtype, params, shapes)["y"]
    env = {"x": x, "y": y, **a}
    # PyTorch agrees at NaN on the forward pass (in both its dtypes)
    for tdt in (torch.float32, torch.float64):
        assert torch.isnan(fn(torch.tensor([np.nan], dtype=tdt))).all()
    kink = (x64 == 0) if name in KINKED else None
    seen = set()
    for role in K.roles:
        outs = _run(K, role, env, dtype, params, shapes)
        for o, got in outs.items():
            seen.add((role, o))
            assert_matches(got, want[(role, o)], x64, dtype, f"{name}{params} {role}:{o}",
                           skip=None if role == "forward" or (role, o) == ("forward+jvp", "y") else kink)
    assert seen == {k for k in want if k[0] in K.roles}, (name, seen ^ set(want))
    assert {"forward", "vjp:x", "jvp", "rvjp:x", "bl:x"} <= set(K.roles)


def _prelu(t, a):
    return F.prelu(t.reshape(1, -1), a.reshape(-1)).reshape(-1)


def _swish(t, b):
    return t * torch.sigmoid(b * t)


LEARNABLE_TORCH = {"prelu": _prelu, "swish_learnable": _swish}


def _learnable_cases():
    specs = _specs("LEARNABLE")
    assert set(specs) == set(LEARNABLE_TORCH)
    for name in sorted(specs):
        (p, d), = [(p, float(v)) for p, v in specs[name].params]
        for v in (d, 2 * d, d / 2, -d, 10 * d, d / 10, -2 * d):
            yield pytest.param(name, p, v, id=f"{name}-{v}")


@pytest.mark.parametrize("name, param, value", list(_learnable_cases()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_learnable_activation_role_at_nan_inf_and_float32_max(name, param, value, dtype):
    """One channel per point (x of shape (1, P, 1), the parameter of shape (P,)), so that the
    parameter's pullbacks — sums over the batch and the pixels — are per point."""
    x = points(3 + len(name)).astype(dtype)
    x64 = x.astype(np.float64)
    P = x.size
    pv = np.full(P, value)
    fn = LEARNABLE_TORCH[name]
    want = expected_roles(oracle(fn, x64, pv), role_inputs(P, np.float64, np.random.default_rng(2), param), param)
    a = {k: v.astype(dtype).reshape(1, P, 1)
         for k, v in role_inputs(P, np.float64, np.random.default_rng(2), param).items()}
    a["R" + param] = a["R" + param].reshape(P)
    K = SpecKernels(LEARN, name)
    xs = x.reshape(1, P, 1)
    shapes = {"x": xs.shape, "y": xs.shape, param: (P,)}
    env = {"x": xs, param: pv.astype(dtype), **a, "S": np.ones((1, 1, P, 1), dtype), "w": np.ones((1, 1), dtype)}
    env["y"] = _run(K, "forward", env, dtype, {}, shapes)["y"]
    kink = (x64 == 0) if name in KINKED else None
    seen = set()
    for role in K.roles:
        outs = _run(K, role, env, dtype, {}, shapes)
        for o, got in outs.items():
            seen.add((role, o))
            assert_matches(got, want[(role, o)], x64, dtype, f"{name}({param}={value}) {role}:{o}",
                           skip=None if role == "forward" else kink)
    assert seen == {k for k in want if k[0] in K.roles}, (name, seen ^ set(want))


@pytest.mark.parametrize("make", ["ReLU", "LeakyReLU", "GELU", "SiLU", "Mish", "SoftPlus", "PReLU"])
def test_layers_pass_nan_through_forward_and_backward(make):
    """The reported reproduction through the public layer API: L.ReLU().forward(NaN) is NaN,
    and so is the gradient it passes back."""
    from symprop import layers as L
    layer = getattr(L, make)()
    if make == "PReLU":
        layer.init_parameters(np.float32, np.random.default_rng(0))
    x = np.array([[np.nan, 1.0, -np.inf, np.inf]], np.float32)
    y, rec = layer.forward(x)
    assert np.isnan(y[0, 0]) and np.isfinite(y[0, 1])
    gx = layer.vjp(rec, np.ones_like(y))[0]
    assert np.isnan(gx[0, 0]) and np.isfinite(gx[0, 1:]).all()
