"""The training loop: callbacks, metrics (against scikit-learn), augmentation, plots from Python,
the shared optimizer defaults, the divergence bound and the Newton eigensolve's BLAS threads."""
import csv
import sys

import numpy as np
import pytest
import sklearn.metrics as skm

from symprop import Sequential, layers as L, optimizers as O
from symprop import augment as A, callbacks as C, metrics as M
from symprop.runtime.losses import get_loss
from symprop.runtime.model import TrainingDiverged


def blobs(n=120, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = rng.normal(size=(n, d)) + 2.0 * np.eye(k, d)[y]
    return X, y


def small(seed=0, k=3, d=6):
    return Sequential([L.Dense(d, 16), L.Tanh(), L.Dense(16, k)], dtype="float64", seed=seed)


def tiny_cnn(seed=0):
    return Sequential([L.Conv2D(1, 4, 3, padding=1), L.ReLU(), L.Flatten(), L.Dense(4 * 6 * 6, 3)],
                      dtype="float64", seed=seed)


def images(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 6, 6)), rng.integers(0, 3, n)


# ------------------------------------------------------------------ callbacks
class Recorder(C.Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, logs):
        self.events.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs):
        self.events.append(("epoch_begin", epoch))

    def on_batch_begin(self, batch, logs):
        self.events.append(("batch_begin", batch))

    def on_batch_end(self, batch, logs):
        assert np.isfinite(logs["loss"]) and logs["size"] > 0
        self.events.append(("batch_end", batch))

    def on_epoch_end(self, epoch, logs):
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "time"} <= set(logs)
        self.events.append(("epoch_end", epoch))

    def on_train_end(self, logs):
        self.events.append(("train_end",))


def test_callback_hooks_run_in_order():
    X, y = blobs(40)
    rec = Recorder()
    small().fit(X, y, epochs=2, batch_size=20, verbose=0, callbacks=[rec], validation_data=(X[:10], y[:10]))
    per_epoch = lambda e: [("epoch_begin", e), ("batch_begin", 1), ("batch_end", 1), ("batch_begin", 2),  # noqa: E731
                           ("batch_end", 2), ("epoch_end", e)]
    assert rec.events == [("train_begin",)] + per_epoch(1) + per_epoch(2) + [("train_end",)]


def test_a_batch_hook_stops_after_that_batch_and_the_epoch_is_still_reported():
    X, y = blobs(60)
    ends = []
    stop = C.LambdaCallback(on_batch_end=lambda b, logs: setattr(m, "stop_training", b == 2),
                            on_epoch_end=lambda e, logs: ends.append((e, logs["loss"])))
    m = small()
    hist = m.fit(X, y, epochs=5, batch_size=20, verbose=0, callbacks=[stop])
    assert hist["stopped_epoch"] == 1 and len(hist["loss"]) == 1 and len(ends) == 1
    assert m.stop_training is False   # reset for the next fit


def test_an_epoch_hook_stops_training():
    X, y = blobs(40)
    m = small()
    cb = C.LambdaCallback(on_epoch_end=lambda e, logs: setattr(m, "stop_training", e == 3))
    assert m.fit(X, y, epochs=10, batch_size=20, verbose=0, callbacks=[cb])["stopped_epoch"] == 3


def test_a_raising_callback_stops_fit_with_the_last_completed_step():
    X, y = blobs(40)
    m, ref = small(), small()
    seen = []

    def boom(batch, logs):
        seen.append([p.copy() for p in m.parameters()])
        if batch == 2:
            raise RuntimeError("my tracker is down")
    with pytest.raises(RuntimeError, match="tracker is down"):
        m.fit(X, y, epochs=3, batch_size=10, verbose=0, callbacks=[C.LambdaCallback(on_batch_end=boom)])
    assert all(np.array_equal(a, b) for a, b in zip(m.parameters(), seen[-1]))   # the step of batch 2 kept
    assert not all(np.array_equal(a, b) for a, b in zip(m.parameters(), ref.parameters()))
    assert m.training is False


def test_early_stopping_callback_equals_the_fit_argument():
    X, y = blobs(200, seed=1)
    Xv, yv = blobs(60, seed=2)
    kw = dict(epochs=60, batch_size=16, validation_data=(Xv, yv), verbose=0)
    a, b = small(), small()
    ha = a.fit(X, y, early_stopping=3, optimizer=O.SGD(0.8), **kw)
    hb = b.fit(X, y, callbacks=[C.EarlyStopping(3, verbose=0)], optimizer=O.SGD(0.8), **kw)
    assert ha["stopped_epoch"] == hb["stopped_epoch"] < 60 and ha["best_epoch"] == hb["best_epoch"]
    assert all(np.array_equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert np.isclose(a.evaluate(Xv, yv)["loss"], ha["val_loss"][ha["best_epoch"] - 1])


def test_early_stopping_on_a_maximised_metric_and_a_missing_monitor():
    X, y = blobs(80)
    cb = C.EarlyStopping(2, monitor="val_f1", verbose=0)
    assert cb.mode == "max"
    small().fit(X, y, epochs=4, verbose=0, validation_split=0.25, metrics=["f1"], callbacks=[cb])
    with pytest.raises(ValueError, match="val_nonsense"):
        small().fit(X, y, epochs=2, verbose=0, validation_split=0.25, callbacks=[C.EarlyStopping(monitor="val_nonsense")])


def test_model_checkpoint_every_n_and_best_only(tmp_path):
    X, y = blobs(60)
    every = C.ModelCheckpoint(tmp_path / "m{epoch}.npz", every=2)
    best = C.ModelCheckpoint(tmp_path / "best.npz", best_only=True, monitor="val_loss")
    m = small()
    hist = m.fit(X, y, epochs=5, verbose=0, validation_split=0.2, callbacks=[every, best])
    assert sorted(p.name for p in tmp_path.glob("m*.npz")) == ["m2.npz", "m4.npz"]
    v = hist["val_loss"]
    improvements = sum(v[i] < min(v[:i], default=np.inf) for i in range(len(v)))
    assert len(best.saved) == improvements >= 1
    from symprop.runtime.training import split
    _, _, (Xv, yv) = split(m, X, y, 0.2, None)
    assert np.isclose(Sequential.load(tmp_path / "best.npz").evaluate(Xv, yv)["loss"], min(v))
    with pytest.raises(ValueError, match="does not exist"):
        C.ModelCheckpoint(tmp_path / "nope" / "x.npz")


def test_csv_logger_writes_one_row_per_epoch(tmp_path):
    X, y = blobs(40)
    path = tmp_path / "log.csv"
    small().fit(X, y, epochs=3, verbose=0, metrics=["f1", "confusion_matrix"], callbacks=[C.CSVLogger(path)])
    rows = list(csv.DictReader(path.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"loss", "accuracy", "f1", "lr", "time"} <= set(rows[0]) and "confusion_matrix" not in rows[0]


def test_callback_misuse_is_refused():
    X, y = blobs(20)
    with pytest.raises(TypeError, match="pass an instance"):
        small().fit(X, y, epochs=1, verbose=0, callbacks=[C.EarlyStopping])
    with pytest.raises(TypeError, match="not a Callback"):
        small().fit(X, y, epochs=1, verbose=0, callbacks=[print])
    with pytest.raises(TypeError, match="unknown hook"):
        C.LambdaCallback(on_epoch_ends=print)


def test_monitors_are_checked_before_any_training(tmp_path):
    X, y = blobs(40)
    began = []
    probe = C.LambdaCallback(on_train_begin=lambda logs: began.append(1))
    for cb, message in [(C.EarlyStopping(monitor="val_acc", mode="max"), "'val_acc', which this fit does not report"),
                        (C.ModelCheckpoint(tmp_path / "b.npz", best_only=True), "monitors the validation data"),
                        (C.EarlyStopping(monitor="val_f1"), "add the metric")]:
        with pytest.raises(ValueError, match=message):
            small().fit(X, y, epochs=2, verbose=0, validation_split=0.25 if "acc" in message or "add" in message
                        else 0.0, callbacks=[probe, cb])
    assert not began
    with pytest.raises(ValueError, match="mode='min' or mode='max'"):
        C.EarlyStopping(monitor="val_roc_auc")
    assert C.EarlyStopping(monitor="val_roc_auc", mode="max").mode == "max"


def test_a_stop_from_on_epoch_begin_runs_no_batch_of_that_epoch():
    X, y = blobs(40)
    m = small()
    batches = []
    cb = C.LambdaCallback(on_epoch_begin=lambda e, logs: setattr(m, "stop_training", e == 2),
                          on_batch_end=lambda b, logs: batches.append(b))
    hist = m.fit(X, y, epochs=5, batch_size=20, verbose=0, callbacks=[cb])
    assert hist["stopped_epoch"] == 1 and len(hist["loss"]) == 1 and len(batches) == 2


def test_best_only_checkpoint_is_not_overwritten_by_a_worse_later_fit(tmp_path):
    X, y = blobs(80)
    ck = C.ModelCheckpoint(tmp_path / "best.npz", best_only=True)
    m = small()
    m.fit(X, y, epochs=8, verbose=0, validation_split=0.25, optimizer=O.SGD(0.1), callbacks=[ck])
    best, n = ck.best, len(ck.saved)
    m.fit(X, y, epochs=2, verbose=0, validation_split=0.25, optimizer=O.SGD(50.0, momentum=0), callbacks=[ck],
          divergence_factor=None)   # a much worse run
    assert ck.best <= best and (len(ck.saved) == n or ck.best < best)


def test_csv_logger_appends_only_the_same_columns(tmp_path):
    X, y = blobs(40)
    path = tmp_path / "log.csv"
    small().fit(X, y, epochs=2, verbose=0, callbacks=[C.CSVLogger(path)])
    small().fit(X, y, epochs=1, verbose=0, callbacks=[C.CSVLogger(path, append=True)])
    assert [r["epoch"] for r in csv.DictReader(path.open())] == ["1", "2", "1"]
    with pytest.raises(ValueError, match="needs the same metrics"):
        small().fit(X, y, epochs=1, verbose=0, metrics=["f1"], callbacks=[C.CSVLogger(path, append=True)])


def test_divergence_bound_spares_fine_tuning_from_a_tiny_loss():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    X = 0.3 * rng.normal(size=(120, 6)) + 3 * np.eye(3, 6)[y]
    m = small()
    m.fit(X, y, epochs=600, batch_size=120, optimizer=O.Adam(0.05), verbose=0)
    assert m.evaluate(X, y)["loss"] < 1e-4
    flipped = y.copy()
    flipped[:6] = (flipped[:6] + 1) % 3   # a few wrong labels: batches 1e5 times the first batch's loss
    losses = []
    m.fit(X, flipped, epochs=2, batch_size=10, optimizer=O.SGD(1e-3, momentum=0), verbose=0,
          callbacks=[C.LambdaCallback(on_batch_end=lambda b, logs: losses.append(logs["loss"]))])
    assert max(losses) > 1e4 * losses[0]   # what a bound on the first batch alone would have stopped


def test_augmentation_repeats_with_fit_seed():
    X, y = images()
    m = tiny_cnn()
    w0 = [p.copy() for p in m.parameters()]
    m.fit(X, y, epochs=1, batch_size=10, verbose=0, augment="shift,rotate", seed=3)
    a = [p.copy() for p in m.parameters()]
    for p, w in zip(m.parameters(), w0):
        p[...] = w
    m.fit(X, y, epochs=1, batch_size=10, verbose=0, augment="shift,rotate", seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, m.parameters()))


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize("seed", range(4))
def test_classification_metrics_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(3, 8))
    n = int(rng.integers(20, 200))
    labels = rng.integers(0, k - 1 if seed % 2 else k, n)   # odd seeds: a class never occurs as a label
    logits = rng.normal(size=(n, k))
    loss = get_loss("softmax_cross_entropy")
    names = ["accuracy", "precision", "recall", "f1", "f1_micro", "f1_weighted", "precision_micro", "recall_weighted",
             "confusion_matrix", "top_2_accuracy", "top_k_accuracy"]
    got = M.compute(M.get_metrics(names), labels, logits, loss)
    pred = logits.argmax(axis=1)
    kw = dict(zero_division=0)
    assert np.isclose(got["accuracy"], skm.accuracy_score(labels, pred))
    assert np.isclose(got["precision"], skm.precision_score(labels, pred, average="macro", **kw))
    assert np.isclose(got["recall"], skm.recall_score(labels, pred, average="macro", **kw))
    assert np.isclose(got["f1"], skm.f1_score(labels, pred, average="macro", **kw))
    assert np.isclose(got["f1_micro"], skm.f1_score(labels, pred, average="micro", **kw))
    assert np.isclose(got["f1_weighted"], skm.f1_score(labels, pred, average="weighted", **kw))
    assert np.isclose(got["precision_micro"], skm.precision_score(labels, pred, average="micro", **kw))
    assert np.isclose(got["recall_weighted"], skm.recall_score(labels, pred, average="weighted", **kw))
    assert np.array_equal(got["confusion_matrix"], skm.confusion_matrix(labels, pred, labels=range(k)))
    assert np.isclose(got["top_2_accuracy"], skm.top_k_accuracy_score(labels, logits, k=2, labels=range(k)))
    assert np.isclose(got["top_k_accuracy"],   # k = 5 of at most 5 classes counts every sample (sklearn warns)
                      skm.top_k_accuracy_score(labels, logits, k=5, labels=range(k)) if k > 5 else 1.0)


@pytest.mark.parametrize("seed", range(3))
def test_regression_metrics_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n, d = int(rng.integers(5, 60)), int(rng.integers(1, 4))
    y, out = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    got = M.compute(M.get_metrics(["mae", "mse", "rmse", "r2"]), y, out, get_loss("mse"))
    assert np.isclose(got["mae"], skm.mean_absolute_error(y, out))
    assert np.isclose(got["mse"], skm.mean_squared_error(y, out))
    assert np.isclose(got["rmse"], np.mean(np.sqrt(skm.mean_squared_error(y, out, multioutput="raw_values"))))
    assert np.isclose(got["r2"], skm.r2_score(y, out))


def test_top_k_breaks_ties_as_scikit_learn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 50)
    scores = rng.integers(0, 3, size=(50, 6)).astype(float)   # many ties
    scores[:5] = 0.0                                          # all equal
    for k in (1, 2, 3):
        got = M.compute(M.get_metrics([f"top_{k}_accuracy"]), labels, scores, get_loss("softmax_cross_entropy"))
        assert np.isclose(got[f"top_{k}_accuracy"], skm.top_k_accuracy_score(labels, scores, k=k, labels=range(6)))


@pytest.mark.parametrize("seed", range(3))
def test_multilabel_metrics_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n, k = 40, int(rng.integers(1, 5))
    Y = (rng.random((n, k)) < 0.4).astype(float)
    logits = rng.normal(size=(n, k))
    P = (logits > 0).astype(int)
    names = ["accuracy", "precision", "recall", "f1", "f1_micro", "precision_weighted", "confusion_matrix"]
    got = M.compute(M.get_metrics(names), Y, logits, get_loss("sigmoid_cross_entropy"))
    Yi = Y.astype(int)
    kw = dict(zero_division=0)
    assert np.isclose(got["accuracy"], np.mean(Yi == P))   # per entry, as fit reports
    assert np.isclose(got["precision"], skm.precision_score(Yi, P, average="macro", **kw))
    assert np.isclose(got["recall"], skm.recall_score(Yi, P, average="macro", **kw))
    assert np.isclose(got["f1"], skm.f1_score(Yi, P, average="macro", **kw))
    assert np.isclose(got["f1_micro"], skm.f1_score(Yi, P, average="micro", **kw))
    assert np.isclose(got["precision_weighted"], skm.precision_score(Yi, P, average="weighted", **kw))
    assert np.array_equal(got["confusion_matrix"], skm.multilabel_confusion_matrix(Yi, P))
    with pytest.raises(ValueError, match="per-class scores"):
        M.compute(M.get_metrics(["top_2_accuracy"]), Y, logits, get_loss("sigmoid_cross_entropy"))


def test_metric_functions_get_labels_and_names():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(30, 4))
    soft = rng.dirichlet(np.ones(4), size=30)                 # probability targets
    got = M.compute(M.get_metrics([skm.accuracy_score, ("bal", skm.balanced_accuracy_score)]), soft, logits,
                    get_loss("softmax_cross_entropy"))
    assert np.isclose(got["accuracy_score"], skm.accuracy_score(soft.argmax(1), logits.argmax(1)))
    assert np.isclose(got["bal"], skm.balanced_accuracy_score(soft.argmax(1), logits.argmax(1)))
    for bad in (("loss", skm.accuracy_score), ("f1", skm.f1_score)):
        with pytest.raises(ValueError, match="may not be named"):
            M.get_metric(bad)
    with pytest.raises(ValueError, match="given twice"):
        M.get_metrics([lambda a, b: 0.0, lambda a, b: 1.0])


def test_evaluate_with_metrics_and_a_callable_on_a_trained_model():
    X, y = blobs(150)
    m = small()
    m.fit(X, y, epochs=5, verbose=0)
    ev = m.evaluate(X, y, metrics=["f1", skm.balanced_accuracy_score, "confusion_matrix"])
    pred = m.predict(X)
    assert np.isclose(ev["accuracy"], skm.accuracy_score(y, pred))
    assert np.isclose(ev["f1"], skm.f1_score(y, pred, average="macro"))
    assert np.isclose(ev["balanced_accuracy_score"], skm.balanced_accuracy_score(y, pred))
    assert ev["confusion_matrix"].sum() == len(y)


def test_fit_reports_metrics_per_epoch_on_training_and_validation():
    X, y = blobs(100)
    hist = small().fit(X, y, epochs=3, verbose=0, validation_split=0.2, metrics=["f1", "top_2_accuracy"])
    for key in ("f1", "val_f1", "top_2_accuracy", "val_top_2_accuracy"):
        assert len(hist[key]) == 3 and all(0 <= v <= 1 for v in hist[key])


def test_metric_misuse_is_refused():
    X, y = blobs(30)
    with pytest.raises(ValueError, match="unknown metric 'f2'"):
        small().evaluate(X, y, metrics=["f2"])
    with pytest.raises(ValueError, match="regression metric"):
        small().fit(X, y, epochs=1, verbose=0, metrics=["r2"])
    reg = Sequential([L.Dense(6, 1)], loss="mse", dtype="float64")
    with pytest.raises(ValueError, match="needs a classification loss"):
        reg.evaluate(X, y.astype(float), metrics=["f1"])
    with pytest.raises(ValueError, match="given twice"):
        small().evaluate(X, y, metrics=["f1", "f1"])


# ------------------------------------------------------------------ augmentation
def test_shift_crop_and_flip_equal_hand_computed_arrays():
    X = np.arange(2 * 2 * 4 * 5, dtype=float).reshape(2, 2, 4, 5) + 1
    out = A.RandomShift(2)(X, np.random.default_rng(7))
    dy, dx = np.random.default_rng(7).integers(-2, 3, size=(2, 2))
    for n in range(2):
        want = np.zeros_like(X[n])
        for h in range(4):
            for w in range(5):
                if 0 <= h - dy[n] < 4 and 0 <= w - dx[n] < 5:
                    want[:, h, w] = X[n, :, h - dy[n], w - dx[n]]
        assert np.array_equal(out[n], want)
    crop = A.RandomCrop((3, 4), padding=1)(X, np.random.default_rng(3))
    r = np.random.default_rng(3)
    top, left = r.integers(0, 4 + 2 - 3 + 1, size=2), r.integers(0, 5 + 2 - 4 + 1, size=2)
    padded = np.pad(X, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for n in range(2):
        assert np.array_equal(crop[n], padded[n, :, top[n]:top[n] + 3, left[n]:left[n] + 4])
    flip = A.RandomFlip(0.5)(X, np.random.default_rng(1))
    which = np.random.default_rng(1).random(2) < 0.5
    for n in range(2):
        assert np.array_equal(flip[n], X[n, :, :, ::-1] if which[n] else X[n])
    assert np.array_equal(X, np.arange(2 * 2 * 4 * 5, dtype=float).reshape(2, 2, 4, 5) + 1)   # input untouched


def test_rotation_equals_scipy_bilinear_rotation():
    from scipy import ndimage
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 2, 9, 9))
    out = A.RandomRotation(30)(X, np.random.default_rng(5))
    angles = np.random.default_rng(5).uniform(-30, 30, size=3)
    for n in range(3):
        for c in range(2):
            want = ndimage.rotate(X[n, c], angles[n], reshape=False, order=1, mode="grid-constant", cval=0.0)
            assert np.allclose(out[n, c], want, atol=1e-9), (n, c)
    assert np.allclose(A.RandomRotation(0)(X, rng), X)


def test_augmented_fit_is_seeded_and_changes_training():
    X, y = images()
    def run(seed, augment):
        m = tiny_cnn(seed)
        m.fit(X, y, epochs=2, batch_size=10, verbose=0, augment=augment)
        return [p.copy() for p in m.parameters()]
    a, b, c = run(0, "shift,rotate"), run(0, "shift,rotate"), run(0, None)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_augmentation_misuse_is_refused():
    X, y = blobs(20)
    with pytest.raises(ValueError, match="image batches"):
        small().fit(X, y, epochs=1, verbose=0, augment="shift")
    Xi, yi = images(10)
    with pytest.raises(ValueError, match="unknown transform zoom"):
        tiny_cnn().fit(Xi, yi, epochs=1, verbose=0, augment="shift,zoom")
    with pytest.raises(TypeError, match="pass an instance"):
        tiny_cnn().fit(Xi, yi, epochs=1, verbose=0, augment=A.RandomShift)
    with pytest.raises(ValueError, match="keep the shape"):
        tiny_cnn().fit(Xi, yi, epochs=1, verbose=0, augment=lambda X, rng: X[:, :, 1:])
    with pytest.raises(ValueError, match="max_shift"):
        A.RandomShift(0)


# ------------------------------------------------------------------ plots
def test_history_plot_from_python(tmp_path):
    pytest.importorskip("matplotlib")
    from symprop import plot
    X, y = blobs(80)
    hist = small().fit(X, y, epochs=4, verbose=0, validation_split=0.25)
    fig = plot.history(hist, tmp_path / "h.png", title="blobs")
    loss_ax = fig.axes[0]
    assert loss_ax.get_yscale() == "log"
    labels = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert labels == ["training", "validation", f"best epoch ({hist['best_epoch']})"]
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib
    backend = matplotlib.get_backend()
    plot.history(hist)
    assert matplotlib.get_backend() == backend   # the caller's pyplot is left alone
    with pytest.raises(TypeError, match="expected the dict"):
        plot.history([1, 2])
    with pytest.raises(ValueError, match="unknown image format"):
        plot.history(hist, tmp_path / "h.xyz")


def test_missing_matplotlib_says_what_to_install(monkeypatch):
    from symprop import plot
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install matplotlib .*checkout"):
        plot.history({"loss": [1.0]})


# ------------------------------------------------------------------ defaults
def test_one_table_of_optimizer_defaults_for_python_and_the_cli():
    from symprop.cli import optimizer_kwargs, parser
    from symprop.runtime.optimizer_defaults import DEFAULTS
    for name, defaults in DEFAULTS.items():
        opt = O.get_optimizer(name)
        for key, value in defaults.items():
            assert getattr(opt, key) == (tuple(value) if isinstance(value, tuple) else value), (name, key)
        args = parser().parse_args(["train", "--optimizer", name, "--model", "mlp"])
        assert repr(O.get_optimizer(name, **optimizer_kwargs(args))) == repr(opt), name
        if name not in ("nesterov",):
            cls = type(opt)
            assert repr(cls()) == repr(opt), name   # O.<Name>() is the same optimizer
    args = parser().parse_args(["train", "--optimizer", "adam", "--momentum", "0.5"])
    with pytest.raises(ValueError, match="--momentum does not apply to --optimizer adam"):
        optimizer_kwargs(args)


def test_an_optimizer_class_gets_a_suggestion():
    X, y = blobs(20)
    with pytest.raises(TypeError, match=r"O\.Adam\(\)"):
        small().fit(X, y, epochs=1, verbose=0, optimizer=O.Adam)


# ------------------------------------------------------------------ divergence
def test_a_growing_loss_stops_training_with_the_weights_before_it():
    X, y = blobs(200)
    m = small()
    with pytest.raises(TrainingDiverged, match="divergence_factor") as ei:
        m.fit(X, y, epochs=20, batch_size=16, verbose=0, optimizer=O.SGD(1e6))
    assert all(np.isfinite(p).all() for p in m.parameters())
    assert isinstance(ei.value.history, dict)
    hist = small().fit(X, y, epochs=20, batch_size=16, verbose=0, optimizer=O.SGD(0.1))   # a normal run: no stop
    assert hist["stopped_epoch"] == 20
    with pytest.raises(ValueError, match="divergence_factor must be > 1"):
        small().fit(X, y, epochs=1, verbose=0, divergence_factor=0.5)


def test_weights_overflowed_by_the_last_step_are_caught_and_restored():
    rng = np.random.default_rng(0)
    X, y = 100 * rng.normal(size=(8, 3)), rng.integers(0, 2, 8)
    m = Sequential([L.Dense(3, 2)], dtype="float32")
    before = [p.copy() for p in m.parameters()]
    with pytest.raises(TrainingDiverged, match="a weight became NaN or inf in the last step of epoch 1"):
        m.fit(X, y, epochs=1, batch_size=8, optimizer=O.SGD(3e38, momentum=0), verbose=0, divergence_factor=None)
    assert all(np.array_equal(p, b) for p, b in zip(m.parameters(), before))


def test_clip_norm_clips_a_float32_gradient_whose_norm_overflows():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 3)), np.full((8, 1), 1.5e19)
    m = Sequential([L.Dense(3, 1)], loss="mse", dtype="float32")
    before = [p.astype(np.float64) for p in m.parameters()]
    _, grads = m.loss_and_grad(X, y)
    assert not np.isfinite(sum(float(np.vdot(g, g)) for g in grads))   # the float32 sum of squares overflows
    m.fit(X, y, epochs=1, batch_size=8, optimizer=O.SGD(1.0, momentum=0), clip_norm=2.0, verbose=0)
    step = np.sqrt(sum(((p.astype(np.float64) - b) ** 2).sum() for p, b in zip(m.parameters(), before)))
    assert np.isclose(step, 2.0, rtol=1e-5)


# ------------------------------------------------------------------ Newton's BLAS threads
def test_newton_eigensolve_holds_blas_at_one_thread_as_the_kernels_do(monkeypatch):
    from threadpoolctl import threadpool_info
    seen = []
    real = np.linalg.eigh

    def spy(a):
        seen.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return real(a)
    monkeypatch.setattr(np.linalg, "eigh", spy)
    X, y = blobs(40, d=3)
    m = Sequential([L.Dense(3, 4), L.Tanh(), L.Dense(4, 3)], dtype="float64")
    m.fit(X, y, epochs=1, batch_size=40, verbose=0, optimizer="newton")
    assert seen and all(s == {1} for s in seen)   # held at one thread, as the kernels hold BLAS


# ------------------------------------------------------------------ the command line
def _cli(*args, cwd):
    import subprocess
    return subprocess.run([sys.executable, "-m", "symprop.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_cli_augments_plots_and_evaluates_with_a_class_report(tmp_path):
    pytest.importorskip("matplotlib")
    r = _cli("train", "--model", "cnn", "--epochs", "1", "--augment", "shift,rotate", "--validation-split", "0.1",
             "--plot", "curves.png", "--save", "m.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "augment shift,rotate" in r.stdout and (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    r = _cli("evaluate", "m.npz", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("test accuracy") and "macro F1" in lines[0]
    head = lines.index("confusion matrix (rows: true class, columns: predicted)")
    matrix = np.array([[int(v) for v in line.split()[1:]] for line in lines[head + 2:head + 12]])
    assert matrix.shape == (10, 10) and matrix.sum() == 360       # the digits test split
    acc = float(lines[0].split()[2])
    assert np.isclose(np.trace(matrix) / matrix.sum(), acc, atol=1e-4)
    r = _cli("train", "--model", "mlp", "--epochs", "1", "--augment", "shift", cwd=tmp_path)
    assert r.returncode == 2 and "image batches" in r.stderr
