"""Bad values are refused with an error naming the argument; NumPy scalars are
accepted where Python numbers are."""
import numpy as np
import pytest

from symprop import Sequential, layers as L, optimizers as O


@pytest.mark.parametrize("make, match", [
    (lambda: O.SGD(float("nan")), "lr must be finite"),
    (lambda: O.SGD(0.1, weight_decay=-1), "weight_decay must be >= 0"),
    (lambda: O.Adam(eps=0), "eps"),
    (lambda: O.AdamW(eps=-1e-8), "eps"),
    (lambda: O.RMSProp(eps=0), "eps"),
    (lambda: O.AdaGrad(eps=0), "eps"),
    (lambda: O.SGD(True), "lr must be a real number"),
    (lambda: Sequential([L.Dense(3, 2)], dtype=None), "dtype"),
    (lambda: Sequential([L.Conv2D(1, 2, 3)], input_shape=(1, 8.7, 8)), "input_shape"),
])
def test_bad_constructor_values(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_call_values():
    m = Sequential([L.Dense(3, 2)], loss="mse")
    X = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="overflow the model's float32"):
        m.loss_and_grad(X, np.full((4, 2), 1e300))
    c = Sequential([L.Dense(3, 2)])
    for bs in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            c.evaluate(X, np.zeros(4, int), batch_size=bs)
        with pytest.raises(ValueError, match="batch_size"):
            c.predict(X, batch_size=bs)
    with pytest.raises(ValueError, match="empty batch"):
        c.predict(np.zeros((0, 3), np.float32))
    before = [p.copy() for p in c.parameters()]
    with pytest.raises(ValueError, match="NaN or inf"):
        O.SGD(0.1).step(c.parameters(), [np.full_like(p, np.nan) for p in c.parameters()])
    assert all(np.array_equal(a, b) for a, b in zip(before, c.parameters()))
    # NumPy scalars are numbers
    hist = c.fit(X, np.zeros(4, int), epochs=np.int64(2), batch_size=np.int64(2),
                 optimizer=O.SGD(np.float32(0.1)), verbose=0)
    assert len(hist["loss"]) == 2


def test_batchnorm_running_statistics_in_double_and_overflow_refused():
    """Fault injection: the running-statistics update ran in float32, so momentum 1e-50
    rounded to 0 (the statistics never moved) and momentum·n/(n−1)·var overflowed to an inf
    running_var silently (eval outputs then equal β)."""
    m = Sequential([L.BatchNorm1D(1, momentum=1e-50)], input_shape=(1,)).train()
    m.forward(np.full((4, 1), 1e20, np.float32))
    assert m.buffers()[0][0] == np.float32(1e-30)        # 1e-50 · 1e20, representable in float32
    m = Sequential([L.BatchNorm1D(2, momentum=1.0)], input_shape=(2,)).train()
    before = [b.copy() for b in m.buffers()]
    x = np.array([[1.8e19, 1.0], [-1.8e19, 2.0]], np.float32)   # variance 3.2e38, unbiased (n = 2) 6.5e38
    with pytest.raises(ValueError, match=r"BatchNorm1D\(2\): the running variance of channel 0 would exceed float32"):
        m.forward(x)
    assert all(np.array_equal(a, b) for a, b in zip(before, m.buffers()))   # untouched


@pytest.mark.parametrize("grad, kind, match", [
    (np.ones((2, 3), np.complex64), TypeError, "gradient 0 has dtype complex64"),
    (np.full((2, 3), 1e39), ValueError, r"up to 1e\+39, beyond the parameters' float32"),
    ([[1.0] * 3] * 2, TypeError, "gradient 0 is a list, not a numpy array"),
])
def test_gradients_that_cannot_be_used_as_given_are_refused(grad, kind, match):
    """A float64 gradient finite there but inf in float32 used to overflow the weights; a complex one
    was cast silently; a list was reported as a shape mismatch of equal shapes."""
    p = np.zeros((2, 3), np.float32)
    for opt in (O.SGD(0.1), O.Adam()):
        with pytest.raises(kind, match=match):
            opt.step([p], [grad])
        assert not p.any()
