"""Checkpoints: one .npz with the parameters and buffers and a JSON description — no pickle.

Saving is atomic (a temporary file in the same folder, fsync, ``os.replace``); temporaries
are named ``.<target>.<pid>.<random>.symprop-tmp`` so that a save killed midway is recognised
and removed by the next save of the same target. Files get the user's umask, as NumPy's own.

Loading never trusts the file: a non-zip, truncated or corrupt file, a config that is not
the expected JSON object, array entries with gaps, and arrays whose declared shape or dtype
does not match the architecture are refused with a ValueError naming the file — the shapes
are checked from the ``.npy`` headers before any array data is inflated.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..processes import pid_alive

FORMAT = "symprop-checkpoint-1"
TMP_SUFFIX = ".symprop-tmp"
#: the JSON description is small; anything larger is not a symprop checkpoint
MAX_CONFIG_BYTES = 1 << 20
_umask_lock = threading.Lock()


def _umask() -> int:
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _clean_stale(path: Path) -> None:
    """Remove temporaries of earlier saves of ``path`` whose process is gone."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*{TMP_SUFFIX}"):
        middle = tmp.name[len(prefix):-len(TMP_SUFFIX)]
        pid = middle.split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            try:
                tmp.unlink()
            except OSError:
                pass


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def save(path, config: dict, arrays: list[np.ndarray]) -> Path:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(path)
    payload = {f"param_{i}": a for i, a in enumerate(arrays)}
    payload["config"] = np.array(json.dumps({"format": FORMAT, **config}))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class Checkpoint:
    """An open checkpoint: its config and the declared shape/dtype of every array, read from
    the headers; :meth:`array` inflates one array after the caller has checked it."""

    def __init__(self, path):
        self.path = path = Path(path)
        if path.is_dir():
            raise ValueError(f"{path}: is a directory, not a symprop checkpoint")
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        if magic != b"PK\x03\x04":
            raise ValueError(f"{path}: not a symprop checkpoint (not an .npz archive)")
        try:
            self.zip = zipfile.ZipFile(path)
            names = set(self.zip.namelist())
            self.config = self._config(names)
            self.n = len([n for n in names if n.startswith("param_")])
            want = {f"param_{i}.npy" for i in range(self.n)}
            if {n for n in names if n.startswith("param_")} != want:
                raise ValueError(f"{path}: the array entries are not param_0 … param_{self.n - 1}")
            self.headers = [self._header(f"param_{i}.npy") for i in range(self.n)]
        except ValueError:
            self.close()
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, RecursionError, RuntimeError,
                NotImplementedError) as exc:   # zipfile: encrypted entries, unknown versions/methods
            self.close()
            raise ValueError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from exc

    def _config(self, names) -> dict:
        if "config.npy" not in names:
            raise ValueError(f"{self.path}: not a symprop checkpoint (no config entry)")
        if self.zip.getinfo("config.npy").file_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{self.path}: the config entry is larger than {MAX_CONFIG_BYTES} bytes")
        with self.zip.open("config.npy") as f:
            arr = np.lib.format.read_array(f, allow_pickle=False)
        if arr.dtype.kind != "U" or arr.ndim != 0:
            raise ValueError(f"{self.path}: the config entry is not a JSON string")
        try:
            config = json.loads(str(arr))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{self.path}: the config is not valid JSON ({type(exc).__name__})") from exc
        if not isinstance(config, dict):
            raise ValueError(f"{self.path}: the config is a JSON {type(config).__name__}, not an object")
        if config.get("format") != FORMAT:
            raise ValueError(f"{self.path}: unsupported checkpoint format {config.get('format')!r}")
        return config

    def _header(self, name):
        with self.zip.open(name) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"{self.path}: {name} has unsupported .npy version {version}")
        return tuple(shape), np.dtype(dtype)

    def array(self, i: int, shape: tuple, dtype) -> np.ndarray:
        """Array ``i``, after checking its header against ``shape`` and ``dtype``; refused if
        it holds NaN/inf."""
        hshape, hdtype = self.headers[i]
        if hshape != tuple(shape):
            raise ValueError(f"{self.path}: array {i} has shape {hshape}, the model's is {tuple(shape)}")
        if hdtype != np.dtype(dtype):
            raise ValueError(f"{self.path}: array {i} has dtype {hdtype}, the model's is {np.dtype(dtype)}")
        try:
            with self.zip.open(f"param_{i}.npy") as f:
                a = np.lib.format.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
                NotImplementedError) as exc:
            raise ValueError(f"{self.path}: array {i} is corrupt or truncated ({type(exc).__name__})") from exc
        if not np.isfinite(a).all():
            raise ValueError(f"{self.path}: array {i} holds NaN or inf values")
        return a

    def close(self):
        z = getattr(self, "zip", None)
        if z is not None:
            z.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
