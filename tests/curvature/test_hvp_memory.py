"""grad+HVP without a tape (``Sequential.hvp``) frees what the backward sweep has passed and
keeps no input tangent that no backward role reads: the results must be bitwise those of the
sweep that keeps everything, and the dropped tangents must really be unread."""
import numpy as np
import pytest

from symprop.runtime import passes
from symprop.runtime.named_models import cifar_cnn, lenet


@pytest.mark.parametrize("make, shape", [(cifar_cnn, (3, 16, 16)), (lenet, (1, 28, 28))])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hvp_without_tape_is_bitwise_the_full_sweep(make, shape, dtype):
    model = make(shape, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, *shape)).astype(dtype)
    y = rng.integers(0, 10, 6)
    v = [rng.normal(size=p.shape).astype(dtype) for p in model.parameters()]
    Xv, yv = model._check_batch(X, y)
    vv = model._check_direction(v)
    tape, g1, h1 = model.forward_over_reverse(Xv, yv, vv, keep_tape=True)
    loss, g2, h2 = model.hvp(X, y, v, return_grad=True)
    assert loss == tape.loss
    for a, b in zip(g1 + h1, g2 + h2):
        assert a.tobytes() == b.tobytes()
    dropped = [type(la).__name__ for la in model.layers if not passes.backward_reads_input_tangent(la)]
    assert "MaxPool2D" in dropped or "AvgPool2D" in dropped or "Activation" in dropped
    assert not any(n in ("Conv2D", "Dense") for n in dropped)
