"""The built-in specs: activations, the dense layer, losses and optimizer updates."""
from __future__ import annotations

import sympy as sp

from .elementwise import ElementwiseSpec

x = sp.Symbol("x")

TANH = ElementwiseSpec("tanh", sp.tanh(x), x, doc="hyperbolic tangent")
SIGMOID = ElementwiseSpec("sigmoid", 1 / (1 + sp.exp(-x)), x, doc="logistic sigmoid")
RELU = ElementwiseSpec("relu", sp.Max(0, x), x, doc="rectified linear unit")
SOFTPLUS = ElementwiseSpec("softplus", sp.log(1 + sp.exp(x)), x, doc="softplus (stable form)")

ACTIVATIONS = {s.name: s for s in (TANH, SIGMOID, RELU, SOFTPLUS)}

# ---------------------------------------------------------------- dense layer
from .indexed import ContractionSpec  # noqa: E402

n, o, i = sp.symbols("n o i", integer=True)
N, O, I = sp.symbols("N O I", integer=True, positive=True)
_x, _W, _b = sp.IndexedBase("x"), sp.IndexedBase("W"), sp.IndexedBase("b")

DENSE = ContractionSpec(
    name="dense", output="y", out_indices=(n, o),
    expr=sp.Sum(_x[n, i] * _W[o, i], (i, 0, I - 1)) + _b[o],
    inputs={"x": (n, i)}, params={"W": (o, i), "b": (o,)},
    extents={n: N, o: O, i: I}, doc="fully connected layer y = x Wᵀ + b")

CONTRACTIONS = {DENSE.name: DENSE}
