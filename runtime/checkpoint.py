"""Checkpoints: one .npz with the parameters and a JSON description — no pickle."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

FORMAT = "symprop-checkpoint-1"


def save(path, config: dict, arrays: list[np.ndarray]) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {f"param_{i}": a for i, a in enumerate(arrays)}
    payload["config"] = np.array(json.dumps({"format": FORMAT, **config}))
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path) -> tuple[dict, list[np.ndarray]]:
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise ValueError(f"{path}: not a symprop checkpoint (not an .npz archive)")
    with np.load(path, allow_pickle=False) as z:
        if "config" not in z.files:
            raise ValueError(f"{path}: not a symprop checkpoint (no config entry)")
        config = json.loads(str(z["config"]))
        if config.get("format") != FORMAT:
            raise ValueError(f"{path}: unsupported checkpoint format {config.get('format')!r}")
        n = len([k for k in z.files if k.startswith("param_")])
        arrays = [z[f"param_{i}"] for i in range(n)]
    return config, arrays
