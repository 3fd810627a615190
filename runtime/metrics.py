"""Evaluation metrics for ``evaluate(metrics=)`` and ``fit(metrics=)``: classification metrics
from the confusion matrix, regression metrics from the outputs, each equal to scikit-learn's
function of the same name on the same predictions (the tests compare them).

A metric is a name from :data:`NAMES` (or ``top_<k>_accuracy``, ``precision_micro``, ...) or a
callable ``f(y_true, y_pred) -> value`` that receives what :meth:`Sequential.predict` returns
(class labels for classification losses, outputs otherwise), so scikit-learn's functions can be
passed as they are.
"""
from __future__ import annotations

import re

import numpy as np

__all__ = ["NAMES", "Metric", "get_metric", "get_metrics", "compute", "confusion_matrix", "precision_recall_f1"]


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``C[i, j]``: samples of class i predicted as j (rows true, columns predicted, as sklearn)."""
    return np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def _present(C: np.ndarray) -> np.ndarray:
    """Classes that occur as a label or a prediction (sklearn averages over these)."""
    return (C.sum(axis=0) + C.sum(axis=1)) > 0


def _ratio(num, den):
    """num / den with 0 where den is 0 (sklearn's zero_division default)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def precision_recall_f1(C: np.ndarray, average: str) -> tuple[float, float, float]:
    """Precision, recall and F1 of a confusion matrix, ``average`` "macro" (unweighted mean over
    the classes present), "micro" (global counts) or "weighted" (by class support)."""
    tp = np.diag(C).astype(np.float64)
    pred, true = C.sum(axis=0), C.sum(axis=1)
    if average == "micro":
        p = r = _ratio(tp.sum(), pred.sum())
        return float(p), float(r), float(_ratio(2 * p * r, p + r))
    p, r = _ratio(tp, pred), _ratio(tp, true)
    f = _ratio(2 * p * r, p + r)
    keep = _present(C)
    w = true[keep] / max(true[keep].sum(), 1) if average == "weighted" else None
    return tuple(float(np.average(v[keep], weights=w)) if keep.any() else 0.0 for v in (p, r, f))


class Metric:
    """A named metric: ``value(y_true, out, loss)`` with the network's raw outputs ``out``."""

    def __init__(self, name: str, fn, needs: str):
        self.name, self.fn, self.needs = name, fn, needs   # needs: "labels", "scores" or "values"

    def value(self, y_true: np.ndarray, out: np.ndarray, loss):
        check_applicable(self, loss)
        if self.needs == "values":
            return self.fn(np.asarray(y_true, np.float64).reshape(len(out), -1),
                           np.asarray(out, np.float64).reshape(len(out), -1))
        labels, scores = class_labels(y_true, out, loss)
        if self.needs == "scores":
            return self.fn(labels, scores)
        k = scores.shape[1] if scores.ndim == 2 else 2
        return self.fn(labels, scores.argmax(axis=1) if scores.ndim == 2 else scores, k)


def check_applicable(metric: Metric, loss) -> Metric:
    """``metric`` if it applies to the loss (classification or regression), else a ValueError."""
    if metric.needs == "values" and loss.classification:
        raise ValueError(f"metric {metric.name!r} is a regression metric; the model's loss {loss.name!r} is a "
                         f"classification loss (use accuracy, precision, recall, f1, ...)")
    if metric.needs in ("labels", "scores") and not loss.classification:
        raise ValueError(f"metric {metric.name!r} needs a classification loss; the model's is {loss.name!r} "
                         f"(use mae, mse, rmse or r2)")
    return metric


def class_labels(y_true, out, loss) -> tuple[np.ndarray, np.ndarray]:
    """``(true labels, scores)``: for softmax cross-entropy the integer labels (argmax of
    probability targets) and the logits (N, K); for sigmoid cross-entropy every element is a
    binary decision: labels ``target > 0.5`` and predictions ``logit > 0`` (flattened)."""
    y_true = np.asarray(y_true)
    if out.ndim == 2 and loss.name != "sigmoid_cross_entropy":
        return (y_true.argmax(axis=1) if y_true.ndim == 2 else y_true).astype(np.int64), out
    return (y_true.reshape(-1) > 0.5).astype(np.int64), (out.reshape(-1) > 0).astype(np.int64)


def _top_k(k: int):
    def top_k_accuracy(labels, scores):
        if scores.ndim != 2:
            raise ValueError("top_k_accuracy needs per-class scores (softmax cross-entropy)")
        if k >= scores.shape[1]:
            return 1.0
        kth = np.partition(scores, -k, axis=1)[:, -k]
        # a label counts when fewer than k classes score strictly higher (ties resolved as sklearn:
        # the label's score at least the k-th largest)
        return float(np.mean(scores[np.arange(len(labels)), labels] >= kth))
    return top_k_accuracy


def _accuracy(labels, predicted, k):
    return float(np.mean(labels == predicted))


def _prf(which: int, average: str):
    return lambda labels, predicted, k: precision_recall_f1(confusion_matrix(labels, predicted, k), average)[which]


def _confusion(labels, predicted, k):
    return confusion_matrix(labels, predicted, k)


def _per_class_accuracy(labels, predicted, k):
    C = confusion_matrix(labels, predicted, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(C) / C.sum(axis=1)   # NaN for a class with no samples


def _mae(y, out):
    return float(np.mean(np.abs(y - out)))


def _mse(y, out):
    return float(np.mean((y - out) ** 2))


def _rmse(y, out):
    return float(np.mean(np.sqrt(np.mean((y - out) ** 2, axis=0))))   # per output, then averaged (sklearn)


def _r2(y, out):
    ss_res = ((y - out) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(ss_tot > 0, 1 - _ratio(ss_res, ss_tot), np.where(ss_res > 0, 0.0, 1.0))
    return float(np.mean(r2))


#: every named metric and what it reads
NAMES = {
    "accuracy": (_accuracy, "labels"),
    "top_k_accuracy": (_top_k(5), "scores"),
    "precision": (_prf(0, "macro"), "labels"),
    "recall": (_prf(1, "macro"), "labels"),
    "f1": (_prf(2, "macro"), "labels"),
    "confusion_matrix": (_confusion, "labels"),
    "per_class_accuracy": (_per_class_accuracy, "labels"),
    "mae": (_mae, "values"),
    "mse": (_mse, "values"),
    "rmse": (_rmse, "values"),
    "r2": (_r2, "values"),
}
for _which, _base in enumerate(("precision", "recall", "f1")):
    for _avg in ("macro", "micro", "weighted"):
        NAMES[f"{_base}_{_avg}"] = (_prf(_which, _avg), "labels")


def get_metric(spec) -> Metric:
    """A :class:`Metric` from a name or a callable ``f(y_true, y_pred)``."""
    if isinstance(spec, Metric):
        return spec
    if isinstance(spec, str):
        m = re.fullmatch(r"top_(\d+)_accuracy", spec)
        if m and int(m.group(1)) >= 1:
            return Metric(spec, _top_k(int(m.group(1))), "scores")
        if spec in NAMES:
            return Metric(spec, *NAMES[spec])
        raise ValueError(f"unknown metric {spec!r}; choose from {', '.join(sorted(NAMES))}, top_<k>_accuracy, "
                         f"or pass a function f(y_true, y_pred)")
    if callable(spec):
        name = getattr(spec, "__name__", type(spec).__name__)
        return Metric(name, spec, "predictions")
    raise TypeError(f"a metric is a name or a function f(y_true, y_pred), got {type(spec).__name__}")


def get_metrics(specs) -> list[Metric]:
    """Metrics from a list of names and callables; a repeated name is refused."""
    if specs is None:
        return []
    if isinstance(specs, (str, Metric)) or callable(specs):
        specs = [specs]
    out = [get_metric(s) for s in specs]
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"metrics: {', '.join(dup)} given twice")
    return out


def compute(metrics: list[Metric], y_true, out, loss) -> dict:
    """``{name: value}`` of every metric on targets ``y_true`` and raw outputs ``out``."""
    res = {}
    for m in metrics:
        if m.needs == "predictions":
            res[m.name] = m.fn(np.asarray(y_true), loss.predict(out))
        else:
            res[m.name] = m.value(y_true, out, loss)
    return res
