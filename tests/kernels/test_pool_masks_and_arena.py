"""Grad + HVP's working memory: max-pooling argmax masks are int16 window offsets (a window
too large for them is a clear error), and the backward sweep without a tape lets an
elementwise pullback write into the gradients it was given (``runtime/arena.py``) with
results unchanged."""
import numpy as np
import pytest
import torch

from symprop import layers as L
from symprop.runtime import arena
from symprop.runtime.kernels import load
from symprop.runtime.model import Sequential

K = load("window")


def test_pool_masks_are_int16_and_a_forward_fills_them():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8))
    y, M = np.empty((2, 3, 4, 4)), np.empty((2, 3, 4, 4), np.int16)
    K.maxpool2d_forward(x, y, M, s_h=2, s_w=2, p_h=0, p_w=0, K_h=2, K_w=2)
    ref = torch.nn.functional.max_pool2d(torch.tensor(x), 2, return_indices=True)
    assert np.array_equal(y, ref[0].numpy())
    assert M.dtype == np.int16 and M.min() >= 0 and M.max() < 4
    model = Sequential([L.MaxPool2D(2), L.Flatten(), L.Dense(48, 2)], dtype="float64", seed=0).build((3, 8, 8))
    rec = model.trace(x, np.array([0, 1])).records[0]
    masks = [v for v in rec.values() if isinstance(v, np.ndarray) and v.dtype.kind == "i"]
    assert masks and all(m.dtype == np.int16 and m.shape == (2, 3, 4, 4) for m in masks)


def test_a_window_beyond_the_int16_mask_is_a_clear_error():
    x = np.zeros((1, 1, 1, 32768))
    y, M = np.empty((1, 1, 1, 1)), np.empty((1, 1, 1, 1), np.int16)
    with pytest.raises(ValueError, match=r"maxpool2d_forward: a window of more than 32767 cells"):
        K.maxpool2d_forward(x, y, M, s_h=1, s_w=1, p_h=0, p_w=0, K_h=1, K_w=32768)
    K.maxpool2d_forward(x[..., :32767], y, M, s_h=1, s_w=1, p_h=0, p_w=0, K_h=1, K_w=32767)   # the largest
    assert M[0, 0, 0, 0] == 0


def test_a_donated_buffer_is_taken_once_and_only_when_it_fits():
    a, b = np.zeros((4, 5), np.float32), np.zeros((4, 5), np.float64)
    view = np.zeros((8, 5), np.float32)[:4]
    assert arena.take((4, 5), np.float32) is None                        # nothing offered
    with arena.donated(a, b, view, None):
        assert arena.take((4, 6), np.float32) is None
        assert arena.take((4, 5), np.float32) is a
        assert arena.take((4, 5), np.float32) is None                    # used once; never a view
        with arena.donated():
            assert arena.take((4, 5), np.float64) is None                # a nested context: its own offer
        assert arena.take((4, 5), np.float64) is b
    assert arena.take((4, 5), np.float64) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_grad_hvp_without_a_tape_reuses_buffers_and_matches_double_backward(seed):
    rng = np.random.default_rng(seed)
    model = Sequential([L.Conv2D(2, 4, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Tanh(), L.Flatten(),
                        L.Dense(4 * 4 * 4, 5)], dtype="float64", seed=seed).build((2, 8, 8))
    X, y = rng.standard_normal((6, 2, 8, 8)), rng.integers(0, 5, 6)
    v = [rng.standard_normal(p.shape) for p in model.parameters()]
    taken = []
    real = arena.take
    try:
        arena.take = lambda shape, dtype: taken.append(r := real(shape, dtype)) or r
        import symprop.runtime.kernels as KS
        KS.arena.take = arena.take
        _, g, hv = model.hvp(X, y, v, return_grad=True)
    finally:
        arena.take = real
        KS.arena.take = real
    assert any(t is not None for t in taken)                             # the activations wrote in place
    _, tape_grads, tape_hv = model.forward_over_reverse(model._check_X(X), y, v, keep_tape=True)   # no donation
    ps = [torch.tensor(p, requires_grad=True) for p in model.parameters()]
    W1, b1, W2, b2 = ps
    xt = torch.tensor(X)
    h = torch.tanh(torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(xt, W1, b1, padding=1)), 2))
    loss = torch.nn.functional.cross_entropy(h.flatten(1) @ W2.T + b2, torch.tensor(y))
    tg = torch.autograd.grad(loss, ps, create_graph=True)
    thv = torch.autograd.grad(tg, ps, [torch.tensor(a) for a in v])
    for a, b, c, d, e, f in zip(g, hv, tape_grads, tape_hv, tg, thv):
        np.testing.assert_allclose(a, e.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b, f.numpy(), rtol=1e-9, atol=1e-11)
        assert np.array_equal(a, c) and np.array_equal(b, d)


def test_a_residual_block_keeps_its_gradient_for_the_skip_path():
    """Only a plain elementwise layer is offered the gradients: a residual block around an
    activation passes its gradient to the activation and still adds it on the skip path."""
    rng = np.random.default_rng(3)
    model = Sequential([L.Dense(5, 6), L.Residual([L.Tanh()]), L.ReLU(), L.Dense(6, 3)], dtype="float64",
                       seed=1).build((5,))
    assert arena.may_donate(model.layers[2]) and not arena.may_donate(model.layers[1])
    assert not arena.may_donate(model.layers[0])
    X, y = rng.standard_normal((7, 5)), rng.integers(0, 3, 7)
    v = [rng.standard_normal(p.shape) for p in model.parameters()]
    _, g, hv = model.hvp(X, y, v, return_grad=True)
    _, g2, hv2 = model.forward_over_reverse(model._check_X(X), y, v, keep_tape=True)
    for a, b in zip(g + hv, g2 + hv2):
        assert np.array_equal(a, b)
