"""Hessian diagonals and the full Hessian of a :class:`Sequential`'s mean batch loss.

All second derivatives come from generated kernels (the loss HVP, the layers' R-op and
residual kernels); this module only composes them:

- ``hutchinson``: ``mean_s v_s ⊙ H v_s`` over Rademacher ``v_s`` (exact HVPs, one shared
  forward/backward pass);
- ``gauss_newton`` / ``exact``: BackPACK-style backprop of a symmetric factorization
  ``H_out = S diag(w) Sᵀ`` of the Hessian w.r.t. the network output (the per-sample loss
  Hessian, built from the loss's HVP kernel and factored by ``eigh``). Each parameter's
  diagonal is ``Σ_columns w·(per-sample gradient of the column)²``. ``exact`` also starts a
  new factor group at every activation: ``diag(f''(x)·ḡ)``, the second-order residual, so
  the result is the true diagonal. Columns cost memory ``K × N × units``; see
  :data:`MAX_FACTOR_ELEMENTS`;
- ``becker_lecun``: backprop of the diagonal alone (Becker & LeCun 1988), squared Jacobian
  entries times the output diagonal plus the residual, off-diagonal terms dropped;
- :func:`full_hessian`: one HVP per unit direction, for tiny models (Newton).
"""
from __future__ import annotations

import numpy as np

#: "exact"/"gauss_newton" refuse factor groups larger than this many array elements
#: (columns × batch × units at one layer; 2**26 float64 elements = 512 MiB).
MAX_FACTOR_ELEMENTS = 2 ** 26
#: :func:`full_hessian` (and the Newton optimizer) refuse models with more parameters.
MAX_FULL_HESSIAN_PARAMS = 5000

METHODS = ("exact", "gauss_newton", "becker_lecun", "hutchinson")


def rademacher(params: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Independent ±1 entries shaped like ``params`` (Hutchinson's probe vectors), one random
    bit each (5x faster than ``rng.integers``)."""
    out = []
    for p in params:
        bits = np.unpackbits(np.frombuffer(rng.bytes((p.size + 7) // 8), np.uint8), count=p.size).view(np.int8)
        v = np.empty(p.shape, p.dtype)
        np.multiply(bits.reshape(p.shape), 2, out=v)
        v -= 1
        out.append(v)
    return out


def _check_size(n_elements: int, where: str):
    if n_elements > MAX_FACTOR_ELEMENTS:
        raise ValueError(f"hessian_diagonal: the factor at {where} would hold {n_elements:,} elements "
                         f"(limit MAX_FACTOR_ELEMENTS = {MAX_FACTOR_ELEMENTS:,}); use a smaller batch, "
                         f"method='becker_lecun' or method='hutchinson'")


def diagonal_factor(r: np.ndarray, where: str = "a layer"):
    """Factor ``diag(r)`` (r of shape (N, *shape)) as one column per unit: column k holds
    ``sqrt|r[n,k]|`` at unit k, with sign ``sign(r[n,k])``. Units where r is zero for every
    sample are dropped."""
    n = r.shape[0]
    flat = r.reshape(n, -1)
    units = np.flatnonzero((flat != 0).any(axis=0))
    _check_size(len(units) * flat.size, where)
    S = np.zeros((len(units), n, flat.shape[1]), r.dtype)
    S[np.arange(len(units)), :, units] = np.sqrt(np.abs(flat[:, units])).T
    return S.reshape((len(units),) + r.shape), np.sign(flat[:, units]).T


def loss_factor(model, y):
    """The per-sample loss Hessian at the last forward pass as ``S diag(w) Sᵀ`` (eigh)."""
    out = model._out
    H = model.loss.hessian_blocks(out, y)              # (N, K, K) from the generated HVP kernel
    lam, U = np.linalg.eigh(H.astype(np.float64))      # H[n] = U[n] diag(lam[n]) U[n]ᵀ
    S = U * np.sqrt(np.abs(lam))[:, None, :]           # column k of sample n: S[n, :, k]
    k = S.shape[2]
    _check_size(k * out.size, "the output")
    return (np.ascontiguousarray(S.transpose(2, 0, 1)).reshape((k,) + out.shape).astype(out.dtype),
            np.sign(lam).T.astype(out.dtype))


def _factor_diagonal(model, y, exact: bool):
    groups = [loss_factor(model, y)]
    diag = []
    for k in range(len(model.layers) - 1, -1, -1):
        groups, d = model.layers[k].factor_backprop(groups, model._gs[k], exact, need_input=k > 0)
        diag[:0] = d
    return diag


def _becker_lecun(model, y):
    h = np.ascontiguousarray(np.diagonal(model.loss.hessian_blocks(model._out, y), axis1=1, axis2=2)
                             .reshape(model._out.shape))
    diag = []
    for k in range(len(model.layers) - 1, -1, -1):
        h, d = model.layers[k].diag_backprop(h, model._gs[k])
        diag[:0] = d
    return diag


def hutchinson(model, y, samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``mean_s v_s ⊙ H v_s`` over ``samples`` Rademacher probes at the point of the last
    ``_loss_and_grad(..., keep_output_grads=True)``; one probe is formed in place, several are
    summed in float64."""
    params = model.parameters()
    if samples == 1:
        v = rademacher(params, rng)
        return [np.multiply(vi, h, out=h) for vi, h in zip(v, model._rop(y, v))]
    acc = [np.zeros(p.shape, np.float64) for p in params]
    for _ in range(samples):
        v = rademacher(params, rng)
        for a, vi, hv in zip(acc, v, model._rop(y, v)):
            a += vi * hv
    return [(a / samples).astype(model.dtype) for a in acc]


def _hutchinson(model, y, samples: int, seed):
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"hessian_diagonal: samples must be a positive integer, got {samples!r}")
    return hutchinson(model, y, samples, np.random.default_rng(seed))


def hessian_diagonal(model, X: np.ndarray, y: np.ndarray, method: str, samples: int = 100, seed=None):
    """See :meth:`Sequential.hessian_diagonal` (X and y already validated)."""
    if method not in METHODS:
        raise ValueError(f"hessian_diagonal: unknown method {method!r}; choose from {list(METHODS)}")
    model._loss_and_grad(X, y, keep_output_grads=True)
    if method == "hutchinson":
        return _hutchinson(model, y, samples, seed)
    if method == "becker_lecun":
        return _becker_lecun(model, y)
    return _factor_diagonal(model, y, exact=method == "exact")


def full_hessian(model, X: np.ndarray, y: np.ndarray, max_params: int | None = None):
    """``(loss, grads, H)`` with H the (P × P) float64 Hessian, one exact HVP per column."""
    limit = MAX_FULL_HESSIAN_PARAMS if max_params is None else max_params
    params = model.parameters()
    sizes = [p.size for p in params]
    P = sum(sizes)
    if P > limit:
        raise ValueError(f"full Hessian: the model has {P:,} parameters, above the limit of {limit:,} "
                         f"(a {P}x{P} matrix from {P} HVPs); use hvp() or hessian_diagonal()")
    loss, grads = model._loss_and_grad(X, y, keep_output_grads=True)
    H = np.empty((P, P))
    offsets = np.cumsum([0] + sizes)
    e = [np.zeros_like(p) for p in params]
    for i, p in enumerate(params):
        flat = e[i].reshape(-1)
        for j in range(p.size):
            flat[j] = 1
            H[:, offsets[i] + j] = np.concatenate([h.reshape(-1) for h in model._rop(y, e)])
            flat[j] = 0
    return loss, grads, H
