"""The built-in specs (activations, layers, losses and optimizer updates) and the built-in
layers' definitions (:data:`LAYERS`: each layer's spec and what the spec cannot know, read by
the runtime, checkpoints, the CLI, the document and interop)."""
from __future__ import annotations

import sympy as sp

from .elementwise import ElementwiseSpec

x = sp.Symbol("x")
alpha, beta = sp.Symbol("alpha"), sp.Symbol("beta")

TANH = ElementwiseSpec("tanh", sp.tanh(x), x, doc="hyperbolic tangent")
SIGMOID = ElementwiseSpec("sigmoid", 1 / (1 + sp.exp(-x)), x, doc="logistic sigmoid")
RELU = ElementwiseSpec("relu", sp.Max(0, x), x, doc="rectified linear unit")
SOFTPLUS = ElementwiseSpec("softplus", sp.log(1 + sp.exp(x)), x, doc="softplus (stable form)")

# The activation registry: one line each. `symprop generate` emits every kernel (forward, vjp,
# jvp, R-op, residual, Becker–LeCun) and L.Activation(name), checkpoints, the CLI and the tests
# pick the name up from the compiled manifest.
ACTIVATIONS = {s.name: s for s in (TANH, SIGMOID, RELU, SOFTPLUS)}
ACTIVATIONS["leaky_relu"] = ElementwiseSpec("leaky_relu", sp.Max(x, 0) + alpha * sp.Min(x, 0), x, (("alpha", 0.01),), doc="leaky ReLU, slope alpha below 0")
ACTIVATIONS["elu"] = ElementwiseSpec("elu", sp.Piecewise((x, x > 0), (alpha * (sp.exp(x) - 1), True)), x, (("alpha", 1.0),), doc="exponential linear unit")
ACTIVATIONS["silu"] = ElementwiseSpec("silu", x / (1 + sp.exp(-x)), x, doc="sigmoid-weighted linear unit x·σ(x)")
ACTIVATIONS["swish"] = ElementwiseSpec("swish", x / (1 + sp.exp(-beta * x)), x, (("beta", 1.0),), doc="swish x·σ(βx)")
ACTIVATIONS["gelu"] = ElementwiseSpec("gelu", x * (1 + sp.erf(x / sp.sqrt(2))) / 2, x, doc="Gaussian error linear unit (erf form)")
ACTIVATIONS["mish"] = ElementwiseSpec("mish", x * sp.tanh(sp.log(1 + sp.exp(x))), x, doc="mish x·tanh(softplus(x))")

# Activations with a learnable parameter (one per channel on axis 1, or one shared): kernels of
# the channelwise family (generated/learnable.pyx); the parameter's pullback is a reduction.
LEARNABLE = {
    "prelu": ElementwiseSpec("prelu", sp.Max(x, 0) + alpha * sp.Min(x, 0), x, (("alpha", 0.25),), doc="PReLU: learnable slope below 0", learnable=("alpha",)),
    "swish_learnable": ElementwiseSpec("swish_learnable", x / (1 + sp.exp(-beta * x)), x, (("beta", 1.0),), doc="swish x·σ(βx) with learnable β", learnable=("beta",)),
}

# Masks drawn per forward call (not activations): dropout y = m·x with m ∈ {0, 1/(1−p)}; the
# same spec masks a Dense layer's weights for DropConnect.
_m = sp.Symbol("m")
MASKS = {"dropout": ElementwiseSpec("dropout", _m * x, x, arrays=("m",), doc="inverted dropout: y = m·x, m ∈ {0, 1/(1−p)}")}

# Weight penalties added to the loss: l1·|w| + (l2/2)·w² per weight (Dense and Conv2D weights).
_l1, _l2 = sp.Symbol("l1"), sp.Symbol("l2")
PENALTIES = {"penalty": ElementwiseSpec("penalty", _l1 * sp.Max(x, -x) + _l2 * x ** 2 / 2, x, (("l1", 0.0), ("l2", 0.0)),
                                        doc="weight penalty l1·|w| + (l2/2)·w²")}

# ---------------------------------------------------------------- dense layer
from .indexed import ContractionSpec  # noqa: E402

n, o, i = sp.symbols("n o i", integer=True)
N, O, I = sp.symbols("N O I", integer=True, positive=True)
_x, _W, _b = sp.IndexedBase("x"), sp.IndexedBase("W"), sp.IndexedBase("b")

DENSE = ContractionSpec(
    name="dense", output="y", out_indices=(n, o),
    expr=sp.Sum(_x[n, i] * _W[o, i], (i, 0, I - 1)) + _b[o],
    inputs={"x": (n, i)}, params={"W": (o, i), "b": (o,)},
    extents={n: N, o: O, i: I}, doc="fully connected layer y = x Wᵀ + b")

# ---------------------------------------------------------------- window layers (NCHW)
from .affine import AxisMap  # noqa: E402

c, h, w, u, v, j = sp.symbols("c h w u v j", integer=True)
C_in, C_out, H_in, W_in, H_out, W_out, K_h, K_w = sp.symbols(
    "C_in C_out H_in W_in H_out W_out K_h K_w", integer=True, positive=True)
s_h, s_w, d_h, d_w = sp.symbols("s_h s_w d_h d_w", integer=True, positive=True)
p_h, p_w = sp.symbols("p_h p_w", integer=True, nonnegative=True)


def window_maps(dilated: bool) -> tuple:
    """The two spatial axes ``u = h·s_h + i·d_h − p_h``, ``v = w·s_w + j·d_w − p_w``."""
    return (AxisMap(h, i, u, s_h, d_h if dilated else sp.Integer(1), p_h, H_out, K_h, H_in),
            AxisMap(w, j, v, s_w, d_w if dilated else sp.Integer(1), p_w, W_out, K_w, W_in))


_CONV_MAPS = window_maps(True)
_POOL_MAPS = window_maps(False)
_g_conv = [m.forward_index() for m in _CONV_MAPS]
_g_pool = [m.forward_index() for m in _POOL_MAPS]
_window_extents = {n: N, h: H_out, w: W_out, u: H_in, v: W_in, i: K_h, j: K_w}

CONV2D = ContractionSpec(
    name="conv2d", output="y", out_indices=(n, o, h, w),
    expr=_b[o] + sp.Sum(_W[o, c, i, j] * _x[n, c, _g_conv[0], _g_conv[1]],
                        (c, 0, C_in - 1), (i, 0, K_h - 1), (j, 0, K_w - 1)),
    inputs={"x": (n, c, u, v)}, params={"W": (o, c, i, j), "b": (o,)},
    extents={**_window_extents, o: C_out, c: C_in}, maps=_CONV_MAPS,
    scalars=(s_h, s_w, p_h, p_w, d_h, d_w),
    doc="2-D convolution (cross-correlation, NCHW); reads outside the input are zero")

AVGPOOL2D = ContractionSpec(
    name="avgpool2d", output="y", out_indices=(n, c, h, w),
    expr=sp.Sum(_x[n, c, _g_pool[0], _g_pool[1]], (i, 0, K_h - 1), (j, 0, K_w - 1)) / (K_h * K_w),
    inputs={"x": (n, c, u, v)}, params={},
    extents={**_window_extents, c: C_in}, maps=_POOL_MAPS, scalars=(s_h, s_w, p_h, p_w, K_h, K_w),
    doc="average pooling; zero padding counts in the mean (PyTorch's count_include_pad=True)")

_M = sp.IndexedBase("M")
MAXPOOL2D = ContractionSpec(
    name="maxpool2d", output="y", out_indices=(n, c, h, w),
    expr=sp.Sum(_M[n, c, h, w, i, j] * _x[n, c, _g_pool[0], _g_pool[1]], (i, 0, K_h - 1), (j, 0, K_w - 1)),
    inputs={"x": (n, c, u, v)}, params={}, constants={"M": (n, c, h, w, i, j)},
    selects={"M": ("max", "x")},
    extents={**_window_extents, c: C_in}, maps=_POOL_MAPS, scalars=(s_h, s_w, p_h, p_w, K_h, K_w),
    doc="max pooling, written as its local linearization: M is the one-hot argmax of each window "
        "(first maximum in row-major window order, as PyTorch), saved by the forward pass")


# ---------------------------------------------------------------- composite layers (stages)
from .composite import CompositeSpec, Stage  # noqa: E402

_xe = sp.Symbol("x")
_mu, _var, _d = sp.Symbol("mu"), sp.Symbol("var"), sp.Symbol("d")
_rstd, _xhat, _y = sp.Symbol("rstd", positive=True), sp.Symbol("xhat"), sp.Symbol("y")
_gamma, _beta, _eps = sp.Symbol("gamma"), sp.Symbol("beta"), sp.Symbol("eps")
_rmean, _rvar = sp.Symbol("running_mean"), sp.Symbol("running_var")
#: a group's mean, centred values, biased variance and 1/sqrt(var + eps): BatchNorm's stages
#: over a channel, LayerNorm's and GroupNorm's over a group inside one sample
_MOMENTS = (Stage(_mu, "mean", _xe),
            Stage(_d, "map", _xe - _mu),
            Stage(_var, "mean", _d ** 2),
            Stage(_rstd, "map", 1 / sp.sqrt(_var + _eps)))

BATCHNORM = CompositeSpec(
    name="batchnorm", input=_xe,
    stages=(*_MOMENTS,
            Stage(_xhat, "map", _d * _rstd),
            Stage(_y, "map", _gamma * _xhat + _beta)),
    saved=(_xhat, _rstd), params=(_gamma, _beta), scalars=(("eps", 1e-5),), stats=(_mu, _var),
    groups="one channel: every sample and pixel with that channel index",
    doc="batch normalization (train mode): batch mean and biased variance per channel")

BATCHNORM_EVAL = CompositeSpec(
    name="batchnorm_eval", input=_xe,
    stages=(Stage(_rstd, "map", 1 / sp.sqrt(_rvar + _eps)),
            Stage(_xhat, "map", (_xe - _rmean) * _rstd),
            Stage(_y, "map", _gamma * _xhat + _beta)),
    saved=(_xhat, _rstd), params=(_gamma, _beta), constants=(_rmean, _rvar), scalars=(("eps", 1e-5),),
    groups="one channel", doc="batch normalization (eval mode): the running statistics, per channel")

_m, _e, _s = sp.Symbol("m"), sp.Symbol("e"), sp.Symbol("s", positive=True)
SOFTMAX = CompositeSpec(
    name="softmax", input=_xe,
    stages=(Stage(_m, "max", _xe),
            Stage(_e, "map", sp.exp(_xe - _m)),
            Stage(_s, "sum", _e),
            Stage(_y, "map", _e / _s)),
    saved=(_y,), groups="one sample: its K classes",
    doc="softmax over axis 1, shifted by the row maximum (exp never overflows)")

# Per-sample normalisations, written as a user writes them (README, "Write your own layer"): a
# composite spec over groups inside one sample, then a per-channel scale and shift. LayerNorm,
# RMSNorm and GroupNorm (below) are these parts composed (runtime/composed.py).
_ms = sp.Symbol("ms")
STANDARDIZE = CompositeSpec(
    name="standardize", input=_xe,
    stages=(*_MOMENTS, Stage(_y, "map", _d * _rstd)),
    saved=(_y, _rstd), scalars=(("eps", 1e-5),),
    groups="one sample's normalized features (LayerNorm), or one group of its channels (GroupNorm)",
    doc="zero mean and unit (biased) variance over each group of one sample")

RMS_SCALE = CompositeSpec(
    name="rms_scale", input=_xe,
    stages=(Stage(_ms, "mean", _xe ** 2),
            Stage(_rstd, "map", 1 / sp.sqrt(_ms + _eps)),
            Stage(_y, "map", _xe * _rstd)),
    saved=(_y, _rstd), scalars=(("eps", 1e-5),),
    groups="one sample's normalized features",
    doc="unit root mean square over each group of one sample")

_p = sp.Symbol("p", integer=True)
_P = sp.Symbol("P", integer=True, positive=True)
_C = sp.Symbol("C", integer=True, positive=True)
_gam, _bet = sp.IndexedBase("gamma"), sp.IndexedBase("beta")
CHANNEL_AFFINE = ContractionSpec(
    name="channel_affine", output="y", out_indices=(n, c, _p),
    expr=_x[n, c, _p] * _gam[c] + _bet[c],
    inputs={"x": (n, c, _p)}, params={"gamma": (c,), "beta": (c,)}, extents={n: N, c: _C, _p: _P},
    doc="a learnable scale and shift per channel: y = γ·x + β")

CHANNEL_SCALE = ContractionSpec(
    name="channel_scale", output="y", out_indices=(n, c, _p),
    expr=_x[n, c, _p] * _gam[c],
    inputs={"x": (n, c, _p)}, params={"gamma": (c,)}, extents={n: N, c: _C, _p: _P},
    doc="a learnable scale per channel: y = γ·x")


# ---------------------------------------------------------------- the built-in layers
# One definition each: the spec, the constructor arguments (and the spec symbols they fix), the
# parameters (shapes from the spec's extents), the torch.nn counterpart and the document's words.
# `symprop generate` emits the kernels of every spec named here into the layer's module; the
# runtime class, from_config, checkpoints, summary(), the document, the CLI and interop read it.
from .layerdef import Arg, LayerDef, Param, TorchDef, family  # noqa: E402


def _geometry(args: dict, defaults: dict) -> str:
    """``, stride 2, padding 1`` for the window arguments away from their defaults."""
    out = ""
    for nm, dflt in defaults.items():
        v = args[nm]
        if v != dflt:
            out += f", {nm} {v[0]}" if v[0] == v[1] else f", {nm} {v[0]}$\\times${v[1]}"
    return out


def _pool_padding(args: dict):
    if any(2 * p > k for p, k in zip(args["padding"], args["kernel_size"])):
        return (f"padding {args['padding']} must be at most half the kernel size {args['kernel_size']} "
                f"(as in PyTorch)")
    return None


_BIAS = Arg("bias", "flag", True)
_WEIGHTS = (Param("W", penalized=True), Param("b", when="bias"))


def _pool(name: str, spec, words: str, torch_module: str, requires: dict, keywords=None) -> LayerDef:
    return LayerDef(
        name, spec,
        args=(Arg("kernel_size", "pair", binds=("K_h", "K_w")),
              Arg("stride", "pair", None, binds=("s_h", "s_w"), default_from="kernel_size"),
              Arg("padding", "pair", 0, binds=("p_h", "p_w"), minimum=0)),
        checks=(_pool_padding,), title=name + "({kernel_size})",
        label=lambda a: (f"{words}, {a['kernel_size'][0]}$\\times${a['kernel_size'][1]}"
                         + ("" if a["stride"] == a["kernel_size"] else f", stride {a['stride'][0]}")),
        torch=TorchDef(torch_module, {"kernel_size": "kernel_size", "stride": "stride", "padding": "padding"},
                       requires=requires, keywords=keywords or {}),
        doc=spec.doc)


def _batchnorm(name: str, ranks: tuple) -> LayerDef:
    return LayerDef(
        name, BATCHNORM, specs=(BATCHNORM_EVAL,),
        args=(Arg("num_features", "count"), Arg("eps", "positive", 1e-5), Arg("momentum", "fraction", 0.1)),
        params=(Param("gamma", "ones", ("num_features",)), Param("beta", "zeros", ("num_features",))),
        buffers=(Param("running_mean", "zeros", ("num_features",)), Param("running_var", "ones", ("num_features",))),
        curvature=("exact", "gauss_newton", "hutchinson"),   # exact: in eval mode only
        ranks=ranks, channels="num_features", title=name + "({num_features})",
        label="Batch normalization, {num_features} channels",
        torch=TorchDef(name.replace("D", "d"), {"num_features": "num_features", "eps": "eps", "momentum": "momentum"},
                       {"gamma": "weight", "beta": "bias", "running_mean": "running_mean",
                        "running_var": "running_var"},
                       requires={"affine": (True,), "track_running_stats": (True,)}),
        doc=BATCHNORM.doc)


def _trailing(name: str):
    """LayerNorm's and RMSNorm's shape rule: the input's last dimensions are ``normalized_shape``."""
    def rule(args: dict, s: tuple) -> tuple:
        want = args["normalized_shape"]
        if len(s) < len(want) or tuple(s[len(s) - len(want):]) != want:
            raise ValueError(f"{LAYERS[name].layer_name(args)}: expects per-sample inputs whose last "
                             f"{len(want)} dimension(s) are {want}, got {s}")
        return s
    return rule


def _channels_first(args: dict, s: tuple) -> tuple:
    """GroupNorm's shape rule: per-sample inputs (C, ...) with C = num_channels."""
    if not s or s[0] != args["num_channels"]:
        raise ValueError(f"{LAYERS['GroupNorm'].layer_name(args)}: expects per-sample inputs "
                         f"({args['num_channels']}, ...), got {s}")
    return s


def _groups_divide(args: dict):
    if args["num_channels"] % args["num_groups"]:
        return f"num_groups {args['num_groups']} must divide num_channels {args['num_channels']} (as in PyTorch)"
    return None


_NORMS_CURVATURE = ("exact", "gauss_newton", "hutchinson")   # exact: only as the first layer
_AFFINE_PARTS = (CHANNEL_AFFINE, CHANNEL_SCALE)
_NORMS = (
    LayerDef("LayerNorm", STANDARDIZE, parts=_AFFINE_PARTS,
             args=(Arg("normalized_shape", "shape"), Arg("eps", "positive", 1e-5),
                   Arg("elementwise_affine", "flag", True), Arg("bias", "flag", True)),
             params=(Param("gamma", "ones", ("normalized_shape",), when="elementwise_affine"),
                     Param("beta", "zeros", ("normalized_shape",), when=("elementwise_affine", "bias"))),
             curvature=_NORMS_CURVATURE, shape=_trailing("LayerNorm"), title="LayerNorm({normalized_shape})",
             label="Layer normalization over {normalized_shape}",
             torch=TorchDef("LayerNorm", {k: k for k in ("normalized_shape", "eps", "elementwise_affine", "bias")},
                            {"gamma": "weight", "beta": "bias"}),
             doc="layer normalization (PyTorch's LayerNorm): each sample standardized over its last dimensions "
                 "(normalized_shape), then scaled and shifted elementwise (γ, β of normalized_shape, flattened)"),
    LayerDef("RMSNorm", RMS_SCALE, parts=(CHANNEL_SCALE,),
             args=(Arg("normalized_shape", "shape"), Arg("eps", "positive", None),
                   Arg("elementwise_affine", "flag", True)),
             params=(Param("gamma", "ones", ("normalized_shape",), when="elementwise_affine"),),
             curvature=_NORMS_CURVATURE, shape=_trailing("RMSNorm"), title="RMSNorm({normalized_shape})",
             label="RMS normalization over {normalized_shape}",
             torch=TorchDef("RMSNorm", {k: k for k in ("normalized_shape", "eps", "elementwise_affine")},
                            {"gamma": "weight"}),
             doc="root-mean-square normalization (PyTorch's RMSNorm): each sample divided by the root mean square "
                 "of its last dimensions (eps None: the dtype's machine epsilon), then scaled elementwise"),
    LayerDef("GroupNorm", STANDARDIZE, parts=_AFFINE_PARTS,
             args=(Arg("num_groups", "count"), Arg("num_channels", "count"), Arg("eps", "positive", 1e-5),
                   Arg("affine", "flag", True)),
             params=(Param("gamma", "ones", ("num_channels",), when="affine"),
                     Param("beta", "zeros", ("num_channels",), when="affine")),
             checks=(_groups_divide,), curvature=_NORMS_CURVATURE, shape=_channels_first,
             title="GroupNorm({num_groups}, {num_channels})",
             label="Group normalization, {num_channels} channels in {num_groups} groups",
             torch=TorchDef("GroupNorm", {k: k for k in ("num_groups", "num_channels", "eps", "affine")},
                            {"gamma": "weight", "beta": "bias"}),
             doc="group normalization (PyTorch's GroupNorm): each sample's channels in num_groups groups, each "
                 "group standardized over its channels and positions, then a per-channel scale and shift"),
)

LAYERS = {d.name: d for d in (
    LayerDef("Dense", DENSE,
             args=(Arg("in_features", "count", binds=("I",)), Arg("out_features", "count", binds=("O",)), _BIAS,
                   Arg("dropconnect", "rate", 0.0, omit_default=True)),
             params=_WEIGHTS, title="Dense({in_features} -> {out_features})",
             label="Fully connected, {in_features}$\\to${out_features}",
             torch=TorchDef("Linear", {"in_features": "in_features", "out_features": "out_features", "bias": "bias"},
                            {"W": "weight", "b": "bias"}),
             doc=DENSE.doc),
    LayerDef("Conv2D", CONV2D,
             args=(Arg("in_channels", "count", binds=("C_in",)), Arg("out_channels", "count", binds=("C_out",)),
                   Arg("kernel_size", "pair", binds=("K_h", "K_w")), Arg("stride", "pair", 1, binds=("s_h", "s_w")),
                   Arg("padding", "pair", 0, binds=("p_h", "p_w"), minimum=0),
                   Arg("dilation", "pair", 1, binds=("d_h", "d_w")), _BIAS),
             params=_WEIGHTS, title="Conv2D({in_channels} -> {out_channels}, {kernel_size})",
             label=lambda a: (f"Convolution, {a['in_channels']}$\\to${a['out_channels']}, "
                              f"{a['kernel_size'][0]}$\\times${a['kernel_size'][1]}"
                              + _geometry(a, {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)})),
             torch=TorchDef("Conv2d", {k: k for k in ("in_channels", "out_channels", "kernel_size", "stride",
                                                       "padding", "dilation", "bias")},
                            {"W": "weight", "b": "bias"}, requires={"groups": (1,), "padding_mode": ("zeros",)}),
             doc=CONV2D.doc),
    _pool("AvgPool2D", AVGPOOL2D, "Average pooling", "AvgPool2d",
          {"ceil_mode": (False,), "count_include_pad": (True,), "divisor_override": (None,)},
          {"count_include_pad": True}),
    _pool("MaxPool2D", MAXPOOL2D, "Max pooling", "MaxPool2d",
          {"ceil_mode": (False,), "dilation": (1, (1, 1)), "return_indices": (False,)}),
    LayerDef("Flatten", None, shape=lambda args, s: (int(sp.prod(s)),), title="Flatten",
             label="Flatten (a reshape)",
             torch=TorchDef("Flatten", requires={"start_dim": (1,), "end_dim": (-1,)}),
             doc="(N, C, H, W) -> (N, C·H·W); a movement op whose pullback is the inverse reshape"),
    _batchnorm("BatchNorm1D", (1, 2)),
    _batchnorm("BatchNorm2D", (3,)),
    LayerDef("Softmax", SOFTMAX, curvature=("gauss_newton", "hutchinson"), ranks=(1,),
             title="Softmax", label="Softmax",
             torch=TorchDef("Softmax", requires={"dim": (1, -1)}, keywords={"dim": 1}), doc=SOFTMAX.doc),
    *_NORMS,
)}


def _specs(module: str) -> dict:
    """Every spec the layers of ``module`` run, by name, in definition order (what
    ``symprop generate`` emits into ``generated/<module>.pyx``)."""
    out = {}
    for d in LAYERS.values():
        for s in (d.spec, *d.specs, *d.parts) if d.spec is not None else ():
            if family(s) == module:
                out.setdefault(s.name, s)
    return out


CONTRACTIONS = _specs("dense")
WINDOWS = _specs("window")
COMPOSITES = _specs("composite")
