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
