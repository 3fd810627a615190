"""The derived rules have the forms the textbooks give: saved-output derivatives and op counts for
activations, BatchNorm's and softmax's pullbacks, softmax cross-entropy's p − onehot, the window
layers' adjoint index maps. SymPy only: no compiled kernel, no torch."""
import sympy as sp

from symprop.derive.builtins import AVGPOOL2D, BATCHNORM, CONV2D, MAXPOOL2D, SOFTMAX
from symprop.derive.composite import G, GroupSum, M, derive_composite
from symprop.derive.indexed import derive_contraction


def test_rewriter_uses_saved_output_and_records_op_counts():
    from symprop.derive import builtins, derive_elementwise
    y = sp.Symbol("y")
    t = derive_elementwise(builtins.TANH)
    assert sp.simplify(t.d1.chosen - (1 - y**2)) == 0
    s = derive_elementwise(builtins.SIGMOID)
    assert sp.simplify(s.d1.chosen - y * (1 - y)) == 0
    for d in (t, s):
        for c in (d.d1, d.d2):
            assert c.cost_after <= c.cost_before
    r = derive_elementwise(builtins.RELU)
    assert r.d2.chosen == 0 and not r.d1.chosen.has(sp.Heaviside, sp.DiracDelta)
    sp_ = derive_elementwise(builtins.SOFTPLUS)
    assert not sp_.forward.chosen.has(sp.log) or "log1p" in str(sp_.forward.chosen)


def test_derived_batchnorm_pullback_is_the_known_form():
    d = derive_composite(BATCHNORM)
    g, xhat, gamma, rstd = sp.symbols("g xhat gamma rstd")
    rstd = sp.Symbol("rstd", positive=True)
    mean = lambda e: GroupSum(e) / M  # noqa: E731
    known = gamma * rstd * (G - mean(G) - xhat * mean(G * xhat))
    assert sp.simplify(d.vjp["x"] - known) == 0
    assert sp.simplify(d.vjp["gamma"] - GroupSum(G * xhat)) == 0
    assert d.vjp["beta"] == GroupSum(G)
    # the identities the reductions imply, found from the stages
    assert (sp.Symbol("mu"), GroupSum(xhat), 0) in d.identities
    s = derive_composite(SOFTMAX)
    y = sp.Symbol("y")
    assert sp.simplify(s.vjp["x"] - y * (G - GroupSum(G * y))) == 0
    assert s.atom_rules == {GroupSum(y): 1}


def test_adjoint_maps_are_recorded():
    for spec in (CONV2D, AVGPOOL2D, MAXPOOL2D):
        der = derive_contraction(spec)
        assert der.adjoint_maps["x"] == spec.maps
        assert der.vjps["x"].expr.has(sp.Piecewise)


def test_loss_derivation_reduces_to_p_minus_onehot():
    from symprop.derive.losses import derive_softmax_cross_entropy, p, t, j
    d = derive_softmax_cross_entropy()
    assert d.shift_derivative == 0
    assert sp.simplify(d.grad - (p[j] - t[j])) == 0
