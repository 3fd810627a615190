"""Window layers written in user code (``L.from_spec`` of a ContractionSpec with ``maps=``): a
depthwise convolution, a 1-D convolution, a 1-D average pool and a 2-D max pool, compiled through
the window family — forward, parameter and input pullbacks, HVPs (torch double backward) against
PyTorch's ``F.conv2d(groups=C)``, ``F.conv1d``, ``F.avg_pool1d`` and ``F.max_pool2d`` in float64 on random shapes, strides,
paddings and dilations; float32; training; checkpoints; the summary, the document; refusals."""
import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

from support.numeric import rel_err
from support.torch_oracles import check_hvp_against_torch
from symprop import Sequential, layers as L, optimizers
from symprop.specs import AxisMap, ContractionSpec, SpecError

n, c, o, h, w, u, v, i, j = sp.symbols("n c o h w u v i j", integer=True)
N, C, O, H, W_, H_out, W_out, K_h, K_w = sp.symbols("N C O H W H_out W_out K_h K_w", integer=True, positive=True)
L_in, L_out, K = sp.symbols("L L_out K", integer=True, positive=True)
s, d = sp.symbols("s d", integer=True, positive=True)        # stride, dilation
p = sp.Symbol("p", integer=True, nonnegative=True)            # padding
x, W, b = (sp.IndexedBase(a) for a in ("x", "W", "b"))

# y[n,c,h,w] = Σ_ij W[c,i,j]·x[n,c,h·s+i·d−p, w·s+j·d−p] + b[c]: one filter per channel
ROWS, COLS = AxisMap(h, i, u, s, d, p, H_out, K_h, H), AxisMap(w, j, v, s, d, p, W_out, K_w, W_)
DEPTHWISE = ContractionSpec(
    "depthwise", "y", (n, c, h, w),
    sp.Sum(W[c, i, j] * x[n, c, ROWS.forward_index(), COLS.forward_index()], (i, 0, K_h - 1), (j, 0, K_w - 1)) + b[c],
    inputs={"x": (n, c, u, v)}, params={"W": (c, i, j), "b": (c,)},
    extents={n: N, c: C, h: H_out, w: W_out, u: H, v: W_, i: K_h, j: K_w}, maps=(ROWS, COLS), scalars=(s, p, d),
    doc="depthwise convolution, one filter per channel")

# y[n,o,h] = Σ_{c,i} W[o,c,i]·x[n,c,h·s+i·d−p] + b[o] over (N, C, L)
LINE = AxisMap(h, i, u, s, d, p, L_out, K, L_in)
CONV1D = ContractionSpec(
    "conv1d", "y", (n, o, h), sp.Sum(W[o, c, i] * x[n, c, LINE.forward_index()], (c, 0, C - 1), (i, 0, K - 1)) + b[o],
    inputs={"x": (n, c, u)}, params={"W": (o, c, i), "b": (o,)},
    extents={n: N, o: O, c: C, h: L_out, u: L_in, i: K}, maps=(LINE,), scalars=(s, p, d),
    doc="1-D convolution over (N, C, L)")

# y[n,c,h] = Σ_i x[n,c,h·s+i−p] / K: the kernel size K is a scalar (no weight fixes it)
POOL = AxisMap(h, i, u, s, sp.Integer(1), p, L_out, K, L_in)
AVGPOOL1D = ContractionSpec(
    "avgpool1d", "y", (n, c, h), sp.Sum(x[n, c, POOL.forward_index()], (i, 0, K - 1)) / K,
    inputs={"x": (n, c, u)}, params={}, extents={n: N, c: C, h: L_out, u: L_in, i: K}, maps=(POOL,),
    scalars=(s, p, K), doc="1-D average pooling, zero padding counted")

# max pooling as its local linearization: M[n,c,h,w,i,j] is the one-hot argmax of each window
# (selects=), made by the forward pass and read by the pullbacks (the built-in MaxPool2D's form)
s_h, s_w = sp.symbols("s_h s_w", integer=True, positive=True)
p_h, p_w = sp.symbols("p_h p_w", integer=True, nonnegative=True)
MAX_ROWS, MAX_COLS = AxisMap(h, i, u, s_h, sp.Integer(1), p_h, H_out, K_h, H), AxisMap(w, j, v, s_w, sp.Integer(1), p_w,
                                                                                      W_out, K_w, W_)
M = sp.IndexedBase("M")
MAXPOOL = ContractionSpec(
    "my_maxpool", "y", (n, c, h, w),
    sp.Sum(M[n, c, h, w, i, j] * x[n, c, MAX_ROWS.forward_index(), MAX_COLS.forward_index()],
           (i, 0, K_h - 1), (j, 0, K_w - 1)),
    inputs={"x": (n, c, u, v)}, params={}, constants={"M": (n, c, h, w, i, j)}, selects={"M": ("max", "x")},
    extents={n: N, c: C, h: H_out, w: W_out, u: H, v: W_, i: K_h, j: K_w}, maps=(MAX_ROWS, MAX_COLS),
    scalars=(s_h, s_w, p_h, p_w, K_h, K_w), doc="max pooling written by the user")


def _layer_against(layer, torch_fn, X, params, rng):
    """Forward and every pullback of one layer against torch autograd (float64)."""
    layer.build(X.shape[1:], np.float64, rng)   # a built layer keeps its sizes and parameters
    xt = torch.tensor(X, requires_grad=True)
    pt = [torch.tensor(a, requires_grad=True) for a in params]
    yt = torch_fn(xt, *pt)
    y, rec = layer.forward(X)
    assert y.shape == tuple(yt.shape)
    assert rel_err(y, yt.detach().numpy()) < 1e-12
    g = rng.normal(size=y.shape)
    want = torch.autograd.grad(yt, [xt, *pt], torch.tensor(g))
    gx, grads = layer.vjp(rec, g)
    for got, ref in zip([gx, *grads], want):
        assert rel_err(got, ref.numpy()) < 1e-12


def _geometry(rng):
    return {"s": int(rng.integers(1, 3)), "p": int(rng.integers(0, 2)), "d": int(rng.integers(1, 3))}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_depthwise_convolution_equals_grouped_conv2d(seed):
    rng = np.random.default_rng(seed)
    g = _geometry(rng)
    ch, kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    hh, ww = int(rng.integers(6, 10)), int(rng.integers(6, 10))
    dw = L.from_spec(DEPTHWISE, init={"b": lambda shape, r: r.normal(size=shape)}, K_h=kh, K_w=kw, **g)
    ho, wo = ((size + 2 * g["p"] - g["d"] * (k - 1) - 1) // g["s"] + 1 for size, k in ((hh, kh), (ww, kw)))
    model = Sequential([L.Conv2D(2, ch, 1), dw, L.Tanh(), L.Flatten(), L.Dense(ch * ho * wo, 3)], dtype="float64",
                       seed=seed, input_shape=(2, hh, ww))
    assert dw.arrays["W"].shape == (ch, kh, kw) and np.abs(dw.arrays["W"]).max() <= 1 / np.sqrt(kh * kw)

    def conv(xt, Wt, bt):
        return F.conv2d(xt, Wt[:, None], bt, stride=g["s"], padding=g["p"], dilation=g["d"], groups=ch)
    _layer_against(dw, conv, rng.normal(size=(3, ch, hh, ww)), [dw.arrays["W"], dw.arrays["b"]], rng)

    X, y = rng.normal(size=(4, 2, hh, ww)), rng.integers(0, 3, 4)

    def torch_loss_of(pt):   # the depthwise layer's input gradient feeds the 1x1 conv's gradients
        hid = F.conv2d(torch.tensor(X), pt[0], pt[1])
        hid = torch.tanh(conv(hid, pt[2], pt[3])).reshape(len(X), -1)
        return F.cross_entropy(F.linear(hid, pt[4], pt[5]), torch.tensor(y))
    check_hvp_against_torch(model, X, y, [rng.normal(size=q.shape) for q in model.parameters()], torch_loss_of)


@pytest.mark.slow   # its own compile (~9 s cold): the default suite keeps the depthwise spec the docs share
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv1d_equals_F_conv1d(seed):
    rng = np.random.default_rng(seed)
    g = _geometry(rng)
    ci, co, k, ln = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(7, 12))
    conv = L.from_spec(CONV1D, init={"b": 0.1}, O=co, K=k, **g)
    out_len = (ln + 2 * g["p"] - g["d"] * (k - 1) - 1) // g["s"] + 1
    model = Sequential([conv, L.Tanh(), L.Flatten(), L.Dense(co * out_len, 2)], dtype="float64", seed=seed,
                       input_shape=(ci, ln))
    assert conv.output_shape((ci, ln)) == (co, out_len)

    def conv1d(xt, Wt, bt):
        return F.conv1d(xt, Wt, bt, stride=g["s"], padding=g["p"], dilation=g["d"])
    _layer_against(conv, conv1d, rng.normal(size=(3, ci, ln)), [conv.arrays["W"], conv.arrays["b"]], rng)
    X, y = rng.normal(size=(5, ci, ln)), rng.integers(0, 2, 5)

    def torch_loss_of(pt):
        hid = torch.tanh(conv1d(torch.tensor(X), pt[0], pt[1])).reshape(len(X), -1)
        return F.cross_entropy(F.linear(hid, pt[2], pt[3]), torch.tensor(y))
    check_hvp_against_torch(model, X, y, [rng.normal(size=q.shape) for q in model.parameters()], torch_loss_of)


@pytest.mark.slow   # its own compile (~6 s cold)
@pytest.mark.parametrize("seed", [0, 1])
def test_user_average_pool_equals_F_avg_pool1d(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 4))
    g = {"s": int(rng.integers(1, 3)), "p": int(rng.integers(0, k // 2 + 1))}
    pool = L.from_spec(AVGPOOL1D, K=k, **g)
    _layer_against(pool, lambda xt: F.avg_pool1d(xt, k, g["s"], g["p"], count_include_pad=True),
                   rng.normal(size=(2, 3, 9)), [], rng)
    # a per-channel PReLU below the pool: its parameters' gradients and HVP pass the pool's
    # input pullback, pushforward and R-op
    out_len = (9 + 2 * g["p"] - k) // g["s"] + 1
    model = Sequential([L.PReLU(3), pool, L.Tanh(), L.Flatten(), L.Dense(3 * out_len, 2)], dtype="float64",
                       seed=seed, input_shape=(3, 9))
    model.parameters()[0][:] = rng.uniform(-1, 1, 3)
    X, y = rng.normal(size=(4, 3, 9)), rng.integers(0, 2, 4)

    def torch_loss_of(pt):
        hid = F.prelu(torch.tensor(X), pt[0])
        hid = torch.tanh(F.avg_pool1d(hid, k, g["s"], g["p"], count_include_pad=True)).reshape(len(X), -1)
        return F.cross_entropy(F.linear(hid, pt[1], pt[2]), torch.tensor(y))
    check_hvp_against_torch(model, X, y, [rng.normal(size=q.shape) for q in model.parameters()], torch_loss_of)


@pytest.mark.slow   # the max-pool spec's own compile (~7 s cold); the default suite keeps the depthwise one
@pytest.mark.parametrize("k, stride, pad", [(2, 2, 0), (3, 1, 1)])
def test_user_max_pool_equals_F_max_pool2d(k, stride, pad, rng):
    pool = L.from_spec(MAXPOOL, K_h=k, K_w=k, s_h=stride, s_w=stride, p_h=pad, p_w=pad)
    _layer_against(pool, lambda xt: F.max_pool2d(xt, k, stride, pad), rng.normal(size=(2, 3, 6, 6)), [], rng)
    ho = (6 + 2 * pad - k) // stride + 1
    model = Sequential([L.PReLU(3), pool, L.Tanh(), L.Flatten(), L.Dense(3 * ho * ho, 2)], dtype="float64", seed=0,
                       input_shape=(3, 6, 6))
    model.parameters()[0][:] = rng.uniform(-1, 1, 3)
    X, y = rng.normal(size=(4, 3, 6, 6)), rng.integers(0, 2, 4)

    def torch_loss_of(pt):
        hid = torch.tanh(F.max_pool2d(F.prelu(torch.tensor(X), pt[0]), k, stride, pad)).reshape(len(X), -1)
        return F.cross_entropy(F.linear(hid, pt[1], pt[2]), torch.tensor(y))
    check_hvp_against_torch(model, X, y, [rng.normal(size=q.shape) for q in model.parameters()], torch_loss_of)


@pytest.mark.slow   # its own compile (~12 s cold); the default suite already pays for three window specs
def test_three_axis_average_pool_equals_F_avg_pool3d(rng):
    """Three window axes (any number lowers: each its own map), one stride and padding for all."""
    t, q, D, D_out = sp.Symbol("t", integer=True), sp.Symbol("q", integer=True), *sp.symbols("D D_out", integer=True,
                                                                                                positive=True)
    k3 = sp.Symbol("k", integer=True)
    maps = (AxisMap(t, k3, q, s, sp.Integer(1), p, D_out, K, D), AxisMap(h, i, u, s, sp.Integer(1), p, H_out, K, H),
            AxisMap(w, j, v, s, sp.Integer(1), p, W_out, K, W_))
    spec = ContractionSpec("avgpool3d", "y", (n, c, t, h, w),
                           sp.Sum(x[n, c, maps[0].forward_index(), maps[1].forward_index(), maps[2].forward_index()],
                                  (k3, 0, K - 1), (i, 0, K - 1), (j, 0, K - 1)) / K ** 3,
                           inputs={"x": (n, c, q, u, v)}, params={},
                           extents={n: N, c: C, t: D_out, h: H_out, w: W_out, q: D, u: H, v: W_, k3: K, i: K, j: K},
                           maps=maps, scalars=(s, p, K))
    pool = L.from_spec(spec, K=2, s=2, p=1)
    _layer_against(pool, lambda xt: F.avg_pool3d(xt, 2, 2, 1, count_include_pad=True), rng.normal(size=(2, 2, 3, 4, 5)),
                   [], rng)
    model = Sequential([L.PReLU(2), pool, L.Tanh(), L.Flatten(), L.Dense(2 * 2 * 3 * 3, 2)], dtype="float64", seed=0,
                       input_shape=(2, 3, 4, 5))
    model.parameters()[0][:] = rng.uniform(-1, 1, 2)
    X, y = rng.normal(size=(3, 2, 3, 4, 5)), rng.integers(0, 2, 3)

    def torch_loss_of(pt):
        hid = F.avg_pool3d(F.prelu(torch.tensor(X), pt[0]), 2, 2, 1, count_include_pad=True)
        return F.cross_entropy(F.linear(torch.tanh(hid).reshape(len(X), -1), pt[1], pt[2]), torch.tensor(y))
    check_hvp_against_torch(model, X, y, [rng.normal(size=q_.shape) for q_ in model.parameters()], torch_loss_of)


def test_float32_agrees_with_float64(rng):
    layers = lambda: [L.from_spec(DEPTHWISE, init={"b": 0.1}, K_h=3, K_w=3, s=2, p=1, d=1), L.Tanh(),  # noqa: E731
                      L.Flatten(), L.Dense(2 * 4 * 4, 3)]
    m64 = Sequential(layers(), dtype="float64", seed=0, input_shape=(2, 8, 8))
    m32 = Sequential(layers(), dtype="float32", seed=0, input_shape=(2, 8, 8))
    for a, b32 in zip(m64.parameters(), m32.parameters()):
        b32[...] = a
    X, y = rng.normal(size=(6, 2, 8, 8)), rng.integers(0, 3, 6)
    l64, g64 = m64.loss_and_grad(X, y)
    l32, g32 = m32.loss_and_grad(X.astype(np.float32), y)
    assert g32[0].dtype == np.float32 and abs(l32 - l64) < 1e-5
    assert max(rel_err(a, b32) for a, b32 in zip(g32, g64)) < 1e-4


@pytest.mark.slow   # the max-pool spec (see above)
def test_pool_model_trains_and_round_trips(tmp_path):
    """A parameter-free window layer (its scalars in the checkpoint) in a model on digits read as
    (N, 8 rows, 8 columns): trains, saves, loads by name and hash, predicts the same."""
    from symprop.runtime.data import load_digits
    (X, y), (Xt, yt) = load_digits()
    X, Xt = X.reshape(-1, 8, 8), Xt.reshape(-1, 8, 8)
    pool = L.from_spec(AVGPOOL1D, K=2, s=2, p=0)
    model = Sequential([L.PReLU(8), pool, L.Flatten(), L.Dense(8 * 4, 10)], seed=0)
    before = model.evaluate(X, y)["loss"]
    model.fit(X, y, epochs=3, optimizer=optimizers.Adam(0.03), verbose=0)
    assert model.evaluate(X, y)["loss"] < 0.5 * before
    assert pool.config() == {"type": "Spec", "family": "contraction", "name": "avgpool1d", "hash": AVGPOOL1D.hash,
                             "sizes": {"K": 2, "C": 8, "L": 8}, "scalars": {"s": 2, "p": 0, "K": 2}}
    path = tmp_path / "pool.npz"
    model.save(path)
    back = Sequential.load(path, custom_objects={"avgpool1d": AVGPOOL1D})
    np.testing.assert_array_equal(back.predict(Xt), model.predict(Xt))
    lines = []
    back.summary(print_fn=lines.append)
    assert any("avgpool1d(C=8, K=2, L=8, p=0, s=2)" in ln and "(N, 8, 4)" in ln for ln in lines), lines


def test_trains_round_trips_and_is_documented(tmp_path):
    from symprop.runtime.data import load_digits
    (X, y), (Xt, yt) = load_digits(flatten=False)
    X, y = X[:300], y[:300]
    dw = L.from_spec(DEPTHWISE, init={"b": 0.0}, K_h=3, K_w=3, s=2, p=1, d=1)
    model = Sequential([L.Conv2D(1, 4, 3, padding=1), L.Tanh(), dw, L.Tanh(), L.Flatten(), L.Dense(4 * 4 * 4, 10)],
                       seed=0)
    before = model.evaluate(X, y)["loss"]
    model.fit(X, y, epochs=3, optimizer=optimizers.Adam(0.03), verbose=0)
    after = model.evaluate(X, y)
    assert after["loss"] < 0.5 * before and after["accuracy"] > 0.7, (before, after)
    lines = []
    model.summary(print_fn=lines.append)
    assert any("depthwise(" in ln and "s=2" in ln and "(N, 4, 4, 4)" in ln for ln in lines), lines
    assert model.layers[2].config()["scalars"] == {"s": 2, "p": 1, "d": 1}
    path = tmp_path / "dw.npz"
    model.save(path)
    with pytest.raises(ValueError, match="custom_objects=.*depthwise"):
        Sequential.load(path)
    other = ContractionSpec("depthwise", "y", DEPTHWISE.out_indices, 2 * DEPTHWISE.expr, inputs=DEPTHWISE.inputs,
                            params=DEPTHWISE.params, extents=DEPTHWISE.extents, maps=DEPTHWISE.maps,
                            scalars=DEPTHWISE.scalars)
    with pytest.raises(ValueError, match="'depthwise'.*not the one the model was saved with"):
        Sequential.load(path, custom_objects={"depthwise": other})
    back = Sequential.load(path, custom_objects={"depthwise": DEPTHWISE})
    np.testing.assert_array_equal(back.predict(Xt), model.predict(Xt))
    assert back.layers[2].scalars() == {"s": 2, "p": 1, "d": 1}
    text = model.latex(tmp_path / "dw.tex")
    assert "Depthwise convolution" in text and "depthwise\\_vjp\\_x" in text


def test_bad_sizes_and_scalars_name_the_layer():
    with pytest.raises(TypeError, match="depthwise.*scalar\\(s\\) \\['d'\\]"):
        L.from_spec(DEPTHWISE, K_h=3, K_w=3, s=1, p=0)
    with pytest.raises(ValueError, match="scalar s must be an integer >= 1, got 0"):
        L.from_spec(DEPTHWISE, K_h=3, K_w=3, s=0, p=0, d=1)
    with pytest.raises(TypeError, match="scalar p must be an integer, got 0.5"):
        L.from_spec(DEPTHWISE, K_h=3, K_w=3, s=1, p=0.5, d=1)
    with pytest.raises(TypeError, match="H_out.*follow from the window's index maps"):
        L.from_spec(DEPTHWISE, K_h=3, K_w=3, H_out=4, s=1, p=0, d=1)
    with pytest.raises(TypeError, match="unknown size.*'Q'"):
        L.from_spec(DEPTHWISE, K_h=3, K_w=3, Q=4, s=1, p=0, d=1)
    with pytest.raises(TypeError, match="scalar K must be an integer, got 2.0"):
        L.from_spec(AVGPOOL1D, K=2.0, s=1, p=0)
    with pytest.raises(TypeError, match="size K_h must be a positive integer, got 2.0"):
        L.from_spec(DEPTHWISE, K_h=2.0, K_w=3, s=1, p=0, d=1)
    batch_window = AxisMap(h, i, n, s, sp.Integer(1), p, L_out, K, N)
    with pytest.raises(SpecError, match="cannot run along the batch index n"):
        L.from_spec(ContractionSpec("batch_window", "y", (n, c), sp.Sum(x[batch_window.forward_index(), c], (i, 0, K - 1)),
                                    inputs={"x": (n, c)}, params={}, extents={n: N, c: C, h: L_out, i: K},
                                    maps=(batch_window,), scalars=(s, p, K)), s=1, p=0, K=2)
    pool = L.from_spec(AVGPOOL1D, K=5, s=1, p=0)
    with pytest.raises(ValueError, match=r"avgpool1d\(.*input of shape \(3, 4\) is too small.*output would be \(3, 0\)"):
        Sequential([pool], input_shape=(3, 4))
    model = Sequential([pool], dtype="float64", input_shape=(3, 6))   # the failed build left it unbuilt
    with pytest.raises(ValueError, match=r"avgpool1d\(.*expected input of shape \(N, 3, 6\), got \(2, 3\)"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"avgpool1d\(.*expected input of shape \(N, 3, 6\), got \(2, 3, 7\)"):
        model.predict(np.zeros((2, 3, 7)))
    with pytest.raises(ValueError, match=r"avgpool1d\(.*expects per-sample inputs of shape \(3, 6\), got \(3, 7\)"):
        pool.forward(np.zeros((2, 3, 7)))


def test_what_the_window_lowering_cannot_emit_is_refused_by_name():
    wide = AxisMap(h, i, u, 2 * s, sp.Integer(1), p, L_out, K, L_in)
    with pytest.raises(SpecError, match="stride, dilation and padding.*got 2\\*s"):
        L.from_spec(ContractionSpec("wide", "y", (n, c, h), sp.Sum(x[n, c, wide.forward_index()], (i, 0, K - 1)),
                                    inputs={"x": (n, c, u)}, params={}, extents={n: N, c: C, h: L_out, u: L_in, i: K},
                                    maps=(wide,), scalars=(s, p, K)), s=1, p=0, K=2)
    soft = ContractionSpec("exp_window", "y", (n, c, h), sp.Sum(sp.exp(x[n, c, POOL.forward_index()]), (i, 0, K - 1)),
                           inputs={"x": (n, c, u)}, params={}, extents=AVGPOOL1D.extents, maps=(POOL,),
                           scalars=(s, p, K))
    with pytest.raises(SpecError, match="exp_window.*cannot emit.*coefficient exp\\(x\\[n, c, .*\\]\\) that is not a "
                                        "constant"):
        L.from_spec(soft, s=1, p=0, K=2)
    skewed = ContractionSpec("skewed", "y", (n, c, h), sp.Sum(x[n, c, 2 * h + i], (i, 0, K - 1)),
                             inputs={"x": (n, c, u)}, params={}, extents=AVGPOOL1D.extents, maps=(POOL,),
                             scalars=(s, p, K))
    with pytest.raises(SpecError, match="skewed.*index 2\\*h \\+ i of x.*neither a window read nor its adjoint"):
        L.from_spec(skewed, s=1, p=0, K=2)
    bad_extent = AxisMap(h, i, u, s, d, p, L_out, K_h, L_in)
    with pytest.raises(SpecError, match="index map.*index i has extent K in extents=, K_h in the map"):
        L.from_spec(ContractionSpec("bad_extent", "y", (n, o, h), CONV1D.expr, inputs=CONV1D.inputs,
                                    params=CONV1D.params, extents=CONV1D.extents, maps=(bad_extent,),
                                    scalars=(s, p, d)), O=2, K=3, s=1, p=0, d=1)


@pytest.mark.slow   # compiles a spec of its own (~10 s cold); an unusual form, the default suite has four
def test_parameter_read_through_the_window_equals_pytorch(rng):
    """y[n,h] = Σ_i a[h·s+i−p]·x[n,h·s+i−p]: a parameter over input positions read through the
    window. Its pullback's output index is the window's input position, read through the adjoint:
    the guarded-gather form of the lowering (the other kernels take the scatter form)."""
    a = sp.IndexedBase("a")
    spec = ContractionSpec("windowed_weight", "y", (n, h),
                           sp.Sum(a[POOL.forward_index()] * x[n, POOL.forward_index()], (i, 0, K - 1)),
                           inputs={"x": (n, u)}, params={"a": (u,)}, extents={n: N, h: L_out, u: L_in, i: K},
                           maps=(POOL,), scalars=(s, p, K))
    layer = L.from_spec(spec, init={"a": lambda shape, r: r.normal(size=shape)}, K=3, s=2, p=1)
    model = Sequential([L.Dense(4, 9), layer, L.Tanh(), L.Dense(5, 2)], dtype="float64", seed=0)
    X, y = rng.normal(size=(5, 4)), rng.integers(0, 2, 5)

    def torch_loss_of(pt):
        hid = F.linear(torch.tensor(X), pt[0], pt[1]) * pt[2]
        hid = torch.tanh(3 * F.avg_pool1d(hid[:, None], 3, 2, 1, count_include_pad=True)[:, 0])
        return F.cross_entropy(F.linear(hid, pt[3], pt[4]), torch.tensor(y))
    check_hvp_against_torch(model, X, y, [rng.normal(size=q.shape) for q in model.parameters()], torch_loss_of)


def test_hessian_diagonals_through_a_depthwise_layer(rng):
    """The exact and Gauss-Newton diagonals through the user window layer (its per-sample squared
    pullbacks and input pullbacks of factor columns) against PyTorch's full Hessian."""
    from support.torch_oracles import flatten_torch
    dw = L.from_spec(DEPTHWISE, init={"b": lambda shape, r: r.normal(size=shape)}, K_h=2, K_w=2, s=1, p=1, d=2)
    model = Sequential([dw, L.Tanh(), L.Flatten(), L.Dense(2 * 2 * 3, 3)], dtype="float64", seed=0,
                       input_shape=(2, 2, 3))
    X, y = rng.normal(size=(3, 2, 2, 3)), rng.integers(0, 3, 3)

    def outputs(pt):
        hid = F.conv2d(torch.tensor(X), pt[0][:, None], pt[1], padding=1, dilation=2, groups=2)
        return F.linear(torch.tanh(hid).reshape(len(X), -1), pt[2], pt[3])
    pt = [torch.tensor(q) for q in model.parameters()]
    flat, unflatten = flatten_torch(pt)
    H = torch.autograd.functional.hessian(lambda th: F.cross_entropy(outputs(unflatten(th)), torch.tensor(y)), flat)
    exact = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="exact")])
    assert rel_err(exact, np.diag(H.numpy())) < 1e-10
    out = outputs(pt).detach()
    J = torch.autograd.functional.jacobian(lambda th: outputs(unflatten(th)).reshape(-1), flat).numpy()
    Ho = torch.autograd.functional.hessian(lambda o: F.cross_entropy(o.reshape(out.shape), torch.tensor(y)),
                                           out.reshape(-1)).numpy()
    gn = np.concatenate([a.ravel() for a in model.hessian_diagonal(X, y, method="gauss_newton")])
    assert rel_err(gn, np.einsum("ip,ij,jp->p", J, Ho, J)) < 1e-10
    assert all(np.isfinite(a).all() for a in model.hessian_diagonal(X, y, method="becker_lecun"))


def test_bitwise_the_same_on_one_and_two_threads(rng):
    """Every loop nest writes each element from one thread in a fixed order (the parameters'
    pullbacks in parallel over their first index): results do not depend on the thread count."""
    from threadpoolctl import threadpool_limits
    dw = L.from_spec(DEPTHWISE, init={"b": 0.1}, K_h=3, K_w=3, s=1, p=1, d=1)
    model = Sequential([dw, L.Tanh(), L.Flatten(), L.Dense(8 * 12 * 12, 3)], seed=0, input_shape=(8, 12, 12))
    X, y = rng.normal(size=(48, 8, 12, 12)).astype(np.float32), rng.integers(0, 3, 48)
    v = [rng.normal(size=q.shape).astype(np.float32) for q in model.parameters()]
    runs = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="openmp"):
            _, grads, hv = model.hvp(X, y, v, return_grad=True)
            runs.append(grads + hv)
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_two_windows_on_one_output_position_are_refused_by_name():
    """y[n,c,h] = Σ_ij x[n,c,h·s+i−p]·x[n,c,h·s+2j−p]: solving one window's adjoint for h puts the
    other read at u − i + 2j, a composition of two maps that no loop nest here reads: refused with
    the term named (before compiling anything)."""
    j2, J = sp.Symbol("j", integer=True), sp.Symbol("J", integer=True, positive=True)
    taps3 = AxisMap(h, i, u, s, sp.Integer(1), p, L_out, K, L_in)
    taps2 = AxisMap(h, j2, u, s, sp.Integer(2), p, L_out, J, L_in)
    spec = ContractionSpec("two_windows", "y", (n, c, h),
                           sp.Sum(x[n, c, taps3.forward_index()] * x[n, c, taps2.forward_index()], (i, 0, K - 1),
                                  (j2, 0, J - 1)),
                           inputs={"x": (n, c, u)}, params={}, extents={n: N, c: C, h: L_out, u: L_in, i: K, j2: J},
                           maps=(taps3, taps2), scalars=(s, p, K, J))
    with pytest.raises(SpecError, match=r"two_windows.*index -i \+ 2\*j \+ u of x\[n, c, -i \+ 2\*j \+ u\] is "
                                        r"neither a window read nor its adjoint"):
        L.from_spec(spec, K=3, J=2, s=1, p=1)
