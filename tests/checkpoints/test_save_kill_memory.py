"""Checkpoints survive SIGKILL at any point of a save, and training memory stays flat."""
import os
import random
import signal
import time

import numpy as np
import pytest

from symprop import Sequential, layers as L, optimizers as O


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_during_save_never_loses_the_checkpoint(tmp_path):
    model = Sequential([L.Dense(64, 256), L.ReLU(), L.Dense(256, 10)], dtype="float64", seed=0)
    path = tmp_path / "m.npz"
    model.save(path)
    X = np.random.default_rng(0).normal(size=(4, 64))
    expected = model.predict(X)
    rng = random.Random(0)
    trials, losses, killed_mid_save = 60, 0, 0
    for _ in range(trials):
        pid = os.fork()
        if pid == 0:                                   # child: save forever
            try:
                while True:
                    model.save(path)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        killed_mid_save += any(p.endswith(".symprop-tmp") for p in os.listdir(tmp_path))
        try:
            back = Sequential.load(path)
            assert np.array_equal(back.predict(X), expected)
        except ValueError:
            losses += 1
    assert losses == 0
    assert killed_mid_save > 0                         # the kills did land inside saves
    model.save(path)                                   # the next save removes every stale temporary
    assert [p for p in os.listdir(tmp_path)] == ["m.npz"]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_memory_is_flat_over_3000_training_steps():
    rng = np.random.default_rng(0)
    model = Sequential([L.Dense(64, 64), L.BatchNorm1D(64), L.ReLU(), L.Dropout(0.2), L.Dense(64, 10)], seed=0)
    model.train()
    X, y = rng.normal(size=(32, 64)).astype(np.float32), rng.integers(0, 10, 32)
    opt = O.AdaHessian(lr=0.01)
    params = model.parameters()
    marks = {}
    for step in range(1, 3001):
        _, grads, _ = opt.loss_and_grad(model, X, y)
        opt.step(params, grads)
        if step in (500, 3000):
            marks[step] = _rss_mib()
    assert marks[3000] - marks[500] < 8, marks      # MiB
