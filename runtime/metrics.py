"""Evaluation metrics for ``evaluate(metrics=)`` and ``fit(metrics=)``: classification metrics
from confusion counts, regression metrics from the outputs, each equal to scikit-learn's
function of the same name on the same predictions (the tests compare them).

A metric is a name from :data:`NAMES` (or ``top_<k>_accuracy``), a callable
``f(y_true, y_pred) -> value`` or a pair ``(name, f)``. A callable receives the true labels
(integer classes; the argmax of probability targets; for ``sigmoid_cross_entropy`` the 0/1
matrix ``target > 0.5``) and what :meth:`Sequential.predict` returns, so scikit-learn's
functions can be passed as they are; for regression losses the targets and outputs.

Label conventions: with softmax cross-entropy the classes are ``0..K-1`` of the K outputs (the
confusion matrix is K×K, as sklearn's with ``labels=range(K)``; macro averages run over the
classes that occur as a label or a prediction, as sklearn's). With sigmoid cross-entropy every
output column is a binary label (multi-label, as sklearn's indicator matrices): precision,
recall and F1 are the positive class's per label, averaged over labels; ``confusion_matrix``
is sklearn's ``multilabel_confusion_matrix`` (L, 2, 2); ``accuracy`` is the fraction of
correct entries (what ``fit`` reports; sklearn's ``accuracy_score`` would count whole rows).
"""
from __future__ import annotations

import re

import numpy as np

__all__ = ["NAMES", "Metric", "get_metric", "get_metrics", "compute", "confusion_matrix", "precision_recall_f1"]

#: names the history uses for other things; a metric function may not take them
RESERVED = ("loss", "lr", "time", "epoch")


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``C[i, j]``: samples of class i predicted as j (rows true, columns predicted, as sklearn)."""
    return np.bincount(labels * n_classes + predicted, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)


def _ratio(num, den):
    """num / den with 0 where den is 0 (sklearn's zero_division default)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def per_class(tp, pred, true):
    """Precision, recall and F1 from true positives, predicted and actual counts (0 where a
    count is 0, as sklearn's zero_division default)."""
    p, r = _ratio(tp, pred), _ratio(tp, true)
    return p, r, _ratio(2 * p * r, p + r)


def _average(tp, pred, true, keep, average: str) -> tuple[float, float, float]:
    """Precision, recall and F1 from per-class counts (true positives, predicted, actual),
    ``average`` over the classes in ``keep``: "macro", "micro" or "weighted" (by support)."""
    if average == "micro":
        p, r, f = per_class(tp[keep].sum(), pred[keep].sum(), true[keep].sum())
        return float(p), float(r), float(f)
    p, r, f = per_class(tp, pred, true)
    if not keep.any():
        return 0.0, 0.0, 0.0
    w = None
    if average == "weighted":
        if true[keep].sum() == 0:
            return 0.0, 0.0, 0.0
        w = true[keep]
    return tuple(float(np.average(v[keep], weights=w)) for v in (p, r, f))


def precision_recall_f1(C: np.ndarray, average: str) -> tuple[float, float, float]:
    """Precision, recall and F1 of a K×K confusion matrix (sklearn's, the classes present)."""
    tp, pred, true = np.diag(C).astype(np.float64), C.sum(axis=0), C.sum(axis=1)
    return _average(tp, pred, true, (pred + true) > 0, average)


def multilabel_counts(Y: np.ndarray, P: np.ndarray):
    """Per-label true positives, predicted positives and actual positives of 0/1 matrices."""
    return (Y & P).sum(axis=0).astype(np.float64), P.sum(axis=0), Y.sum(axis=0)


class Metric:
    """A metric: ``fn`` and what it reads (``needs``): "labels" (true and predicted classes),
    "scores" (true classes and per-class scores), "values" (regression targets and outputs)
    or "predictions" (a user function of true labels and ``predict``'s output)."""

    def __init__(self, name: str, fn, needs: str, multilabel=None):
        self.name, self.fn, self.needs, self.multilabel = name, fn, needs, multilabel

    def value(self, y_true, out: np.ndarray, loss):
        check_applicable(self, loss)
        if self.needs == "values":
            n = len(out)
            return self.fn(np.asarray(y_true, np.float64).reshape(n, -1), np.asarray(out, np.float64).reshape(n, -1))
        labels = true_labels(y_true, loss)
        if self.needs == "predictions":
            return self.fn(labels, loss.predict(out))
        if _multilabel(loss):
            return self.multilabel(labels.reshape(len(out), -1), loss.predict(out).reshape(len(out), -1))
        if self.needs == "scores":
            return self.fn(labels, out)
        return self.fn(labels, out.argmax(axis=1), out.shape[1])


def _multilabel(loss) -> bool:
    return loss.name == "sigmoid_cross_entropy"


def true_labels(y_true, loss) -> np.ndarray:
    """Integer classes for softmax cross-entropy (argmax of probability targets), the 0/1
    matrix ``target > 0.5`` for sigmoid cross-entropy."""
    y_true = np.asarray(y_true)
    if _multilabel(loss):
        return (y_true > 0.5).astype(np.int64)
    return (y_true.argmax(axis=1) if y_true.ndim == 2 else y_true).astype(np.int64)


def check_applicable(metric: Metric, loss) -> Metric:
    """``metric`` if it applies to the loss, else a ValueError saying which metrics do."""
    if metric.needs == "values" and loss.classification:
        raise ValueError(f"metric {metric.name!r} is a regression metric; the model's loss {loss.name!r} is a "
                         f"classification loss (use accuracy, precision, recall, f1, ...)")
    if metric.needs in ("labels", "scores") and not loss.classification:
        raise ValueError(f"metric {metric.name!r} needs a classification loss; the model's is {loss.name!r} "
                         f"(use mae, mse, rmse or r2)")
    if metric.needs in ("labels", "scores") and _multilabel(loss) and metric.multilabel is None:
        raise ValueError(f"metric {metric.name!r} needs per-class scores of one label per sample (softmax "
                         f"cross-entropy); the model's loss {loss.name!r} gives independent binary labels")
    return metric


def _top_k(k: int):
    def top_k_accuracy(labels, scores):
        if k >= scores.shape[1]:
            return 1.0
        # sklearn's rule, ties included: a stable ascending sort reversed, the first k count
        top = np.argsort(scores, axis=1, kind="mergesort")[:, ::-1][:, :k]
        return float(np.mean((top == labels[:, None]).any(axis=1)))
    return top_k_accuracy


def _accuracy(labels, predicted, k):
    return float(np.mean(labels == predicted))


def _accuracy_multilabel(Y, P):
    return float(np.mean(Y == P))


def _prf(which: int, average: str):
    return lambda labels, predicted, k: precision_recall_f1(confusion_matrix(labels, predicted, k), average)[which]


def _prf_multilabel(which: int, average: str):
    def fn(Y, P):
        tp, pred, true = multilabel_counts(Y, P)
        return _average(tp, pred, true, np.ones(len(tp), bool), average)[which]
    return fn


def _confusion(labels, predicted, k):
    return confusion_matrix(labels, predicted, k)


def _confusion_multilabel(Y, P):
    tp, pred, true = multilabel_counts(Y, P)
    tn = ((1 - Y) & (1 - P)).sum(axis=0)
    return np.stack([np.stack([tn, pred - tp], -1), np.stack([true - tp, tp], -1)], 1).astype(np.int64)


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


#: every named metric: (function, what it reads, its multi-label form or None)
NAMES = {
    "accuracy": (_accuracy, "labels", _accuracy_multilabel),
    "top_k_accuracy": (_top_k(5), "scores", None),
    "confusion_matrix": (_confusion, "labels", _confusion_multilabel),
    "per_class_accuracy": (_per_class_accuracy, "labels", None),
    "mae": (_mae, "values", None),
    "mse": (_mse, "values", None),
    "rmse": (_rmse, "values", None),
    "r2": (_r2, "values", None),
}
for _which, _base in enumerate(("precision", "recall", "f1")):
    NAMES[_base] = (_prf(_which, "macro"), "labels", _prf_multilabel(_which, "macro"))
    for _avg in ("macro", "micro", "weighted"):
        NAMES[f"{_base}_{_avg}"] = (_prf(_which, _avg), "labels", _prf_multilabel(_which, _avg))


def get_metric(spec) -> Metric:
    """A :class:`Metric` from a name, a callable ``f(y_true, y_pred)`` or a pair ``(name, f)``."""
    if isinstance(spec, Metric):
        return spec
    if isinstance(spec, str):
        m = re.fullmatch(r"top_(\d+)_accuracy", spec)
        if m and int(m.group(1)) >= 1:
            return Metric(spec, _top_k(int(m.group(1))), "scores")
        if spec in NAMES:
            return Metric(spec, *NAMES[spec])
        raise ValueError(f"unknown metric {spec!r}; choose from {', '.join(sorted(NAMES))}, top_<k>_accuracy, "
                         f"or pass a function f(y_true, y_pred) or a pair (name, f)")
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and callable(spec[1]):
        name, fn = spec
    elif callable(spec) and not isinstance(spec, type):
        name, fn = getattr(spec, "__name__", type(spec).__name__), spec
    else:
        raise TypeError(f"a metric is a name, a function f(y_true, y_pred) or a pair (name, f), "
                        f"got {spec!r:.60}")
    if name in RESERVED or name in NAMES or name.startswith("val_"):
        raise ValueError(f"a metric function may not be named {name!r} (a name the history uses for something "
                         f"else); pass it as a pair (other_name, f)")
    return Metric(name, fn, "predictions")


def get_metrics(specs) -> list[Metric]:
    """Metrics from a list of names, callables and ``(name, f)`` pairs; a repeated name is refused."""
    if specs is None:
        return []
    if isinstance(specs, (str, Metric, tuple)) or callable(specs):
        specs = [specs]
    out = [get_metric(s) for s in specs]
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"metrics: {', '.join(dup)} given twice (name functions with pairs (name, f))")
    return out


def compute(metrics: list[Metric], y_true, out, loss) -> dict:
    """``{name: value}`` of every metric on targets ``y_true`` and raw outputs ``out``."""
    return {m.name: m.value(y_true, out, loss) for m in metrics}
