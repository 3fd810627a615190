"""The composite kernels' per-group hoisting (codegen/composite.py, ``hoist_group_parts``): every
built-in composite kernel's elementwise outputs, rewritten, equal the derived expressions at
random values, with fewer operations per element; a centred value stays exactly 0 on a
constant group."""
import re

import numpy as np
import pytest
import sympy as sp
from symprop.codegen.composite import _body, composite_kernels, hoist_group_parts
from symprop.derive import builtins
from symprop.derive.composite import derive_composite


def _substituted(defs, outs):
    """The rewritten outputs with every group value replaced by its expression (later values
    may read earlier ones)."""
    res = list(outs)
    for s, e in reversed(defs):
        res = [r.xreplace({s: e}) for r in res]
    return res


def _elem_outputs(spec):
    """(kernel name, element input names, [element output expressions]) of every kernel of a spec,
    Taylor roles to order 2 included."""
    d = derive_composite(spec)
    out = [("forward", d.forward.elem_in, [e for _, e in d.forward.elem_out])]
    roles = dict(d.role_kernels)
    if d.taylor_able:
        roles.update(d.taylor_kernels(2))
    out += [(role, rk.elem_in, [e for _, e in rk.elem_out]) for role, rk in roles.items()]
    return out


@pytest.mark.parametrize("name", sorted(builtins.COMPOSITES))
def test_hoisted_outputs_equal_the_derived_ones(name):
    rng = np.random.default_rng(len(name))
    for role, elem_in, exprs in _elem_outputs(builtins.COMPOSITES[name]):
        if not exprs:
            continue
        defs, outs = hoist_group_parts(exprs, {str(a) for a in elem_in})
        back = _substituted(defs, outs)
        syms = sorted(set().union(*[e.free_symbols for e in exprs]), key=str)
        for _ in range(3):
            vals = {s: sp.Float(rng.uniform(0.5, 2.0)) for s in syms}
            for e, b in zip(exprs, back):
                want, got = complex(e.xreplace(vals).evalf()), complex(b.xreplace(vals).evalf())
                assert abs(got - want) <= 1e-12 * max(1.0, abs(want)), (name, role, e)
        elem = {str(a) for a in elem_in}
        per_element = sum(sp.count_ops(o) for o in outs)
        # never longer per element (up to a negation kept apart from its factor, one per output)
        assert per_element <= sum(sp.count_ops(e) for e in exprs) + len(exprs), (name, role)
        for s, e in defs:   # group values read no element input
            assert not {str(a) for a in e.free_symbols} & elem, (name, role, s, e)


def test_taylor_pullback_of_standardize_is_short_per_element():
    """The order-2 Taylor pullback of LayerNorm's normalisation: affine in each element input
    once hoisted (a handful of products per element instead of ~150 operations)."""
    d = derive_composite(builtins.COMPOSITES["standardize"])
    rk = d.taylor_kernels(2)["vjp:taylor:2"]
    exprs = [e for _, e in rk.elem_out]
    _, outs = hoist_group_parts(exprs, {str(a) for a in rk.elem_in})
    assert sum(sp.count_ops(e) for e in exprs) > 100
    assert sum(sp.count_ops(o) for o in outs) <= 30


def test_a_centred_value_stays_exact():
    x, mu, rstd, gamma, beta = sp.symbols("x mu rstd gamma beta")
    defs, (out,) = hoist_group_parts([gamma * rstd * (x - mu) + beta], {"x"})
    f = sp.lambdify([x, mu, rstd, gamma, beta], _substituted(defs, [out])[0])
    v = 0.1 + 0.2      # a value whose difference from a nearby one would not be exact
    assert f(v, v, 3.7, 1.3, 0.25) == 0.25


def test_the_generated_kernels_compute_group_values_once_per_group():
    k = next(k for k in composite_kernels(derive_composite(builtins.COMPOSITES["standardize"]))
             if k["role"] == "vjp:taylor:2")
    _, _, body = k["bodies"][0]
    assert body["hoisted"] and all(n in body["group_locals"] for n, _ in body["hoisted"])
    assert not any("_sum" in rhs for _, rhs in body["final"]["results"] + body["final"]["temps"])


def test_conditions_and_functions_of_group_values():
    """A user's stage may branch on a group value or apply a function to one: the branch
    condition stays in place, the function's argument is hoisted, values unchanged."""
    x, a, b, s = sp.symbols("x a b s")
    exprs = [sp.Piecewise((x * a * b, s > 0), (x - a, True)), sp.exp(a * b) * x + sp.log(a + b)]
    defs, outs = hoist_group_parts(exprs, {"x"})
    assert defs
    back = _substituted(defs, outs)
    for vals in ({x: 0.3, a: 1.7, b: 0.4, s: 1.0}, {x: -2.0, a: 0.9, b: 1.1, s: -1.0}):
        for e, r in zip(exprs, back):
            assert abs(float(e.subs(vals)) - float(r.subs(vals))) <= 1e-14


def test_group_values_are_printed_after_what_they_read():
    """A value that sums two others (p·q·x + r·s·x: (p·q + r·s)·x) shared between two outputs:
    every printed group statement reads only the passes' values and statements above it."""
    x, p, q, r, s, t = sp.symbols("x p q r s t")
    body = _body("double", [x], [], [], [("y1", p * q * x + r * s * x), ("y2", p * q * x + r * s * x + t * x)])
    done = {"p", "q", "r", "s", "t", "M"}
    for lhs, rhs in body["hoisted"]:
        read = set(re.findall(r"[A-Za-z_]\w*", rhs)) - {"double"}
        assert read <= done, (lhs, rhs, read - done)
        done.add(lhs)


def test_a_stage_named_like_a_group_value_keeps_its_name():
    """A user's group value called _h0 (or _hc0) is not taken for a hoisted value."""
    x, h0, hc0, a = sp.symbols("x _h0 _hc0 a")
    defs, outs = hoist_group_parts([h0 * a * x + hc0 * a], {"x"})
    assert all(str(n) not in ("_h0", "_hc0") for n, _ in defs)
    body = _body("double", [x], [], [], [("y", h0 * a * x + hc0 * a * a * x + hc0 * a)])
    assert not {"_h0", "_hc0"} & {n for n, _ in body["hoisted"]}
