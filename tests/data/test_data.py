"""MNIST IDX and CIFAR-10 binary loaders on tiny files written here; CLI on them."""
import gzip
import subprocess
import sys

import numpy as np
import pytest

from symprop.runtime.data import load_cifar10, load_mnist, read_cifar_batch, read_idx


def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_mnist(d, n_train=40, n_test=12, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        X = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", X), ("labels-idx1", y)):
            raw = idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (d / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (d / name).write_bytes(raw)
        data[split] = (X, y)
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_roundtrip(tmp_path, gz):
    data = write_mnist(tmp_path, gz=gz)
    (X, y), (Xt, yt) = load_mnist(tmp_path)
    assert X.shape == (40, 1, 28, 28) and X.dtype == np.float32 and Xt.shape == (12, 1, 28, 28)
    np.testing.assert_allclose(X[:, 0] * 255, data["train"][0], atol=1e-3)
    np.testing.assert_array_equal(y, data["train"][1])
    np.testing.assert_array_equal(yt, data["t10k"][1])


def test_idx_errors(tmp_path):
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    (tmp_path / "ok").write_bytes(good)
    assert read_idx(tmp_path / "ok").shape == (2, 3, 4)
    (tmp_path / "trunc").write_bytes(good[:-5])
    with pytest.raises(ValueError, match=r"trunc.*shape \(2, 3, 4\).*truncated"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "magic").write_bytes(b"\x08\x03" + good[2:])
    with pytest.raises(ValueError, match="not an IDX file.*0803"):
        read_idx(tmp_path / "magic")
    (tmp_path / "head").write_bytes(good[:7])
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(tmp_path / "head")
    (tmp_path / "badgz").write_bytes(gzip.compress(good)[:20])
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(tmp_path / "badgz")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)


def write_cifar(d, n_per_batch=7, batches=2, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name in [f"data_batch_{k}.bin" for k in range(1, batches + 1)] + ["test_batch.bin"]:
        y = rng.integers(0, 10, n_per_batch, dtype=np.uint8)
        X = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
        rec = np.concatenate([y[:, None], X.reshape(n_per_batch, -1)], axis=1)
        (d / name).write_bytes(rec.tobytes())
        out[name] = (X, y)
    return out


def test_cifar_roundtrip_and_errors(tmp_path):
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    data = write_cifar(sub)
    (X, y), (Xt, yt) = load_cifar10(tmp_path)
    assert X.shape == (14, 3, 32, 32) and Xt.shape == (7, 3, 32, 32)
    np.testing.assert_allclose(X[:7] * 255, data["data_batch_1.bin"][0], atol=1e-3)
    np.testing.assert_array_equal(y[7:], data["data_batch_2.bin"][1])
    np.testing.assert_array_equal(yt, data["test_batch.bin"][1])
    raw = (sub / "test_batch.bin").read_bytes()
    (tmp_path / "trunc.bin").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match="not a whole number of 3073-byte"):
        read_cifar_batch(tmp_path / "trunc.bin")
    bad = bytearray(raw)
    bad[0] = 57
    (tmp_path / "label.bin").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="label byte 57"):
        read_cifar_batch(tmp_path / "label.bin")
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        load_cifar10(tmp_path / "nothing-here")


def test_cli_trains_lenet_on_local_mnist_files(tmp_path):
    write_mnist(tmp_path, n_train=64, n_test=16)
    ck = tmp_path / "m.npz"
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "train", "--model", "lenet", "--dataset", "mnist",
                        "--data-dir", str(tmp_path), "--epochs", "1", "--save", str(ck)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "mnist 1x28x28: 64 train / 16 test" in r.stdout and "final test accuracy" in r.stdout
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "evaluate", str(ck), "--dataset", "mnist",
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "accuracy" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "train", "--dataset", "cifar10", "--data-dir",
                        str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "data_batch_*.bin" in r.stderr


def test_idx_float_labels_and_directories_are_refused(tmp_path):
    import struct
    from symprop.runtime import data

    def idx(path, code, arr):
        arr = np.asarray(arr)
        with open(path, "wb") as f:
            f.write(struct.pack(">HBB", 0, code, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape))
            f.write(arr.astype({0x08: ">u1", 0x0D: ">f4"}[code]).tobytes())
    for split in ("train", "t10k"):
        idx(tmp_path / f"{split}-images-idx3-ubyte", 0x08, np.zeros((2, 28, 28)))
        idx(tmp_path / f"{split}-labels-idx1-ubyte", 0x0D, [3.7, 1.0])
    with pytest.raises(ValueError, match="labels must be integers"):
        data.load_mnist(tmp_path)
    d = tmp_path / "d"
    (d / "train-images-idx3-ubyte").mkdir(parents=True)
    with pytest.raises(ValueError, match="is a directory"):
        data.load_mnist(d)
