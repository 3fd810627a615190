"""Conv2D's derived input pullback, evaluated element by element from its SymPy expression,
against the scatter of the forward index map (NumPy loops): SymPy only, no kernel, no torch."""
import itertools

import numpy as np
import pytest
import sympy as sp

from symprop.derive.builtins import CONV2D
from symprop.derive.indexed import derive_contraction


def _eval_indexed(expr, arrays: dict, env: dict):
    """Evaluate a derived index expression elementwise (a slow oracle for the derivation itself)."""
    def ev(e):
        if isinstance(e, sp.Sum):
            total = 0.0
            var_ranges = [(v, int(lo.subs(env)), int(hi.subs(env))) for v, lo, hi in e.limits]
            for vals in itertools.product(*[range(lo, hi + 1) for _, lo, hi in var_ranges]):
                total += _eval_indexed(e.function, arrays, {**env, **{v: val for (v, _, _), val in zip(var_ranges, vals)}})
            return total
        if isinstance(e, sp.Piecewise):
            for val, cond in e.args:
                if bool(cond.subs(env)):
                    return ev(val)
            return 0.0
        if isinstance(e, sp.Indexed):
            idx = [e_i.subs(env) for e_i in e.indices]
            a = arrays[str(e.base)]
            if any(not i.is_integer for i in idx):
                raise AssertionError(f"non-integer index {idx} read from {e}")
            idx = [int(i) for i in idx]
            if any(i < 0 or i >= n for i, n in zip(idx, a.shape)):
                return 0.0          # zero padding
            return float(a[tuple(idx)])
        if isinstance(e, (sp.Add, sp.Mul)):
            parts = [ev(a) for a in e.args]
            return sum(parts) if isinstance(e, sp.Add) else float(np.prod(parts))
        return float(e.subs(env))
    return ev(expr)


def _conv_input_gradient(W, g, x_shape, s, p, d):
    """The oracle: conv2d's input gradient by scattering every output's pullback through the
    forward's index map (loops over the forward, no adjoint map involved)."""
    gx = np.zeros(x_shape)
    O, C, KH, KW = W.shape
    for n, o, i, j in itertools.product(range(g.shape[0]), range(O), range(g.shape[2]), range(g.shape[3])):
        for c, a, b in itertools.product(range(C), range(KH), range(KW)):
            u, v = i * s[0] - p[0] + a * d[0], j * s[1] - p[1] + b * d[1]
            if 0 <= u < x_shape[2] and 0 <= v < x_shape[3]:
                gx[n, c, u, v] += W[o, c, a, b] * g[n, o, i, j]
    return gx


@pytest.mark.parametrize("s,p,d", [((2, 3), (1, 0), (2, 1)), ((3, 1), (2, 1), (1, 2))])
def test_derived_conv_adjoint_is_the_input_gradient(s, p, d):
    """The symbolic input gradient (a guarded gather) itself, evaluated element by element, equals
    the scatter of the forward map; without its divisibility guard it reads non-integer indices."""
    der = derive_contraction(CONV2D)
    expr = der.vjps["x"].expr
    rng = np.random.default_rng(0)
    N, C, O, H, W_, k = 1, 2, 2, 6, 5, (2, 2)
    x_shape, W = (N, C, H, W_), rng.normal(size=(O, C) + k)
    H_out = (H + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    W_out = (W_ + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    g = rng.normal(size=(N, O, H_out, W_out))
    sym = {str(v): v for v in expr.free_symbols}
    env = {sym["s_h"]: s[0], sym["s_w"]: s[1], sym["p_h"]: p[0], sym["p_w"]: p[1], sym["d_h"]: d[0],
           sym["d_w"]: d[1], sym["C_out"]: O, sym["K_h"]: k[0], sym["K_w"]: k[1],
           sym["H_out"]: H_out, sym["W_out"]: W_out}
    n, c, u, v = der.vjps["x"].out_indices
    got = np.zeros(x_shape)
    for cc, uu, vv in itertools.product(range(C), range(H), range(W_)):
        got[0, cc, uu, vv] = _eval_indexed(expr, {"W": W, "g": g}, {**env, n: 0, c: cc, u: uu, v: vv})
    want = _conv_input_gradient(W, g, x_shape, s, p, d)
    assert np.max(np.abs(got - want)) < 1e-12 * np.max(np.abs(want))
    # the guard is essential: SymPy's own delta substitution (no divisibility condition) is wrong here
    unguarded = expr.replace(lambda e: isinstance(e, sp.Piecewise), lambda e: e.args[0].expr)
    with pytest.raises(AssertionError, match="non-integer index"):
        _eval_indexed(unguarded, {"W": W, "g": g}, {**env, n: 0, c: 0, u: 1, v: 1})
