"""Model API: bad input, training on digits, checkpoints, optimizers against PyTorch."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from symprop import Sequential, layers as L, optimizers as O
from symprop.runtime.data import load_digits


def mlp(**kw):
    return Sequential([L.Dense(4, 6), L.Tanh(), L.Dense(6, 3)], **kw)


def test_bad_input_names_layer_and_shapes():
    m = mlp()
    X, y = np.zeros((5, 4), np.float32), np.zeros(5, np.int64)
    with pytest.raises(ValueError, match=r"Dense\(4 -> 6\).*\(N, 4\).*\(5, 3\)"):
        m.loss_and_grad(np.zeros((5, 3)), y)
    with pytest.raises(ValueError, match=r"Dense\(4 -> 6\).*\(5, 4, 1\)"):
        m.loss_and_grad(np.zeros((5, 4, 1)), y)
    with pytest.raises(ValueError, match="labels must be integers"):
        m.loss_and_grad(X, y.astype(np.float64))
    with pytest.raises(ValueError, match="NaN"):
        m.loss_and_grad(X, np.array([0, 1, np.nan, 0, 1]))
    Xn = X.copy()
    Xn[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"Dense\(4 -> 6\).*\(5, 4\).*NaN"):
        m.loss_and_grad(Xn, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        m.loss_and_grad(X, np.array([0, 1, 3, 0, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        m.loss_and_grad(X, y[:4])
    dense = L.Dense(4, 6)
    dense.build((4,), np.float32, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"Dense\(4 -> 6\).*\(2, 3, 4\)"):
        dense.forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="unknown loss"):
        mlp(loss="hinge")
    with pytest.raises(ValueError, match="expects per-sample inputs"):
        Sequential([L.Dense(4, 6), L.Dense(5, 2)])


def test_parameters_are_live_and_pytorch_layout():
    m = mlp(dtype="float64")
    ps = m.parameters()
    assert [p.shape for p in ps] == [(6, 4), (6,), (3, 6), (3,)]
    ps[0][...] = 0
    assert np.all(m.layers[0].W == 0)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimizer_steps_match_torch(kind):
    rng = np.random.default_rng(0)
    p = rng.normal(size=(7, 3))
    grads = [rng.normal(size=p.shape) for _ in range(4)]
    pt = torch.tensor(p.copy(), requires_grad=True)
    if kind == "sgd":
        ours, theirs = O.SGD(lr=0.1, momentum=0.9, weight_decay=0.01), torch.optim.SGD([pt], lr=0.1, momentum=0.9, weight_decay=0.01)
    else:
        ours, theirs = O.Adam(lr=0.01, weight_decay=0.01), torch.optim.Adam([pt], lr=0.01, weight_decay=0.01)
    for g in grads:
        ours.step([p], [g])
        pt.grad = torch.tensor(g)
        theirs.step()
    assert np.max(np.abs(p - pt.detach().numpy())) < 1e-12


@pytest.mark.slow   # CI runs it with pytest -m slow
def test_fit_is_seeded_and_reaches_97_percent_on_digits():
    (X, y), (Xt, yt) = load_digits()
    accs = []
    for _ in range(2):
        m = Sequential([L.Dense(64, 512), L.ReLU(), L.Dense(512, 10)], seed=0)
        hist = m.fit(X, y, epochs=40, batch_size=32, optimizer=O.SGD(0.05, momentum=0.9),
                     validation_data=(Xt, yt), verbose=0)
        accs.append(m.evaluate(Xt, yt)["accuracy"])
    assert accs[0] == accs[1] >= 0.97
    assert hist["loss"][-1] < hist["loss"][0] and len(hist["val_accuracy"]) == 40
    assert (m.predict(Xt) == yt).mean() == accs[0]


def test_save_load_roundtrip_without_pickle(tmp_path):
    m = mlp(dtype="float64", seed=5)
    path = m.save(tmp_path / "model.npz")
    m2 = Sequential.load(path)
    X = np.random.default_rng(0).normal(size=(3, 4))
    assert np.array_equal(m.forward(X), m2.forward(X))
    assert not list(tmp_path.glob("*.tmp"))
    with np.load(path, allow_pickle=False) as z:
        assert "config" in z.files
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        Sequential.load(tmp_path / "junk.npz")


def test_cli_train_runs_and_saves(tmp_path):
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "train", "--epochs", "3",
                        "--save", str(tmp_path / "m.npz")], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)   # outside the checkout: import the installed package
    assert r.returncode == 0, r.stderr
    assert "epoch 3/3" in r.stdout and "final test accuracy" in r.stdout
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "evaluate", str(tmp_path / "m.npz")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and "accuracy" in r.stdout


def test_cli_cnn_reaches_98_percent_on_digits(tmp_path):
    """The bar: `symprop train --model cnn` >= 98 % test accuracy on digits (defaults)."""
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "train", "--model", "cnn", "--save",
                        str(tmp_path / "cnn.npz")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    acc = float(r.stdout.split("final test accuracy")[1].split()[0])
    assert acc >= 0.98, r.stdout[-500:]
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "evaluate", str(tmp_path / "cnn.npz")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0 and f"accuracy {acc:.4f}" in r.stdout, (r.stdout, r.stderr)


@pytest.mark.slow   # CI runs it with pytest -m slow
def test_cli_adahessian_trains_the_digits_cnn_to_98_percent(tmp_path):
    """The bar for AdaHessian (Hutchinson diagonal from exact HVPs) >= 98 % on the digits CNN."""
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "train", "--model", "cnn", "--optimizer", "adahessian"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "AdaHessian(lr=0.15" in r.stdout
    acc = float(r.stdout.split("final test accuracy")[1].split()[0])
    assert acc >= 0.98, r.stdout[-500:]


def test_cli_newton_refuses_a_big_model_and_trains_a_tiny_one(tmp_path):
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "train", "--optimizer", "newton", "--hidden", "512",
                        "--epochs", "1"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "the limit is 5,000 parameters" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "train", "--optimizer", "newton", "--hidden", "8",
                        "--activation", "tanh", "--epochs", "3", "--batch-size", "512", "--dtype", "float64"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    acc = float(r.stdout.split("final test accuracy")[1].split()[0])
    assert acc > 0.5, r.stdout


@pytest.mark.slow   # a CLI training run (~7 s); the 10-seed recipe check is slow too
def test_cli_adahessian_reusing_estimates_trains_with_the_documented_recipe(tmp_path):
    """update_each=5 (one estimate per five steps) with a cosine schedule: >= 97 % on the digits
    CNN (the reference schedule without the zero rule and warm-up collapsed to 10 % or diverged).
    The float32 accuracy of one seed moves with the kernels' summation order: seed 0 gave 98.33 %
    with im2col convolutions and 97.22 % with the direct ones (seeds 0-9: 97.22-98.61 %, median
    98.06); in float64 the two lowerings train identically to 98.61 %."""
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "train", "--model", "cnn", "--optimizer", "adahessian",
                        "--update-each", "5", "--schedule", "cosine"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    acc = float(r.stdout.split("final test accuracy")[1].split()[0])
    assert acc >= 0.97, r.stdout[-800:]
