"""The contraction family's loop nests (codegen/contraction.py, ``_nests``): every role of the
per-channel scale and shift (``channel_affine``, LayerNorm's and GroupNorm's last part) and the
dense bias against NumPy on random (rows, channels, positions) shapes, positions 1 included (the
variant without the one-trip inner loop) and outputs filled with NaN before the call (a nest that
assigns must not read its output, one that accumulates must start from zero)."""
import numpy as np
import pytest
from support.numeric import rel_err
from symprop.runtime import layers as L


def _call(kernels, role, env, dtype):
    """The bound kernel on our own output arrays, pre-filled with NaN."""
    r = kernels.roles[role]
    args, outs = [], []
    for a in r.call:
        if a in r.outputs:
            like = r.outputs[a][0]
            out = np.full(env[like].shape, np.nan, dtype)
            outs.append(out)
            args.append(out)
        else:
            args.append(env.get(a))
    r.fn(*args)
    return outs[0] if len(outs) == 1 else outs


def _affine_oracles(x, gamma, beta, g, H, Rx, Rgamma, Rbeta, Rg):
    """float64 NumPy: y = γ_c·x + β_c over (n, c, p), its pullbacks, directional derivatives and
    Becker–LeCun curvature; None: an absent direction."""
    c = (None, slice(None), None)
    ga = gamma[c]
    zero = np.zeros_like(x)
    Ry = (0 if Rgamma is None else Rgamma[c] * x) + (0 if Rx is None else ga * Rx) + \
        (0 if Rbeta is None else Rbeta[c] + zero)
    Rgx = (0 if Rg is None else Rg * ga) + (0 if Rgamma is None else Rgamma[c] * g)
    Rgg = (0 if Rg is None else (Rg * x).sum((0, 2))) + (0 if Rx is None else (Rx * g).sum((0, 2)))
    return {"forward": ga * x + beta[c], "vjp:x": g * ga, "vjp:gamma": (g * x).sum((0, 2)),
            "vjp:beta": g.sum((0, 2)), "jvp": Ry + zero, "rvjp:x": Rgx + zero, "rvjp:gamma": Rgg + 0 * gamma,
            "rvjp:beta": (0 * gamma if Rg is None else Rg.sum((0, 2))), "bl:x": H * ga ** 2,
            "bl:gamma": (H * x ** 2).sum((0, 2)), "bl:beta": H.sum((0, 2))}


@pytest.mark.parametrize("seed", range(12))
def test_channel_affine_roles_match_numpy(seed):
    rng = np.random.default_rng(seed)
    n, c = (int(v) for v in rng.integers(1, 6, 2))
    p = 1 if seed % 2 == 0 else int(rng.integers(2, 7))     # LayerNorm's (rows, features, 1) / GroupNorm's
    dtype = np.float64 if seed % 3 else np.float32
    K = L.GroupNorm(1, c).branches()[0][1].kernels
    shape = (n, c, p)
    x, g, H = (rng.normal(size=shape) for _ in range(3))
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    dirs = {"Rx": rng.normal(size=shape), "Rgamma": rng.normal(size=c), "Rbeta": rng.normal(size=c),
            "Rg": rng.normal(size=shape)}
    for name in list(dirs):             # some directions absent (the kernels skip their terms)
        if rng.random() < 0.3:
            dirs[name] = None
    want = _affine_oracles(x, gamma, beta, g, H, **dirs)
    cast = {k: (None if v is None else np.ascontiguousarray(v, dtype))
            for k, v in {"x": x, "gamma": gamma, "beta": beta, "g": g, "H": H, **dirs}.items()}
    tol = 1e-13 if dtype == np.float64 else 2e-5
    for role, w in want.items():
        r = K.roles[role]
        if r.linear_in_directions and all(cast.get(a) is None for a in r.directions):
            continue
        got = _call(K, role, cast, dtype)     # bl: the kernels square x or γ themselves
        assert got.shape == np.shape(w) and np.isfinite(got).all(), (role, shape)
        assert rel_err(got, np.asarray(w)) <= tol, (role, shape, rel_err(got, np.asarray(w)))


@pytest.mark.parametrize("out_features", [1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_bias_nests_match_numpy(out_features, dtype):
    """The bias added after the GEMM (one output column: the variant without the inner loop)
    and its pullback summed over rows."""
    rng = np.random.default_rng(out_features)
    layer = L.Dense(4, out_features)
    K = layer.kernels
    x = rng.normal(size=(7, 4)).astype(dtype)
    W = rng.normal(size=(out_features, 4)).astype(dtype)
    b = rng.normal(size=out_features).astype(dtype)
    g = rng.normal(size=(7, out_features)).astype(dtype)
    y = _call(K, "forward", {"x": x, "W": W, "b": b, "y": g}, dtype)
    gb = _call(K, "vjp:b", {"g": g, "b": b}, dtype)
    tol = 1e-13 if dtype == np.float64 else 2e-5
    assert rel_err(y, x.astype(float) @ W.T.astype(float) + b) <= tol
    assert rel_err(gb, g.astype(float).sum(0)) <= tol
