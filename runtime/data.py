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


def upsample(X: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling of NCHW images by an integer factor (e.g. 8x8 digits -> 32x32)."""
    if factor == 1:
        return X
    return np.ascontiguousarray(X.repeat(factor, axis=2).repeat(factor, axis=3))


# ---------------------------------------------------------------- MNIST (IDX files)
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (gzipped or not): magic ``00 00 <type> <ndim>``, big-endian sizes, data."""
    import gzip
    from pathlib import Path

    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}; expected "
                         "00 00 <type> <ndim>)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes for {ndim} dimensions)")
    shape = tuple(int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    dt = np.dtype(IDX_DTYPES[raw[2]])
    import math
    need = math.prod(shape) * dt.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != need:
        raise ValueError(f"{path}: IDX header says shape {shape} ({need} bytes of {dt}) but the file has "
                         f"{len(body)} data bytes ({'truncated' if len(body) < need else 'trailing data'})")
    return np.frombuffer(body, dt).reshape(shape)


def _find(data_dir, names: list[str]):
    from pathlib import Path
    d = Path(data_dir)
    for nm in names:
        for cand in (d / nm, d / (nm + ".gz")):
            if cand.is_dir():
                raise ValueError(f"{cand}: is a directory, expected an IDX file")
            if cand.exists():
                return cand
    if not d.is_dir():
        raise FileNotFoundError(f"--data-dir {d}: no such folder")
    raise FileNotFoundError(f"none of {names} (or .gz) found in {d}")


def load_mnist(data_dir, dtype="float32"):
    """MNIST from the four IDX files in ``data_dir`` (``train-images-idx3-ubyte[.gz]``, …).

    Returns ``(X_train, y_train), (X_test, y_test)`` with X (N, 1, 28, 28) scaled to [0, 1].
    """
    out = []
    for split in ("train", "t10k"):
        X = read_idx(_find(data_dir, [f"{split}-images-idx3-ubyte", f"{split}-images.idx3-ubyte"]))
        y = read_idx(_find(data_dir, [f"{split}-labels-idx1-ubyte", f"{split}-labels.idx1-ubyte"]))
        if X.ndim != 3 or y.ndim != 1 or len(X) != len(y):
            raise ValueError(f"{data_dir}: {split} images {X.shape} and labels {y.shape} do not match")
        if y.dtype.kind not in "iu":
            raise ValueError(f"{data_dir}: {split} labels must be integers (IDX type 0x08), got {y.dtype}")
        if y.size and (y.max() > 9 or y.min() < 0):
            raise ValueError(f"{data_dir}: {split} labels must be digits 0-9, found {int(y.max())}")
        out.append((np.ascontiguousarray((X[:, None] / 255.0).astype(dtype)), y.astype(np.int64)))
    return out[0], out[1]


# ---------------------------------------------------------------- CIFAR-10 (binary version)
CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    from pathlib import Path

    raw = Path(path).read_bytes()
    if len(raw) == 0 or len(raw) % CIFAR_RECORD:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of {CIFAR_RECORD}-byte CIFAR-10 "
                         "records (truncated, or not the binary version)")
    rec = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR_RECORD)
    y = rec[:, 0].astype(np.int64)
    if y.max() > 9:
        raise ValueError(f"{path}: label byte {int(y.max())} is not a CIFAR-10 class (0-9); "
                         "is this the CIFAR-100 or Python version?")
    return rec[:, 1:].reshape(-1, 3, 32, 32), y


def load_cifar10(data_dir, dtype="float32"):
    """CIFAR-10 binary version from ``data_dir`` (or its ``cifar-10-batches-bin`` folder):
    ``data_batch_1.bin`` … ``data_batch_5.bin`` and ``test_batch.bin``. Never unpickles.

    Returns ``(X_train, y_train), (X_test, y_test)``, X (N, 3, 32, 32) scaled to [0, 1].
    """
    from pathlib import Path

    d = Path(data_dir)
    if (d / "cifar-10-batches-bin").is_dir():
        d = d / "cifar-10-batches-bin"
    train = sorted(d.glob("data_batch_*.bin"))
    if not train or not (d / "test_batch.bin").exists():
        raise FileNotFoundError(f"{d}: expected data_batch_*.bin and test_batch.bin (CIFAR-10 binary version)")
    parts = [read_cifar_batch(p) for p in train]
    Xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    Xte, yte = read_cifar_batch(d / "test_batch.bin")
    scale = lambda X: np.ascontiguousarray((X / 255.0).astype(dtype))  # noqa: E731
    return (scale(Xtr), ytr), (scale(Xte), yte)


def load_dataset(name: str, data_dir=None, dtype="float32", image: bool = True):
    """``digits`` (bundled), ``mnist`` or ``cifar10`` (from ``data_dir``) -> train, test splits."""
    if name == "digits":
        return load_digits(dtype, flatten=not image)
    if data_dir is None:
        raise ValueError(f"dataset {name!r} is read from local files: pass data_dir (--data-dir)")
    if name == "mnist":
        return load_mnist(data_dir, dtype)
    if name == "cifar10":
        return load_cifar10(data_dir, dtype)
    raise ValueError(f"unknown dataset {name!r}; choose digits, mnist or cifar10")
