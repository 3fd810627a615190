"""A forked child (multiprocessing's default start method on Linux) runs every kernel, even
after the parent used OpenMP threads: kernels run serially in a forked child instead of
waiting forever for the parent's thread pool."""
import multiprocessing as mp

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from symprop.runtime.named_models import cnn


def _child(model, X, y, q):
    q.put(float(model.predict(X).sum()))
    model.fit(X, y, epochs=1, verbose=0)
    q.put("trained")


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_forked_child_after_threaded_training_does_not_hang():
    rng = np.random.default_rng(0)
    model = cnn((1, 8, 8), seed=0)
    X = rng.normal(size=(256, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    with threadpool_limits(2, user_api="openmp"):
        model.fit(X, y, epochs=1, verbose=0)      # the parent's OpenMP pool is started
        expected = float(model.predict(X).sum())
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(model, X, y, q))
    p.start()
    p.join(120)
    hung = p.is_alive()
    if hung:
        p.kill()
    assert not hung, "the forked child hung in a kernel"
    assert p.exitcode == 0
    assert abs(q.get(timeout=5) - expected) <= 1e-6 * abs(expected)   # serial = parallel result
    assert q.get(timeout=5) == "trained"
