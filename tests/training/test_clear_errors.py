"""Misuse that used to surface as a generic error (NumPy's seed errors, an unnamed MemoryError, a
divergence blamed on the learning rate, a lost model after a failed save) gets an error naming
the real cause."""
import numpy as np
import pytest

from symprop import Sequential, layers as L, optimizers as O
from symprop.runtime.model import TrainingDiverged


@pytest.mark.parametrize("seed, kind", [(-1, ValueError), ("a", TypeError), (1.5, TypeError), (True, TypeError)])
def test_seeds_are_checked_by_name(seed, kind):
    with pytest.raises(kind, match="seed must be a non-negative integer"):
        Sequential([L.Dense(2, 2)], seed=seed)
    with pytest.raises(kind, match="fit: seed must be"):
        Sequential([L.Dense(2, 2)]).fit(np.ones((4, 2)), np.zeros(4, int), epochs=1, verbose=0, seed=seed)
    with pytest.raises(kind, match="AdaHessian: seed must be"):
        O.AdaHessian(seed=seed)


def test_a_layer_too_large_for_memory_is_named():
    with pytest.raises(MemoryError, match=r"Dense\(1000000000 -> 1000000000\): not enough memory"):
        Sequential([L.Dense(10 ** 9, 10 ** 9)])


def test_divergence_names_the_weight_decay_and_the_penalty():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 4)), rng.integers(0, 3, 64)
    with pytest.raises(TrainingDiverged, match=r"weight_decay=1e\+30"):
        Sequential([L.Dense(4, 3)], dtype="float64").fit(X, y, epochs=3, verbose=0,
                                                         optimizer=O.SGD(0.1, weight_decay=1e30))
    with pytest.raises(TrainingDiverged, match=r"l2=1e\+30"):
        Sequential([L.Dense(4, 3)], dtype="float64", l2=1e30).fit(X, y, epochs=3, verbose=0, optimizer="sgd")


def test_a_failed_final_save_keeps_the_model_in_a_recovery_file(tmp_path, monkeypatch):
    from symprop.cli import _save_or_recover
    monkeypatch.chdir(tmp_path)
    m = Sequential([L.Dense(3, 2)], seed=0)
    with pytest.raises(ValueError, match=r"--save /proc/nope/m.npz: could not write it .*trained model is in") as ei:
        _save_or_recover(m, "/proc/nope/m.npz")
    recovery = str(ei.value).rsplit(" ", 1)[1]
    back = Sequential.load(recovery)
    assert all(np.array_equal(a, b) for a, b in zip(back.parameters(), m.parameters()))


@pytest.mark.parametrize("seed, kind", [(-1, ValueError), (True, TypeError), ([1, 2], TypeError)])
def test_the_hutchinson_seed_is_checked_by_name(seed, kind):
    """NumPy took a bool or a list as a seed, and worded a negative one generically."""
    m = Sequential([L.Dense(2, 2)])
    with pytest.raises(kind, match="hessian_diagonal: seed must be a non-negative integer"):
        m.hessian_diagonal(np.ones((4, 2)), np.zeros(4, int), method="hutchinson", samples=2, seed=seed)


def test_a_layer_beyond_the_address_space_is_named():
    """NumPy says "array is too big" (a ValueError) rather than MemoryError past 2**63 bytes."""
    with pytest.raises(MemoryError, match=r"Dense\(4611686018427387904 -> 2\): not enough memory"):
        Sequential([L.Dense(2 ** 62, 2)])


@pytest.mark.parametrize("path", ["/", "out/", "."])
def test_save_to_a_folder_is_refused_before_training(path, tmp_path, monkeypatch, capsys):
    """`symprop train --save /` passed the pre-check (it checked "/.npz") and failed after training
    with "PosixPath('/') has an empty name", losing the model."""
    from symprop.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--hidden", "4", "--save", path]) == 2
    err = capsys.readouterr().err
    assert f"--save {path}: is a directory" in err and "epoch" not in capsys.readouterr().out


def test_a_loss_that_overflows_before_any_step_blames_the_data():
    """Fault injection (clip_norm): float32 data of 4e19 make the first loss inf at the initial
    weights; the message blamed the learning rate, which had not been used yet."""
    rng = np.random.default_rng(0)
    X, y = (rng.normal(size=(8, 5)) * 4e19).astype(np.float32), (rng.normal(size=(8, 3)) * 4e19).astype(np.float32)
    m = Sequential([L.Dense(5, 3)], loss="mse")
    before = [p.copy() for p in m.parameters()]
    with pytest.raises(TrainingDiverged, match=r"loss is inf on the first batch, before any step: the data overflow "
                                               r"the model's float32 .*inputs up to .*e\+19, targets up to"):
        m.fit(X, y, epochs=1, batch_size=8, optimizer=O.SGD(1e-3), clip_norm=1.0, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, m.parameters()))
