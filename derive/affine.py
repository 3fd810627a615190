"""Affine index maps (convolution and pooling windows) and the adjoint-map rule.

A window layer reads its input through ``u = h·s + i·d − p`` (output position ``h``,
kernel offset ``i``, stride ``s``, dilation ``d``, padding ``p``; reads outside the input
are zero). Differentiating ``Σ ḡ·y`` with respect to ``x[..., û]`` gives
``KroneckerDelta(û, h·s + i·d − p)`` under a sum over ``h`` and ``i``. SymPy's ``doit``
substitutes ``h = (û + p − i·d)/s`` and silently drops the condition that this is an
integer in range, which is wrong for ``s > 1``. :func:`adjoint_delta` is the rule used
instead: keep the kernel offset enumerated, solve for the output position, and guard the
result with ``[s | û + p − i·d] · [0 ≤ h ≤ H_out − 1]``. The gather in the forward pass
becomes this guarded gather (a scatter, read backwards) in the backward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp


@dataclass(frozen=True)
class AxisMap:
    """One spatial axis of a window read ``in = out·stride + kernel·dilation − padding``."""
    out: sp.Symbol          # output position index (h)
    kernel: sp.Symbol       # kernel offset index (i)
    inp: sp.Symbol          # input position index (u), the canonical index of the input array
    stride: sp.Expr
    dilation: sp.Expr
    padding: sp.Expr
    out_extent: sp.Symbol   # H_out
    kernel_extent: sp.Symbol  # K_h
    in_extent: sp.Symbol    # H_in

    def forward_index(self) -> sp.Expr:
        return self.out * self.stride + self.kernel * self.dilation - self.padding

    def adjoint_index(self) -> sp.Expr:
        """The output position that reads input position ``inp`` through kernel offset ``kernel``."""
        return (self.inp + self.padding - self.kernel * self.dilation) / self.stride

    def adjoint_guard(self) -> sp.Boolean:
        """When the adjoint read is a real output position: ``[s | u + p − i·d]`` and
        ``0 ≤ (u + p − i·d)/s ≤ H_out − 1`` (the guard :func:`adjoint_delta` derives)."""
        return _solution_condition(sp.expand(self.inp + self.padding - self.kernel * self.dilation), self.stride,
                                   (0, self.out_extent - 1))

    def is_forward(self, e: sp.Expr) -> bool:
        return sp.expand(e - self.forward_index()) == 0

    def is_adjoint(self, e: sp.Expr) -> bool:
        return sp.simplify(e - self.adjoint_index()) == 0


def _solution_condition(numer: sp.Expr, coeff: sp.Expr, bounds: tuple) -> sp.Boolean:
    """``numer/coeff`` is an integer in ``[lo, hi]``."""
    val = numer / coeff
    lo, hi = bounds
    cond = [sp.Ge(val, lo), sp.Le(val, hi)]
    if coeff != 1:
        cond.insert(0, sp.Eq(sp.Mod(numer, coeff), 0))
    return sp.And(*cond)


def adjoint_delta(body: sp.Expr, limits: list, solve_for: set) -> tuple[sp.Expr, list, list]:
    """Resolve the affine ``KroneckerDelta(û, φ)`` factors of ``Σ_limits body``.

    ``φ`` must be linear in exactly one summation variable from ``solve_for`` (an output
    position) with a positive integer coefficient; other summation variables in ``φ``
    (kernel offsets) stay summed. Returns the new body, the remaining limits and the
    list of conditions the result is guarded by.
    """
    conds = []
    limits = list(limits)
    for delta in sorted(body.atoms(sp.KroneckerDelta), key=sp.default_sort_key):
        summed = {lim[0] for lim in limits}
        a, b = delta.args
        for phi, target in ((a, b), (b, a)):
            if target.free_symbols & summed:
                continue
            cands = [v for v in phi.free_symbols & summed if v in solve_for]
            if len(cands) != 1:
                continue
            var = cands[0]
            poly = sp.Poly(phi, var)
            if poly.degree() != 1:
                continue
            coeff = poly.coeff_monomial(var)
            if not (coeff.is_integer and coeff.is_positive):
                raise ValueError(f"adjoint of {delta}: coefficient {coeff} of {var} must be a positive integer")
            rest = sp.expand(phi - coeff * var)
            lim = next(lim for lim in limits if lim[0] == var)
            conds.append(_solution_condition(target - rest, coeff, (lim[1], lim[2])))
            body = body.subs(delta, 1).subs(var, (target - rest) / coeff)
            limits.remove(lim)
            break
        else:
            raise NotImplementedError(f"cannot resolve {delta}: not an affine window read "
                                      f"in one of {sorted(map(str, solve_for))}")
    return body, limits, conds
