"""Hessian diagonals and the full Hessian of a :class:`Sequential`'s mean batch loss.

All second derivatives come from generated kernels (the loss HVP, the layers' R-op and
curvature-term kernels); this module only composes them, the sweeps through the layers being the
sweep engine's (:data:`sweep.FACTOR`, :data:`sweep.BECKER_LECUN`):

- ``hutchinson``: ``mean_s v_s ⊙ H v_s`` over Rademacher ``v_s`` (exact HVPs, one shared
  forward/backward pass);
- ``gauss_newton`` / ``exact``: BackPACK-style backprop of a symmetric factorization
  ``H_out = S diag(w) Sᵀ`` of the Hessian w.r.t. the network output (the per-sample loss
  Hessian, built from the loss's HVP kernel and factored by ``eigh``). Each parameter's
  diagonal is ``Σ_columns w·(per-sample gradient of the column)²``. ``exact`` also starts a
  new factor group at every activation: ``diag(f''(x)·ḡ)``, the activation's curvature term, so
  the result is the true diagonal. Columns cost memory ``K × N × units``; see
  :data:`MAX_FACTOR_ELEMENTS`;
- ``becker_lecun``: backprop of the diagonal alone (Becker & LeCun 1988), squared Jacobian
  entries times the output diagonal plus the curvature term, off-diagonal terms dropped;
- :func:`full_hessian`: one HVP per unit direction, for tiny models (Newton).
"""
from __future__ import annotations

import numpy as np

from . import sweep
from .passes import sum_into_slots

#: "exact"/"gauss_newton" refuse factor groups larger than this many array elements
#: (columns × batch × units at one layer; 2**26 float64 elements = 512 MiB).
MAX_FACTOR_ELEMENTS = 2 ** 26
#: :func:`full_hessian` (and the Newton optimizer) refuse models with more parameters.
MAX_FULL_HESSIAN_PARAMS = 5000

METHODS = ("exact", "gauss_newton", "becker_lecun", "hutchinson")


_SIGNS: dict = {}


def _signs(dtype) -> np.ndarray:
    """(256, 8): the ±1 values of each byte's bits, most significant first (unpackbits' order)."""
    t = _SIGNS.get(dtype)
    if t is None:
        bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
        t = _SIGNS[dtype] = 2 * bits.astype(dtype) - 1
    return t


def rademacher(params: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Independent ±1 entries shaped like ``params`` (Hutchinson's probe vectors), one random
    bit each (5x faster than ``rng.integers``); each byte becomes its eight signs in one table
    lookup (one pass, 2x faster than unpacking the bits and scaling them)."""
    out = []
    for p in params:
        b = np.frombuffer(rng.bytes((p.size + 7) // 8), np.uint8)
        out.append(_signs(p.dtype).take(b, axis=0).reshape(-1)[:p.size].reshape(p.shape))
    return out


def check_factor_size(n_elements: int, where: str):
    if n_elements > MAX_FACTOR_ELEMENTS:
        raise ValueError(f"hessian_diagonal: the factor at {where} would hold {n_elements:,} elements "
                         f"(limit MAX_FACTOR_ELEMENTS = {MAX_FACTOR_ELEMENTS:,}); use a smaller batch, "
                         f"method='becker_lecun' or method='hutchinson'")


def loss_hessian_blocks(model, tape) -> np.ndarray:
    """(N, K, K): the per-sample loss Hessian at the tape's point (the loss's HVP kernel, once
    per output unit)."""
    sweep.note(model.loss.name + "_hvp", "hessian_blocks", (tape.out.shape,))
    return model.loss.hessian_blocks(tape.loss_ctx, tape.out, tape.y)


def loss_factor(model, tape):
    """The per-sample loss Hessian at the tape's point as ``S diag(w) Sᵀ`` (eigh)."""
    out = tape.out
    H = loss_hessian_blocks(model, tape)                 # (N, K, K) from the generated HVP kernel
    lam, U = np.linalg.eigh(H.astype(np.float64))      # H[n] = U[n] diag(lam[n]) U[n]ᵀ
    S = U * np.sqrt(np.abs(lam))[:, None, :]           # column k of sample n: S[n, :, k]
    k = S.shape[2]
    check_factor_size(k * out.size, "the output")
    return (np.ascontiguousarray(S.transpose(2, 0, 1)).reshape((k,) + out.shape).astype(out.dtype),
            np.sign(lam).T.astype(out.dtype))


def _diagonal_sweep(model, tape, p, carry, **opts):
    """Run the curvature pass ``p`` (:data:`sweep.FACTOR` or :data:`sweep.BECKER_LECUN`) from
    the output's ``carry`` down the layers; the per-use diagonals land in ``parameters()``
    order (a parameter is used once: shared parameters are refused before)."""
    params, slots = model.param_slots()
    tidy = (lambda groups: [(S, w) for S, w in groups if S.shape[0]]) if p is sweep.FACTOR else None
    _, per_layer, _ = sweep.walk(p, model.layers, tape.records, carry, kept={"g": tape.gs}, need_input=False,
                                 opts=opts, tidy=tidy)   # groups with no columns add nothing
    return sum_into_slots(len(params), slots, per_layer)


def _factor_diagonal(model, tape, exact: bool):
    return _diagonal_sweep(model, tape, sweep.FACTOR, [loss_factor(model, tape)], exact=exact)


def _becker_lecun(model, tape):
    h = np.ascontiguousarray(np.diagonal(loss_hessian_blocks(model, tape), axis1=1, axis2=2).reshape(tape.out.shape))
    return _diagonal_sweep(model, tape, sweep.BECKER_LECUN, h)


def hutchinson(model, tape, samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``mean_s v_s ⊙ H v_s`` over ``samples`` Rademacher probes at the tape's point (after
    ``backward(tape, keep_output_grads=True)``); one probe is formed in place, several are
    summed in float64."""
    v = rademacher(model.parameters(), rng)
    return hutchinson_from(model, tape, v, model.rop(tape, v), samples, rng)


def hutchinson_from(model, tape, v: list, hv: list, samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """:func:`hutchinson` whose first probe ``v`` and its product ``hv`` are already computed
    (AdaHessian gets them from its forward-over-reverse sweep); the other ``samples − 1``
    probes are drawn from ``rng`` and pushed through :meth:`Sequential.rop` on ``tape``."""
    if samples == 1:
        return [np.multiply(vi, h, out=h) for vi, h in zip(v, hv)]
    acc = [(vi * h).astype(np.float64) for vi, h in zip(v, hv)]
    for _ in range(samples - 1):
        v = rademacher(model.parameters(), rng)
        for a, vi, h in zip(acc, v, model.rop(tape, v)):
            a += vi * h
    return [(a / samples).astype(model.dtype) for a in acc]


def _hutchinson(model, tape, samples: int, seed):
    if not isinstance(samples, (int, np.integer)) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"hessian_diagonal: samples must be a positive integer, got {samples!r}")
    if seed is not None:   # NumPy would take a bool or a list, and word a negative seed generically
        from .model import check_seed
        seed = check_seed("hessian_diagonal", seed)
    return hutchinson(model, tape, samples, np.random.default_rng(seed))


def hessian_diagonal(model, X: np.ndarray, y: np.ndarray, method: str, samples: int = 100, seed=None):
    """See :meth:`Sequential.hessian_diagonal` (X and y already validated)."""
    if method not in METHODS:
        raise ValueError(f"hessian_diagonal: unknown method {method!r}; choose from {list(METHODS)}")
    if method != "hutchinson" and model.shares_parameters():
        raise ValueError(f"hessian_diagonal: method={method!r} backpropagates per-use curvature and would "
                         f"drop the cross terms between the uses of a shared parameter; use "
                         f"method='hutchinson' (exact HVPs) or model.hessian() for tied weights")
    tape = model.trace(X, y, checked=True, update_buffers=False)
    model.backward(tape, keep_output_grads=True)
    if method == "hutchinson":
        return _hutchinson(model, tape, samples, seed)
    if method == "becker_lecun":
        diag = _becker_lecun(model, tape)
    else:
        diag = _factor_diagonal(model, tape, exact=method == "exact")
    return model.add_penalty_terms(diag, "curv:x")   # the penalty's own diagonal, l2 (its kernel)


def full_hessian(model, X: np.ndarray, y: np.ndarray, max_params: int | None = None, return_tape=False):
    """``(loss, grads, H)`` with H the (P × P) float64 Hessian, one exact HVP per column
    (and the tape, with ``return_tape``)."""
    limit = MAX_FULL_HESSIAN_PARAMS if max_params is None else max_params
    params = model.parameters()
    sizes = [p.size for p in params]
    P = sum(sizes)
    if P > limit:
        raise ValueError(f"full Hessian: the model has {P:,} parameters, above the limit of {limit:,} "
                         f"(a {P}x{P} matrix from {P} HVPs); use hvp() or hessian_diagonal()")
    tape = model.trace(X, y, checked=True, update_buffers=False)
    loss, grads = tape.loss, model.backward(tape, keep_output_grads=True)
    H = np.empty((P, P))
    offsets = np.cumsum([0] + sizes)
    e = [np.zeros_like(p) for p in params]
    for i, p in enumerate(params):
        flat = e[i].reshape(-1)
        for j in range(p.size):
            flat[j] = 1
            H[:, offsets[i] + j] = np.concatenate([h.reshape(-1) for h in model.rop(tape, e)])
            flat[j] = 0
    return (loss, grads, H, tape) if return_tape else (loss, grads, H)
