"""Checkpoints never lose a model and never trust a file: stale temporaries are cleaned, the
umask is honoured, malformed files are refused with a ValueError naming the file before
any large array is inflated."""
import io
import json
import os
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from symprop import Sequential, layers as L


def _model():
    return Sequential([L.Dense(4, 3), L.BatchNorm1D(3), L.ReLU(), L.Dense(3, 2)], dtype="float64", seed=0)


def _rewrite(src, dst, edit):
    """Copy the zip ``src`` to ``dst`` with ``edit(name, bytes) -> bytes | None`` applied."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        for info in zi.infolist():
            data = edit(info.filename, zi.read(info.filename))
            if data is not None:
                zo.writestr(info.filename, data)


def _npy(a):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def test_round_trip_and_umask(tmp_path):
    m = _model()
    old = os.umask(0o027)
    try:
        path = m.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    back = Sequential.load(path)
    X = np.random.default_rng(0).normal(size=(5, 4))
    assert np.array_equal(back.predict(X), m.predict(X))


def test_a_killed_save_leaves_a_temporary_the_next_save_removes(tmp_path):
    m = _model()
    path = m.save(tmp_path / "m.npz")
    # a save killed midway: a child process starts writing and is killed before os.replace
    code = (f"import os, numpy as np, symprop.runtime.checkpoint as c\n"
            f"import tempfile\n"
            f"fd, t = tempfile.mkstemp(prefix='.m.npz.' + str(os.getpid()) + '.', suffix=c.TMP_SUFFIX, dir={str(tmp_path)!r})\n"
            f"os.write(fd, b'partial'); os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path)
    stale = [p for p in os.listdir(tmp_path) if p.endswith(".symprop-tmp")]
    assert len(stale) == 1 and stale[0].startswith(".m.npz.")
    Sequential.load(path)                    # the previous checkpoint is intact
    m.save(path)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".symprop-tmp")]


@pytest.mark.parametrize("case", ["not_zip", "truncated", "directory", "empty", "list_config", "deep_json",
                                  "gap", "huge_shape", "wrong_dtype", "nan", "complex", "missing_key",
                                  "bad_layer", "pickled"])
def test_malformed_checkpoints_are_refused_naming_the_file(tmp_path, case):
    m = _model()
    good = m.save(tmp_path / "good.npz")
    bad = tmp_path / "bad.npz"
    raw = good.read_bytes()
    cfg = json.loads(str(np.load(good)["config"]))
    if case == "not_zip":
        bad.write_bytes(b"\x89PNG\r\n" + raw[:50])
    elif case == "truncated":
        bad.write_bytes(raw[:len(raw) // 2])
    elif case == "directory":
        bad.mkdir()
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "list_config":
        _rewrite(good, bad, lambda n, d: _npy(np.array(json.dumps([1, 2]))) if n == "config.npy" else d)
    elif case == "deep_json":
        _rewrite(good, bad, lambda n, d: _npy(np.array("[" * 3000 + "]" * 3000)) if n == "config.npy" else d)
    elif case == "gap":
        _rewrite(good, bad, lambda n, d: None if n == "param_1.npy" else d)
    elif case == "huge_shape":   # a header claiming 8 GB: refused from the header, nothing inflated
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (1 << 30,)})
        _rewrite(good, bad, lambda n, d: buf.getvalue() + bytes(64) if n == "param_0.npy" else d)
    elif case == "wrong_dtype":
        _rewrite(good, bad, lambda n, d: _npy(np.load(io.BytesIO(d)).astype(np.float32)) if n == "param_0.npy" else d)
    elif case == "nan":
        _rewrite(good, bad, lambda n, d: _npy(np.full_like(np.load(io.BytesIO(d)), np.nan)) if n == "param_0.npy" else d)
    elif case == "complex":
        _rewrite(good, bad, lambda n, d: _npy(np.load(io.BytesIO(d)).astype(complex)) if n == "param_0.npy" else d)
    elif case == "missing_key":
        c = dict(cfg)
        del c["layers"]
        _rewrite(good, bad, lambda n, d: _npy(np.array(json.dumps(c))) if n == "config.npy" else d)
    elif case == "bad_layer":
        c = dict(cfg, layers=[{"type": "Dense"}])
        _rewrite(good, bad, lambda n, d: _npy(np.array(json.dumps(c))) if n == "config.npy" else d)
    elif case == "pickled":
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.array([object()], dtype=object), allow_pickle=True)
        _rewrite(good, bad, lambda n, d: buf.getvalue() if n == "param_0.npy" else d)
    with pytest.raises(ValueError, match="bad.npz"):
        Sequential.load(bad)


def test_save_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not built yet"):
        Sequential([L.Conv2D(1, 2, 3)]).save(tmp_path / "x.npz")
    m = _model()
    m.parameters()[0][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.save(tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()
