"""Callbacks for ``fit(callbacks=[...])``: hooks around epochs and batches with Keras's names.

``fit`` calls, in order: ``on_train_begin(logs)``; per epoch ``on_epoch_begin(epoch, logs)``,
per batch ``on_batch_begin(batch, logs)`` and ``on_batch_end(batch, logs)`` (after the step),
then ``on_epoch_end(epoch, logs)`` with the epoch's metrics (``loss``, ``accuracy``,
``val_loss``, ..., ``lr``, ``time``); finally ``on_train_end(logs)``. Epochs and batches
count from 1, as ``fit``'s progress lines and history do.

A callback stops training by setting ``self.model.stop_training = True``: from a batch hook
the epoch ends after that batch (its metrics cover the batches run), from ``on_epoch_end`` no
further epoch starts, from ``on_epoch_begin`` that epoch does not run. In a distributed fit
every rank runs the callbacks and a stop on any rank stops all; files (checkpoints, CSV) are
written by rank 0 only. A callback that raises stops ``fit``, which keeps the weights of the
last completed step and re-raises the exception.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["Callback", "LambdaCallback", "EarlyStopping", "ModelCheckpoint", "CSVLogger"]


class Callback:
    """Base class: override the hooks you need; ``self.model`` is the model being trained."""

    model = None

    def set_model(self, model) -> None:
        self.model = model

    def on_train_begin(self, logs: dict) -> None:
        pass

    def on_train_end(self, logs: dict) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        pass

    def on_batch_begin(self, batch: int, logs: dict) -> None:
        pass

    def on_batch_end(self, batch: int, logs: dict) -> None:
        pass


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_batch_begin", "on_batch_end")

    def __init__(self, **hooks):
        unknown = sorted(set(hooks) - set(self.HOOKS))
        if unknown:
            raise TypeError(f"LambdaCallback: unknown hook(s) {', '.join(unknown)}; choose from {', '.join(self.HOOKS)}")
        for name, fn in hooks.items():
            if not callable(fn):
                raise TypeError(f"LambdaCallback: {name} must be callable, got {type(fn).__name__}")
            setattr(self, name, fn)


def _monitored(logs: dict, monitor: str, owner: str) -> float:
    if monitor not in logs:
        raise ValueError(f"{owner}: monitors {monitor!r}, which this fit does not report (it reports "
                         f"{', '.join(sorted(k for k in logs if np.isscalar(logs[k])))}); give validation data "
                         f"for val_* metrics or choose another monitor")
    return float(logs[monitor])


#: built-in metrics by direction, for ``mode="auto"``
_LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse")
_HIGHER_IS_BETTER = ("accuracy", "precision", "recall", "f1", "r2")


def _mode(monitor: str, mode: str, owner: str) -> str:
    """"min" or "max": given, or known from a built-in metric's name (a user metric's
    direction cannot be guessed from its name: ``mode=`` is then required)."""
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ValueError(f"{owner}: mode must be 'min', 'max' or 'auto', got {mode!r}")
    base = monitor[4:] if monitor.startswith("val_") else monitor
    if base in _LOWER_IS_BETTER:
        return "min"
    if base.split("_")[0] in _HIGHER_IS_BETTER or re.fullmatch(r"top_\d+_accuracy|top_k_accuracy", base):
        return "max"
    raise ValueError(f"{owner}: is a lower or a higher {monitor!r} better? pass mode='min' or mode='max'")


def _writes_files(model) -> bool:
    """Whether this process writes the callbacks' files (rank 0 of a distributed fit, or alone)."""
    return getattr(model, "_fit_rank", 0) == 0


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without an improvement of ``monitor`` by more than
    ``min_delta``; ``restore_best`` puts back the weights (and running statistics) of the best
    epoch. ``fit(early_stopping=N)`` is ``EarlyStopping(N)`` on ``val_loss``."""

    def __init__(self, patience: int = 5, monitor: str = "val_loss", min_delta: float = 0.0, mode: str = "auto",
                 restore_best: bool = True, verbose: int = 1):
        from .optimizers import check_int, check_real
        self.patience = check_int("EarlyStopping", "patience", patience)
        self.min_delta = check_real("EarlyStopping", "min_delta", min_delta, low=0)
        self.monitor, self.mode = monitor, _mode(monitor, mode, "EarlyStopping")
        self.restore_best, self.verbose = bool(restore_best), verbose
        self.best = self.best_epoch = self.stopped_epoch = self.weights = None
        self.wait = 0

    def _better(self, v: float) -> bool:
        if self.best is None:
            return True
        return v < self.best - self.min_delta if self.mode == "min" else v > self.best + self.min_delta

    def on_train_begin(self, logs):
        self.best = self.best_epoch = self.stopped_epoch = self.weights = None
        self.wait = 0

    def on_epoch_end(self, epoch, logs):
        v = _monitored(logs, self.monitor, "EarlyStopping")
        if self._better(v):
            self.best, self.best_epoch, self.wait = v, epoch, 0
            if self.restore_best:
                self.weights = [a.copy() for a in self.model.parameters() + self.model.buffers()]
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                print(f"early stopping: no {'lower' if self.mode == 'min' else 'higher'} {self.monitor} for "
                      f"{self.patience} epochs", flush=True)

    def on_train_end(self, logs):
        if self.restore_best and self.weights is not None and self.best_epoch != logs.get("stopped_epoch"):
            for a, w in zip(self.model.parameters() + self.model.buffers(), self.weights):
                np.copyto(a, w)
            if self.verbose:
                print(f"restored the weights of epoch {self.best_epoch} ({self.monitor} {self.best:.4f})", flush=True)
        self.weights = None


class ModelCheckpoint(Callback):
    """Save the model (``Sequential.save``: atomic, no pickle) every ``every`` epochs, or with
    ``best_only`` whenever ``monitor`` improves. ``path`` may hold ``{epoch}`` (and any epoch
    metric, e.g. ``{val_loss:.3f}``) to keep one file per save."""

    def __init__(self, path, every: int = 1, best_only: bool = False, monitor: str = "val_loss", mode: str = "auto",
                 verbose: int = 0):
        from .optimizers import check_int
        self.path = os.fspath(path)
        self.every = check_int("ModelCheckpoint", "every", every)
        self.best_only, self.monitor = bool(best_only), monitor
        self.mode = _mode(monitor, mode, "ModelCheckpoint")
        self.verbose = verbose
        #: the best monitored value saved so far: kept across fit calls, so a later worse run never
        #: overwrites a better checkpoint (set it to None to start over)
        self.best = None
        self.saved: list[str] = []
        parent = Path(self.path).parent
        if not parent.is_dir():
            raise ValueError(f"ModelCheckpoint: folder {parent} does not exist")

    def on_epoch_end(self, epoch, logs):
        if self.best_only:
            v = _monitored(logs, self.monitor, "ModelCheckpoint")
            if self.best is not None and not (v < self.best if self.mode == "min" else v > self.best):
                return
            self.best = v
        elif epoch % self.every:
            return
        try:
            path = self.path.format(epoch=epoch, **{k: v for k, v in logs.items() if np.isscalar(v)})
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint: cannot fill in the path {self.path!r} ({exc})") from exc
        if not _writes_files(self.model):
            return
        saved = str(self.model.save(path))
        self.saved.append(saved)
        if self.verbose:
            print(f"saved {saved}", flush=True)


class CSVLogger(Callback):
    """One CSV row per epoch (epoch and every scalar metric), flushed as it is written, so a
    crashed run keeps the epochs it finished; ``append`` continues an existing file."""

    def __init__(self, path, append: bool = False):
        self.path, self.append = os.fspath(path), bool(append)
        self.fields = None
        parent = Path(self.path).parent
        if not parent.is_dir():
            raise ValueError(f"CSVLogger: folder {parent} does not exist")

    def on_train_begin(self, logs):
        self.fields = None
        if not _writes_files(self.model):
            return
        if self.append and os.path.exists(self.path) and os.path.getsize(self.path):
            with open(self.path, newline="") as f:
                self.fields = next(csv.reader(f), None)
        elif not self.append or not os.path.exists(self.path):
            open(self.path, "w").close()

    def on_epoch_end(self, epoch, logs):
        if not _writes_files(self.model):
            return
        row = {"epoch": epoch, **{k: v for k, v in logs.items() if np.isscalar(v)}}
        new = self.fields is None
        if new:
            self.fields = list(row)
        elif list(row) != self.fields:
            raise ValueError(f"CSVLogger: {self.path} has the columns {', '.join(self.fields)}; this fit reports "
                             f"{', '.join(row)} (append=True needs the same metrics; use another file)")
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                w.writeheader()
            w.writerow(row)


def check_callbacks(callbacks) -> list[Callback]:
    """The callbacks as a list, each a :class:`Callback` (or an object with its hooks)."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        return [callbacks]
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"fit: callbacks must be a list of Callback objects, got {type(callbacks).__name__}")
    for i, c in enumerate(callbacks):
        if isinstance(c, type) and issubclass(c, Callback):
            raise TypeError(f"fit: callbacks[{i}] is the class {c.__name__}; pass an instance, e.g. {c.__name__}(...)")
        if not all(callable(getattr(c, h, None)) for h in LambdaCallback.HOOKS + ("set_model",)):
            raise TypeError(f"fit: callbacks[{i}] ({type(c).__name__}) is not a Callback (subclass "
                            f"symprop.callbacks.Callback)")
    return list(callbacks)
