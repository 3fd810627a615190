"""The training loop: optimizers by name, validation split, early stopping, schedules, clipping,
shuffling across calls, output, non-finite losses; summary/predict_proba/repr."""
import io
import sys

import numpy as np
import pytest

from symprop import Sequential, layers as L, optimizers as O
from symprop.runtime.model import TrainingDiverged
from symprop.runtime import schedules as S


def data(n=120, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, :k].argmax(axis=1)).astype(np.int64)
    return X, y


def mlp(seed=0, dtype="float64"):
    return Sequential([L.Dense(6, 16), L.Tanh(), L.Dense(16, 3)], dtype=dtype, seed=seed)


class Recording(O.SGD):
    """SGD that records the labels of every batch it sees."""
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.batches = []

    def loss_and_grad(self, model, X, y):
        self.batches.append(X.copy())
        return super().loss_and_grad(model, X, y)


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "adahessian"])
def test_fit_accepts_optimizer_names(name):
    X, y = data()
    hist = mlp().fit(X, y, epochs=2, batch_size=32, optimizer=name, verbose=0)
    assert len(hist["loss"]) == 2 and np.isfinite(hist["loss"]).all()


def test_shuffle_continues_across_calls_and_a_seed_reproduces_the_run():
    X, y = data()
    a, oa = mlp(), Recording(0.05)
    a.fit(X, y, epochs=1, optimizer=oa, verbose=0)
    a.fit(X, y, epochs=1, optimizer=oa, verbose=0)
    first, second = oa.batches[:4], oa.batches[4:]
    assert not all(np.array_equal(u, v) for u, v in zip(first, second))   # a new order each call
    b, ob = mlp(), Recording(0.05)
    b.fit(X, y, epochs=2, optimizer=ob, verbose=0)                        # same seed, one call
    assert all(np.array_equal(u, v) for u, v in zip(oa.batches, ob.batches))
    assert all(np.array_equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c, oc = mlp(), Recording(0.05)
    c.fit(X, y, epochs=1, optimizer=oc, verbose=0, seed=0)
    c.fit(X, y, epochs=1, optimizer=oc, verbose=0, seed=0)                 # explicit seed: re-seeded
    assert all(np.array_equal(u, v) for u, v in zip(oc.batches[:4], oc.batches[4:]))


def test_validation_split_is_held_out_of_training_and_fixed():
    X, y = data(100)
    m, opt = mlp(), Recording(0.05)
    seen_val = []
    real = m.evaluate
    m.evaluate = lambda Xv, yv, **kw: (seen_val.append(Xv.copy()), real(Xv, yv, **kw))[1]
    hist = m.fit(X, y, epochs=2, optimizer=opt, validation_split=0.2, verbose=0)
    trained = np.concatenate(opt.batches[:-(-80 // 32)])
    assert len(trained) == 80 and len(seen_val[0]) == 20
    rows = {r.tobytes() for r in X}
    assert all(r.tobytes() in rows for r in seen_val[0])                   # taken from the training data
    assert not ({r.tobytes() for r in trained} & {r.tobytes() for r in seen_val[0]})
    assert np.array_equal(seen_val[0], seen_val[1]) and len(hist["val_loss"]) == 2
    m.fit(X, y, epochs=1, optimizer=opt, validation_split=0.2, verbose=0)
    assert np.array_equal(seen_val[0], seen_val[2])                       # same split in a later call
    with pytest.raises(ValueError, match="not both"):
        m.fit(X, y, validation_split=0.2, validation_data=(X, y))
    with pytest.raises(ValueError, match="validation_split"):
        m.fit(X, y, validation_split=1.0)
    with pytest.raises(ValueError, match="early_stopping"):
        m.fit(X, y, early_stopping=2)


def test_early_stopping_restores_the_best_weights():
    X, y = data(60)
    Xv, yv = data(60, seed=1)
    m = mlp()
    hist = m.fit(X, y, epochs=40, batch_size=8, optimizer=O.SGD(0.8, momentum=0.9), validation_data=(Xv, yv),
                 early_stopping=3, verbose=0)
    assert hist["stopped_epoch"] < 40 and hist["stopped_epoch"] - hist["best_epoch"] == 3
    assert m.evaluate(Xv, yv)["loss"] == pytest.approx(min(hist["val_loss"]), rel=1e-12)
    assert hist["val_loss"][hist["best_epoch"] - 1] == min(hist["val_loss"])
    m2 = mlp()
    h2 = m2.fit(X, y, epochs=40, batch_size=8, optimizer=O.SGD(0.8, momentum=0.9), validation_data=(Xv, yv),
                early_stopping=3, restore_best=False, verbose=0)
    assert m2.evaluate(Xv, yv)["loss"] == pytest.approx(h2["val_loss"][-1], rel=1e-12)


def test_schedule_sets_the_learning_rate_per_epoch():
    X, y = data()
    opt = O.SGD(0.1)
    hist = mlp().fit(X, y, epochs=6, optimizer=opt, schedule=S.StepLR(2, 0.5), verbose=0)
    assert hist["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    hist = mlp().fit(X, y, epochs=5, optimizer=O.Adam(0.01), schedule="cosine", verbose=0)
    assert hist["lr"] == pytest.approx(S.CosineAnnealingLR(5).lrs(0.01, 5))
    sched, opt = S.ExponentialLR(0.5), O.SGD(0.1)
    m = mlp()
    h1 = m.fit(X, y, epochs=2, optimizer=opt, schedule=sched, verbose=0)
    h2 = m.fit(X, y, epochs=2, optimizer=opt, schedule=sched, verbose=0)   # the same object continues
    assert h1["lr"] + h2["lr"] == pytest.approx([0.1, 0.05, 0.025, 0.0125])


def test_gradient_clipping():
    X, y = data(32)
    for kw, bound in (({"clip_norm": 1e-3}, lambda d: np.sqrt(sum((a ** 2).sum() for a in d)) <= 1e-3 * (1 + 1e-9)),
                      ({"clip_value": 1e-4}, lambda d: max(np.abs(a).max() for a in d) <= 1e-4 * (1 + 1e-9))):
        m = mlp()
        before = [p.copy() for p in m.parameters()]
        m.fit(X, y, epochs=1, batch_size=32, optimizer=O.SGD(1.0), verbose=0, **kw)
        assert bound([p - b for p, b in zip(m.parameters(), before)])
    m = mlp()
    before = [p.copy() for p in m.parameters()]
    m.fit(X, y, epochs=1, batch_size=32, optimizer=O.SGD(1.0), clip_norm=1e6, verbose=0)   # no-op when below
    _, g = mlp().loss_and_grad(X, y)
    assert all(np.allclose(p, b - gi) for p, b, gi in zip(m.parameters(), before, g))


def test_non_finite_loss_stops_with_the_last_good_weights():
    X, _ = data()
    y = X @ np.arange(6.0)
    m = Sequential([L.Dense(6, 1)], loss="mse", dtype="float64")
    with pytest.raises(TrainingDiverged, match="loss became .* last finite loss") as ei:
        m.fit(X, y, epochs=500, batch_size=16, optimizer=O.SGD(10.0, momentum=0), verbose=0,
              divergence_factor=None)
    assert all(np.isfinite(p).all() for p in m.parameters())
    assert np.isfinite(m.evaluate(X, y)["loss"])
    assert isinstance(ei.value, ValueError) and isinstance(ei.value.history, dict)


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_output_one_line_per_epoch_off_a_terminal_bar_on_one_nothing_when_silent(capsys, monkeypatch):
    X, y = data()
    mlp().fit(X, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    mlp().fit(X, y, epochs=2, validation_split=0.25)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss") and "val_acc" in lines[0] and "lr" in out
    assert "\r" not in out and "it/s" not in out and "%|" not in out
    fake = FakeTTY()
    monkeypatch.setattr(sys, "stdout", fake)
    mlp().fit(X, y, epochs=2)
    monkeypatch.undo()
    assert "\r" in fake.getvalue() and "epoch 2/2" in fake.getvalue() and "|" in fake.getvalue()


def test_summary_predict_proba_repr():
    m = Sequential([L.Conv2D(1, 4, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(16, 3)],
                   input_shape=(1, 4, 4))
    lines = []
    m.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "(N, 4, 4, 4)" in text and "(N, 3)" in text and "total parameters: 91" in text
    assert "Conv2D" in text and "40" in text and "51" in text
    assert repr(m).startswith("Sequential([\n    Conv2D(") and "input_shape=(1, 4, 4)" in repr(m)
    X = np.random.default_rng(0).normal(size=(5, 1, 4, 4))
    P = m.predict_proba(X)
    assert P.shape == (5, 3) and np.allclose(P.sum(axis=1), 1) and (P.argmax(1) == m.predict(X)).all()
    with pytest.raises(ValueError, match="classification"):
        Sequential([L.Dense(2, 1)], loss="mse").predict_proba(np.zeros((1, 2)))
    d = L.Dense(3, 3)
    shared = []
    Sequential([d, L.Tanh(), d]).summary(print_fn=shared.append)
    assert any("shared with layer 0" in s for s in shared) and "total parameters: 12" in shared[-1]
