"""Data augmentation for ``fit(augment=...)``: random image transforms applied to each training
batch (NCHW), drawn from the model's seeded generator, so a seeded run is reproducible.

Each transform maps a batch to a new batch of the same shape and leaves the data set alone:
only the batch being trained on is transformed. Validation data is never augmented.
``"shift,flip"`` names a :class:`Compose` of the defaults (:data:`NAMES`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["Transform", "RandomShift", "RandomCrop", "RandomFlip", "RandomRotation", "GaussianNoise", "Compose",
           "NAMES", "get_transform"]


def _images(X: np.ndarray, owner: str) -> np.ndarray:
    if X.ndim != 4:
        raise ValueError(f"{owner}: transforms image batches (N, C, H, W), got shape {X.shape}; "
                         f"augmentation applies to image models (e.g. Conv2D first), not flat inputs")
    return X


def _windows(padded: np.ndarray, top: np.ndarray, left: np.ndarray, size: tuple) -> np.ndarray:
    """Per image n the ``size`` window of ``padded`` (N, C, H', W') whose corner is
    ``(top[n], left[n])``: one gather for the batch (shifts and crops)."""
    n, c = padded.shape[:2]
    rows = (top[:, None] + np.arange(size[0])[None, :])[:, None, :, None]   # (n, 1, h, 1)
    cols = (left[:, None] + np.arange(size[1])[None, :])[:, None, None, :]  # (n, 1, 1, w)
    return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]


class Transform:
    """Base class: ``transform(X, rng)`` returns the transformed batch (a new array)."""

    def __call__(self, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.transform(_images(X, type(self).__name__), rng)

    def transform(self, X, rng):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class RandomShift(Transform):
    """Shift each image by whole pixels, up to ``max_shift`` in each direction, the uncovered
    border filled with ``fill`` — a random crop of the image padded by ``max_shift``."""

    def __init__(self, max_shift: int = 1, fill: float = 0.0):
        from .optimizers import check_int, check_real
        self.max_shift = check_int("RandomShift", "max_shift", max_shift)
        self.fill = check_real("RandomShift", "fill", fill)

    def transform(self, X, rng):
        n, c, h, w = X.shape
        s = self.max_shift
        dy, dx = rng.integers(-s, s + 1, size=(2, n))
        padded = np.pad(X, ((0, 0), (0, 0), (s, s), (s, s)), constant_values=self.fill)
        return _windows(padded, s - dy, s - dx, (h, w))


class RandomCrop(Transform):
    """Pad by ``padding`` (``fill``) and crop a random ``size`` window (the CIFAR recipe:
    ``RandomCrop(32, padding=4)``); ``size`` must not exceed the padded image."""

    def __init__(self, size, padding: int = 0, fill: float = 0.0):
        from .optimizers import check_int, check_real
        size = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        self.size = tuple(check_int("RandomCrop", "size", v) for v in size)
        self.padding = check_int("RandomCrop", "padding", padding, low=0)
        self.fill = check_real("RandomCrop", "fill", fill)

    def transform(self, X, rng):
        n, c, h, w = X.shape
        p, (sh, sw) = self.padding, self.size
        if sh > h + 2 * p or sw > w + 2 * p:
            raise ValueError(f"RandomCrop: a {sh}x{sw} crop does not fit {h}x{w} images padded by {p}")
        padded = np.pad(X, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=self.fill)
        top = rng.integers(0, h + 2 * p - sh + 1, size=n)
        left = rng.integers(0, w + 2 * p - sw + 1, size=n)
        return _windows(padded, top, left, (sh, sw))


class RandomFlip(Transform):
    """Mirror each image left-right with probability ``p`` (not for digits, whose mirror
    images are other shapes; for natural images such as CIFAR)."""

    def __init__(self, p: float = 0.5):
        from .optimizers import check_real
        self.p = check_real("RandomFlip", "p", p, low=0, high=1, high_open=False)

    def transform(self, X, rng):
        flip = rng.random(len(X)) < self.p
        out = X.copy()
        out[flip] = X[flip, :, :, ::-1]
        return out


class RandomRotation(Transform):
    """Rotate each image about its centre by an angle drawn uniformly from ±``degrees``,
    bilinear interpolation, the outside filled with ``fill``."""

    def __init__(self, degrees: float = 10.0, fill: float = 0.0):
        from .optimizers import check_real
        self.degrees = check_real("RandomRotation", "degrees", degrees, low=0, high=180, high_open=False)
        self.fill = check_real("RandomRotation", "fill", fill)

    def transform(self, X, rng):
        n, c, h, w = X.shape
        # counter-clockwise on screen for positive angles (as scipy.ndimage.rotate and torchvision)
        theta = -np.deg2rad(rng.uniform(-self.degrees, self.degrees, size=n))[:, None, None]
        yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
        cos, sin = np.cos(theta), np.sin(theta)
        # the source position of each output pixel: the inverse rotation
        sy = cos * yy - sin * xx + (h - 1) / 2
        sx = sin * yy + cos * xx + (w - 1) / 2
        y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
        fy, fx = (sy - y0)[:, None], (sx - x0)[:, None]
        padded = np.pad(X, ((0, 0), (0, 0), (1, 2), (1, 2)), constant_values=self.fill)
        b, ch = np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None]

        def at(yi, xi):   # values at integer source positions, ``fill`` outside the image
            yi = np.clip(yi + 1, 0, h + 2)[:, None]
            xi = np.clip(xi + 1, 0, w + 2)[:, None]
            return padded[b, ch, yi, xi]
        out = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
               + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
        return out.astype(X.dtype, copy=False)


class GaussianNoise(Transform):
    """Add independent normal noise of standard deviation ``std`` to every pixel."""

    def __init__(self, std: float = 0.1):
        from .optimizers import check_real
        self.std = check_real("GaussianNoise", "std", std, low=0)

    def __call__(self, X, rng):   # any shape: noise needs no image layout
        return self.transform(X, rng)

    def transform(self, X, rng):
        return (X + rng.normal(0.0, self.std, size=X.shape)).astype(X.dtype, copy=False)


class Compose(Transform):
    """Transforms applied in order."""

    def __init__(self, transforms):
        self.transforms = [get_transform(t) for t in transforms]

    def __call__(self, X, rng):
        for t in self.transforms:
            X = t(X, rng)
        return X


#: names for ``fit(augment="shift,rotate")`` and ``symprop train --augment``, with their defaults
NAMES = {"shift": RandomShift, "flip": RandomFlip, "rotate": RandomRotation, "noise": GaussianNoise}


def get_transform(spec) -> Transform:
    """A transform from a :class:`Transform`, a name, a comma-separated list of names or a list."""
    if isinstance(spec, type) and issubclass(spec, Transform):
        raise TypeError(f"augment: got the class {spec.__name__}; pass an instance, e.g. {spec.__name__}()")
    if isinstance(spec, Transform):
        return spec
    if isinstance(spec, str):
        names = [s.strip() for s in spec.split(",") if s.strip()]
        unknown = [s for s in names if s not in NAMES]
        if unknown or not names:
            raise ValueError(f"augment: unknown transform {', '.join(unknown) or repr(spec)}; choose from "
                             f"{', '.join(NAMES)} (comma-separated)")
        ts = [NAMES[s]() for s in names]
        return ts[0] if len(ts) == 1 else Compose(ts)
    if isinstance(spec, (list, tuple)):
        return Compose(spec)
    if callable(spec):
        return _Function(spec)
    if spec is None:
        raise TypeError("augment: None is no transform; leave augment out for none")
    raise TypeError(f"augment: expected a Transform, names such as 'shift,rotate', or a function "
                    f"f(X, rng) -> X, got {type(spec).__name__}")


class _Function(Transform):
    """A user function ``f(X, rng) -> X`` as a transform (its output is checked by fit)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, X, rng):
        return self.fn(X, rng)

    def __repr__(self):   # the same in every process (no address), for the distributed check
        return f"function {getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', type(self.fn).__name__)}"


def describe(transform) -> str | None:
    """A description of a transform that is equal in every process that builds the same one."""
    return None if transform is None else repr(transform)
