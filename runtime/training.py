"""The training loop behind ``Sequential.fit``: shuffled mini-batches, the optimizer's step,
callbacks, metrics, augmentation, the divergence guards, validation and MPI sharding.

Everything here is composition: the gradients and curvature come from the model's passes and
the update from the optimizer's generated kernels.
"""
from __future__ import annotations

import functools
import sys
import time

import numpy as np

from . import callbacks as C
from . import metrics as M
from .optimizer_defaults import DIVERGENCE_FACTOR  # noqa: F401 (fit's default, re-exported)


class TrainingDiverged(ValueError, FloatingPointError):
    """``fit`` stopped on a non-finite loss or a loss past the divergence bound; the model keeps
    the weights before the step that led there (the optimizer's state, e.g. momentum, is that
    after the last step: make a new optimizer before training on) and ``history`` holds the
    completed epochs."""


def split(model, X, y, validation_split, validation_data):
    """Training arrays and validation arrays (or None). A split is a fixed random subset of
    the training data (drawn from the model's seed, so the same in every fit call)."""
    if validation_split is None or validation_split == 0:
        if validation_data is None:
            return X, y, None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("fit: validation_data must be a pair (X_val, y_val)")
        return X, y, model._check_batch(*validation_data)
    if validation_data is not None:
        raise ValueError("fit: give validation_data or validation_split, not both")
    from .optimizers import check_real
    f = check_real("fit", "validation_split", validation_split, low=0, low_open=True, high=1)
    n_val = int(round(len(X) * f))
    if n_val < 1 or n_val >= len(X):
        raise ValueError(f"fit: validation_split={validation_split} of {len(X)} samples leaves "
                         f"{n_val} for validation and {len(X) - n_val} for training")
    perm = np.random.default_rng([model.seed if isinstance(model.seed, int) else 0, 0x5eed]).permutation(len(X))
    val, tr = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return X[tr], y[tr], (X[val], y[val])


def evaluate_sharded(model, val, dist, metrics) -> dict:
    """``model.evaluate`` with each rank on its contiguous part of the validation data: the loss
    and accuracy sums reduced across ranks, the other metrics computed from every rank's
    outputs gathered (so all ranks report the values one process would)."""
    Xv, yv = val
    s0, s1 = dist.shard(0, len(Xv))
    outs = model.outputs(Xv[s0:s1]) if s1 > s0 else np.zeros((0,) + model.output_shape, model.dtype)
    loss_sum, correct, count = 0.0, 0, 0
    if s1 > s0:
        loss_sum = model.loss.value(outs, yv[s0:s1]) * (s1 - s0)
        c = model.loss.correct(outs, yv[s0:s1])
        correct, count = c if c is not None else (0, 0)
    loss_sum, correct, count, total = dist.sum([loss_sum, correct, count, s1 - s0])
    out = {"loss": loss_sum / total + model.penalty_value()}
    if model.loss.classification:
        out["accuracy"] = correct / max(count, 1)
    if metrics:
        out.update(M.compute(metrics, yv, dist.gather(outs), model.loss))
    return out


def _check_factor(v):
    if v is None:
        return None
    from .optimizers import check_real
    return check_real("fit", "divergence_factor", v, low=1, low_open=True)


def _diverged(hist, msg: str) -> TrainingDiverged:
    exc = TrainingDiverged(msg)
    exc.history = hist
    return exc


class _Batches:
    """The fit loop's per-epoch batch bounds: a last batch too small for batch statistics (two
    samples) or for every rank to get a share joins the one before."""

    def __init__(self, n: int, batch_size: int, smallest: int):
        self.bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
        if len(self.bounds) > 1 and self.bounds[-1][1] - self.bounds[-1][0] < smallest:
            self.bounds[-2:] = [(self.bounds[-2][0], n)]


def fit(model, X, y, *, epochs, batch_size, optimizer, validation_data, validation_split, early_stopping,
        restore_best, schedule, clip_norm, clip_value, verbose, seed, dist, callbacks, metrics, augment,
        divergence_factor):
    """``Sequential.fit``'s loop (see its docstring for the arguments)."""
    from . import augment as A
    from .optimizers import Adam, _all_finite, check_int, check_real, get_optimizer
    from .schedules import get_schedule
    epochs = check_int("fit", "epochs", epochs)
    batch_size = check_int("fit", "batch_size", batch_size)
    if clip_norm is not None:
        clip_norm = check_real("fit", "clip_norm", clip_norm, low=0, low_open=True)
    if clip_value is not None:
        clip_value = check_real("fit", "clip_value", clip_value, low=0, low_open=True)
    factor = _check_factor(divergence_factor)
    if verbose is None:
        verbose = 1
    cbs = C.check_callbacks(callbacks)
    if early_stopping is not None:   # first, so the other callbacks' on_train_end see the restored weights
        cbs.insert(0, C.EarlyStopping(check_int("fit", "early_stopping", early_stopping), restore_best=restore_best,
                                      verbose=verbose))
    # accuracy is always reported for a classifier; a metric that does not fit the loss fails here
    metric_list = [M.check_applicable(m, model.loss) for m in M.get_metrics(metrics)
                   if m.name != "accuracy" or not model.loss.classification]
    transform = None if augment is None else A.get_transform(augment)
    X, y = model._check_batch(X, y)
    X, y, val = split(model, X, y, validation_split, validation_data)
    if transform is not None:   # a transform that cannot take these batches fails before training
        _augmented(transform, X[:2], model, np.random.default_rng(0))
    keys = _log_keys(model, metric_list, val is not None)
    for c in cbs:
        _check_monitor(c, keys, early_stopping)
    optimizer = Adam() if optimizer is None else get_optimizer(optimizer)
    optimizer.check_dtype(model.dtype)
    if dist is not None:
        from .distributed import fingerprint
        shuffle = getattr(model, "_shuffle_rng", None)
        dist.check_same("model or data", {
            "layers": [la.config() for la in model.layers], "dtype": model.dtype.name, "loss": model.loss.name,
            "X": X.shape, "y": y.shape, "val": None if val is None else val[0].shape,
            "data": fingerprint(X, y, *(val or ())), "weights": fingerprint(*model.parameters(), *model.buffers()),
            "model_seed": model.seed, "rng": model.rng.bit_generator.state,
            "shuffle": None if seed is not None or shuffle is None else shuffle.bit_generator.state,
            "batch_size": batch_size, "epochs": epochs, "optimizer": repr(optimizer), "seed": seed,
            "augment": A.describe(transform), "callbacks": [type(c).__name__ for c in cbs],
            "metrics": [m.name for m in metric_list]})
        if batch_size < dist.size:
            raise ValueError(f"fit(distributed=True): batch_size {batch_size} is smaller than the "
                             f"{dist.size} ranks (each rank needs a share of every batch)")
        dist.broadcast(model.parameters() + model.buffers())
    sched = None if schedule is None else get_schedule(schedule, epochs)
    if sched is not None and not hasattr(optimizer, "initial_lr"):
        optimizer.initial_lr = optimizer.lr
    if seed is not None:
        from .model import check_seed
        seed = check_seed("fit", seed)
    if seed is not None or getattr(model, "_shuffle_rng", None) is None:
        model._shuffle_rng = np.random.default_rng(model.seed if seed is None else seed)
        # augmentation draws from its own generator, seeded alike, so fit(seed=s) repeats a run
        model._augment_rng = np.random.default_rng([model.seed if seed is None else seed, 0xa06])
    rng = model._shuffle_rng
    bar = None
    if verbose and sys.stdout.isatty():
        try:
            from tqdm.auto import tqdm as bar
        except ImportError:
            bar = None
    params = model.parameters()
    was_training = model.training
    model.train()   # fit trains in train mode (batch statistics, dropout), as PyTorch
    model.stop_training = False
    model._fit_rank = dist.rank if dist is not None else 0
    for c in cbs:
        c.set_model(model)
    state = params + model.buffers()   # what a restore puts back: weights and running statistics
    last_good = [p.copy() for p in state]
    hist = {k: [] for k in keys}
    bounds = _Batches(len(X), batch_size, max(2 if model.buffers() else 1, dist.size if dist else 1)).bounds
    n_batches = len(bounds)
    best_loss, best_epoch, reference, epoch = np.inf, None, None, 0
    pbar = None

    def restore():
        for p, g in zip(state, last_good):
            np.copyto(p, g)

    def stop_requested() -> bool:   # every rank agrees (one rank's callback may decide alone)
        return dist.any(model.stop_training) if dist is not None and cbs else model.stop_training

    try:
        for c in cbs:
            c.on_train_begin({"epochs": epochs, "batches": n_batches})
        done = 0
        for epoch in range(1, epochs + 1):
            if sched is not None:
                optimizer.lr = sched.lr_at(sched.epoch, optimizer.initial_lr)
                sched.epoch += 1
            for c in cbs:
                c.on_epoch_begin(epoch, {"lr": optimizer.lr})
            if stop_requested():
                break
            t0 = time.perf_counter()
            order = rng.permutation(len(X))
            total, correct, count, seen = 0.0, 0, 0, 0
            outs, targets = [], []
            pbar = bar(total=n_batches, desc=f"epoch {epoch}/{epochs}", leave=True, file=sys.stdout,
                       dynamic_ncols=True) if bar else None
            for b, (i, j) in enumerate(bounds, start=1):
                xb, yb = X[order[i:j]], y[order[i:j]]
                if transform is not None:   # the whole global batch on every rank: the draws one process makes
                    xb = _augmented(transform, xb, model)
                if dist is not None:   # this rank's shard; the optimizer averages over ranks
                    s0, s1 = dist.shard(i, j)
                    xb, yb = xb[s0 - i:s1 - i], yb[s0 - i:s1 - i]
                    optimizer._reduce = functools.partial(dist.average, weight=s1 - s0, total=j - i)
                for c in cbs:
                    c.on_batch_begin(b, {"size": j - i})
                loss, grads, tape = optimizer.loss_and_grad(model, xb, yb)   # X, y validated once above
                where = lambda: f"at epoch {epoch}, batch {b}/{n_batches} ({_step_sizes(model, optimizer)})"  # noqa: E731
                if not np.isfinite(loss) and reference is None:   # no step taken yet: the step sizes are innocent
                    restore()
                    big = f", targets up to {float(np.abs(yb).max()):.3g}" if yb.dtype.kind == "f" and yb.size else ""
                    raise _diverged(hist, f"fit: the loss is {loss} on the first batch, before any step: the data "
                                          f"overflow the model's {model.dtype} at its current weights (inputs up to "
                                          f"{float(np.abs(xb).max()):.3g}{big}); scale the inputs or targets, or use "
                                          f"dtype='float64'")
                if not np.isfinite(loss):
                    restore()
                    raise _diverged(hist, f"fit: the loss became {loss} {where()}; training stopped with the weights "
                                          f"of the last finite loss; lower the step sizes named (the learning rate "
                                          f"first) or clip the gradients (clip_norm=)")
                if reference is None:
                    reference = max(abs(loss), _uninformed_loss(model, tape.out, yb, dist))
                elif factor is not None and reference > 0 and loss > factor * reference:
                    restore()
                    raise _diverged(hist, f"fit: the loss grew to {loss:.4g} {where()}, more than divergence_factor="
                                          f"{factor:g} times {reference:.4g} (the first batch's loss, or an "
                                          f"uninformed predictor's if larger); training stopped with the weights "
                                          f"before that step; lower the learning rate, or turn this check off "
                                          f"(fit(divergence_factor=None), symprop train --divergence-factor none)")
                c_ = model.loss.correct(tape.out, yb)
                if c_ is not None:
                    correct, count = correct + c_[0], count + c_[1]
                if metric_list:
                    outs.append(np.array(tape.out, copy=True))
                    targets.append(yb)
                total += loss * (j - i)      # the global batch's mean loss (all ranks agree)
                seen += j - i
                if clip_value is not None:
                    for g in grads:
                        np.clip(g, -clip_value, clip_value, out=g)
                if clip_norm is not None:
                    norm = global_norm(grads)
                    if norm > clip_norm:
                        for g in grads:
                            g *= clip_norm / (norm + 1e-6)
                for p, g in zip(state, last_good):
                    np.copyto(g, p)
                optimizer.step(params, grads)
                if pbar:
                    pbar.update(1)
                    pbar.set_postfix_str(f"loss {total / seen:.4f}", refresh=False)
                for c in cbs:
                    c.on_batch_end(b, {"size": j - i, "loss": loss, "lr": optimizer.lr})
                if cbs and stop_requested():
                    break
            done = epoch
            with np.errstate(invalid="ignore", over="ignore"):   # a sum per weight array, once per epoch
                finite = all(_all_finite(p) for p in params)
            if not finite:
                restore()   # the epoch's last step overflowed a weight: no later loss would show it
                raise _diverged(hist, f"fit: a weight became NaN or inf in the last step of epoch {epoch} "
                                      f"({_step_sizes(model, optimizer)}); training stopped with the weights "
                                      f"before that step; lower the step sizes named")
            if dist is not None:
                optimizer._reduce = None
                correct, count = (int(v) for v in dist.sum([correct, count]))
                if model.buffers():   # per-rank batch statistics: rank 0's running statistics win
                    dist.broadcast(model.buffers())
            logs = {"loss": total / seen}
            msg = f"loss {logs['loss']:.4f}"
            if model.loss.classification:
                logs["accuracy"] = correct / max(count, 1)
                msg += f"  acc {logs['accuracy']:.4f}"
            if metric_list:
                out_all, y_all = np.concatenate(outs), np.concatenate(targets)
                if dist is not None:   # every rank's shards: the metrics one process would report
                    out_all, y_all = dist.gather(out_all), dist.gather(y_all)
                logs.update(M.compute(metric_list, y_all, out_all, model.loss))
                msg += "".join(f"  {m.name} {logs[m.name]:.4f}" for m in metric_list if np.isscalar(logs[m.name]))
            if val is not None:
                ev = model.evaluate(*val, metrics=metric_list) if dist is None else \
                    evaluate_sharded(model, val, dist, metric_list)
                logs.update({"val_" + k: v for k, v in ev.items()})
                msg += "".join(f"  val_{k} {v:.4f}" for k, v in ev.items() if np.isscalar(v)).replace(
                    "val_accuracy", "val_acc")
                if ev["loss"] < best_loss:
                    best_loss, best_epoch = ev["loss"], epoch
            logs["lr"] = optimizer.lr
            logs["time"] = time.perf_counter() - t0
            msg += f"  lr {optimizer.lr:.3g}"
            for k in keys:
                hist[k].append(logs[k])
            if pbar:
                pbar.set_postfix_str(msg, refresh=True)
                pbar.close()
                pbar = None
            elif verbose:
                print(f"epoch {epoch}/{epochs}  {msg}  ({logs['time']:.2f} s)", flush=True)
            for c in cbs:
                c.on_epoch_end(epoch, logs)
            if stop_requested():
                break
        hist["stopped_epoch"] = done
        hist["best_epoch"] = best_epoch
        for c in cbs:
            c.on_train_end({"stopped_epoch": done, "best_epoch": best_epoch})
        return hist
    finally:
        if pbar:
            pbar.close()
        optimizer._reduce = None
        model.stop_training = False
        model.train(was_training)


def _step_sizes(model, optimizer) -> str:
    """The optimizer and every hyperparameter that scales a step (for a divergence message:
    the cause may be a weight decay or penalty rather than the learning rate)."""
    parts = [f"{type(optimizer).__name__} lr={optimizer.lr:g}"]
    for attr in ("weight_decay", "damping"):
        v = getattr(optimizer, attr, 0.0)
        if v and (attr != "damping" or v < 1e-6):
            parts.append(f"{attr}={v:g}")
    parts += [f"{k}={getattr(model, k):g}" for k in ("l1", "l2") if getattr(model, k)]
    return ", ".join(parts)


def _log_keys(model, metrics, validation: bool) -> list[str]:
    """The per-epoch history keys and ``logs`` entries, in order."""
    keys = ["loss"] + (["accuracy"] if model.loss.classification else []) + [m.name for m in metrics]
    if validation:
        keys += ["val_" + k for k in keys]
    return keys + ["lr", "time"]


def _check_monitor(callback, keys, early_stopping) -> None:
    """A callback that watches a log entry fit will not report fails before training."""
    watches = isinstance(callback, C.EarlyStopping) or getattr(callback, "best_only", False)
    monitor = getattr(callback, "monitor", None)
    if not watches or monitor in keys:
        return
    who = "early_stopping" if early_stopping is not None and monitor == "val_loss" else \
        f"{type(callback).__name__}(monitor={monitor!r})"
    if monitor.startswith("val_") and monitor[4:] in keys:
        raise ValueError(f"fit: {who} monitors the validation data; give validation_split or validation_data")
    raise ValueError(f"fit: {who} monitors {monitor!r}, which this fit does not report; it reports "
                     f"{', '.join(keys)} (add the metric to metrics=[...])")


def _uninformed_loss(model, out, y, dist) -> float:
    """The loss of zero outputs on this batch (ln K for softmax cross-entropy, ln 2 for sigmoid
    cross-entropy, mean y² for MSE): the divergence bound's floor. Averaged over ranks."""
    v = float(model.loss.value(np.zeros_like(out), y))
    if dist is not None:
        total, n = dist.sum([v * len(out), len(out)])
        v = total / max(n, 1)
    return v if np.isfinite(v) else 0.0


def global_norm(grads) -> float:
    """The L2 norm of all gradients together, the same on any thread count (pairwise sums, not
    BLAS dot, which OpenBLAS threads on long vectors: a float64 dot of 10^6 elements differed
    between 1 and 2 threads) and finite whenever every entry is (if the squares overflow the
    dtype, float32 entries past ~1e19, they are summed again in float64 after scaling)."""
    with np.errstate(over="ignore"):
        total = sum(float(np.add.reduce(np.square(g), axis=None)) for g in grads)
    if np.isfinite(total):
        return float(np.sqrt(total))
    big = max(float(np.max(np.abs(g))) for g in grads if g.size)
    scaled = (np.asarray(g, np.float64) / big for g in grads)
    return big * float(np.sqrt(sum(float(np.add.reduce(np.square(s), axis=None)) for s in scaled)))


def _augmented(transform, xb, model, rng=None):
    """The transformed batch (drawn from the fit's augmentation generator), checked: same
    shape, finite, in the model's dtype."""
    out = transform(xb, model._augment_rng if rng is None else rng)
    if not isinstance(out, np.ndarray) or out.shape != xb.shape:
        raise ValueError(f"fit(augment=): the transform returned {getattr(out, 'shape', type(out).__name__)} "
                         f"for a batch of shape {xb.shape}; it must keep the shape")
    out = np.ascontiguousarray(out, dtype=model.dtype)
    if not np.isfinite(out).all():
        raise ValueError("fit(augment=): the transform produced NaN or inf values")
    return out
