"""Data sets. The bundled default is scikit-learn's digits (1797 8×8 images)."""
from __future__ import annotations

import numpy as np


def load_digits(dtype="float32", test_fraction: float = 0.2, seed: int = 0, flatten: bool = True):
    """Digits scaled to [0, 1], split into a fixed stratified train/test split.

    Returns ``(X_train, y_train), (X_test, y_test)``; X is (N, 64) or, with
    ``flatten=False``, (N, 1, 8, 8) NCHW; y is int64.
    """
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    X = (d.data / 16.0).astype(dtype)
    if not flatten:
        X = X.reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (np.ascontiguousarray(Xtr), ytr), (np.ascontiguousarray(Xte), yte)
