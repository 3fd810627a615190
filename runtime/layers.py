"""Layers: thin wrappers that validate shapes and call the generated kernels.

Every derivative here is a call into ``symprop.generated`` (or a module compiled from a
user's SymPy spec); nothing derivative-shaped is written by hand.
"""
from __future__ import annotations

import numpy as np

from ..generated import activations as _act
from ..generated import dense as _dense


def split_by_layer(layers, flat: list) -> list[list]:
    """Cut a list aligned with the layers' concatenated ``parameters()`` into one list per layer."""
    parts, i = [], 0
    for la in layers:
        n = len(la.parameters())
        parts.append(flat[i:i + n])
        i += n
    return parts


def weight_bias(Rparams: list, bias: bool):
    """``(RW, Rb)`` from a weight-and-bias layer's directions (``Rb`` is None without a bias)."""
    return (Rparams[0], Rparams[1]) if bias else (Rparams[0], None)


class Layer:
    """The layer protocol: ``build`` once, then ``forward`` (saving what backward needs)
    and ``backward`` (returning the input gradient and the parameter gradients)."""

    name = "layer"

    def build(self, input_shape: tuple, dtype: np.dtype, rng: np.random.Generator) -> tuple:
        """Allocate parameters for inputs of per-sample shape ``input_shape``; return the
        per-sample output shape."""
        self.dtype = np.dtype(dtype)
        return input_shape

    def parameters(self) -> list[np.ndarray]:
        return []

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, g: np.ndarray, need_input_grad: bool = True):
        """Return ``(∂L/∂x or None, [∂L/∂θ for θ in parameters()])``."""
        raise NotImplementedError

    # Second order (Pearlmutter's R-operator). ``None`` stands for an all-zero direction.
    def jvp(self, Rx, Rparams: list):
        """Push a direction forward: ``Ry`` from the input direction ``Rx`` and the parameter
        directions ``Rparams`` (aligned with :meth:`parameters`), at the last forward point."""
        raise NotImplementedError(f"{self.name}: no second-order kernels")

    def rvjp(self, g, Rg, Rx, Rparams: list, need_input_grad: bool = True):
        """The R-op of :meth:`backward`: ``(R(∂L/∂x) or None, [R(∂L/∂θ)])`` given the output
        gradient ``g`` of the last backward pass, its direction ``Rg``, and ``Rx``/``Rparams``
        as passed to :meth:`jvp`."""
        raise NotImplementedError(f"{self.name}: no second-order kernels")

    # Hessian diagonals (see runtime/curvature.py). ``S`` holds K factor columns at the output,
    # shape (K, N, *out), with per-column, per-sample signs ``w`` of shape (K, N).
    def input_vjp(self, g):
        """``∂L/∂x`` only (the pullback applied to one factor column)."""
        return self.backward(g, need_input_grad=True)[0]

    def sq_param_grads(self, S, w) -> list:
        """``Σ_k Σ_n w[k,n] · (J_θ(n)ᵀ S[k,n])²`` for every parameter: the diagonal of
        ``J_θᵀ (S diag(w) Sᵀ) J_θ`` summed over samples."""
        return []

    def residual(self, g):
        """The second-order term this layer adds to the Hessian w.r.t. its input, as an
        elementwise array ``r`` (Hessian += diag(r)), or None when it adds none."""
        return None

    def factor_backprop(self, groups, g, exact: bool, need_input: bool = True):
        """Backprop factor groups ``[(S, w), ...]`` of the Hessian w.r.t. the output: returns the
        groups at the input (plus this layer's residual term when ``exact``) and the diagonal
        contribution for each parameter."""
        from .curvature import diagonal_factor
        diag = [np.zeros_like(p) for p in self.parameters()]
        for S, w in groups:
            for d, a in zip(diag, self.sq_param_grads(S, w)):
                d += a
        if not need_input:
            return [], diag
        new = [(np.stack([self.input_vjp(s) for s in S]), w) for S, w in groups]
        r = self.residual(g) if exact else None
        if r is not None:
            new.append(diagonal_factor(r, self.name))
        return new, diag

    def diag_backprop(self, h, g):
        """Becker & LeCun: the diagonal ``h`` of the Hessian w.r.t. the output (per sample)
        to ``(h_x, [diagonal for each parameter])``, off-diagonal terms dropped."""
        raise ValueError(f"{self.name}: the Becker-LeCun diagonal is not available for this layer; "
                         f"use method='exact', 'gauss_newton' or 'hutchinson'")

    def config(self) -> dict:
        return {"type": type(self).__name__}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer ``y = x Wᵀ + b`` (PyTorch layout: W is (out, in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        for nm, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Dense: {nm} must be a positive integer, got {v!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.bias = bool(bias)
        self.W = self.b = None

    @property
    def name(self):
        return f"Dense({self.in_features} -> {self.out_features})"

    def config(self):
        return {"type": "Dense", "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias}

    def build(self, input_shape, dtype, rng):
        self.dtype = np.dtype(dtype)
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self.name}: expects per-sample inputs of shape ({self.in_features},), "
                             f"the previous layer gives {tuple(input_shape)}")
        bound = 1.0 / np.sqrt(self.in_features)   # PyTorch's nn.Linear default init
        self.W = rng.uniform(-bound, bound, (self.out_features, self.in_features)).astype(self.dtype)
        self.b = (rng.uniform(-bound, bound, (self.out_features,)) if self.bias
                  else np.zeros(self.out_features)).astype(self.dtype)   # bias=False: a constant zero
        return (self.out_features,)

    def parameters(self):
        return [self.W, self.b] if self.bias else [self.W]

    def _check(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self.name}: input must be a numpy array, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_features}), got {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"{self.name}: input dtype {x.dtype} does not match the layer's {self.dtype}")

    def forward(self, x):
        self._check(x)
        self.x = np.ascontiguousarray(x)
        y = np.empty((x.shape[0], self.out_features), self.dtype)
        return _dense.dense_forward(self.x, self.W, self.b, y)

    def backward(self, g, need_input_grad=True):
        g = np.ascontiguousarray(g)
        gW = _dense.dense_vjp_W(x=self.x, g=g, gW=np.empty_like(self.W))
        grads = [gW, _dense.dense_vjp_b(g=g, gb=np.empty_like(self.b))] if self.bias else [gW]
        gx = self.input_vjp(g) if need_input_grad else None
        return gx, grads

    def jvp(self, Rx, Rparams):
        RW, Rb = weight_bias(Rparams, self.bias)
        Ry = np.empty((self.x.shape[0], self.out_features), self.dtype)
        return _dense.dense_jvp(self.x, self.W, Rx=Rx, RW=RW, Rb=Rb, Ry=Ry)

    def rvjp(self, g, Rg, Rx, Rparams, need_input_grad=True):
        RW, _ = weight_bias(Rparams, self.bias)
        RgW = _dense.dense_rvjp_W(self.x, g, Rx=Rx, Rg=Rg, RgW=np.empty_like(self.W))
        Rgrads = [RgW, _dense.dense_rvjp_b(Rg=Rg, Rgb=np.empty_like(self.b))] if self.bias else [RgW]
        Rgx = _dense.dense_rvjp_x(self.W, g, RW=RW, Rg=Rg, Rgx=np.empty_like(self.x)) \
            if need_input_grad else None
        return Rgx, Rgrads

    def input_vjp(self, g):
        return _dense.dense_vjp_x(W=self.W, g=np.ascontiguousarray(g), gx=np.empty_like(self.x))

    def sq_param_grads(self, S, w):
        # per sample, ∂y[n,o]/∂W[o,i] = x[n,i] is a single term, so squares factor:
        # Σ_kn w (Σ... )² = dense_vjp_W(x², Σ_k w S²)
        acc = np.ascontiguousarray((w[(...,) + (None,) * (S.ndim - 2)] * S * S).sum(axis=0))
        gW = _dense.dense_vjp_W(x=self.x * self.x, g=acc, gW=np.empty_like(self.W))
        return [gW, _dense.dense_vjp_b(g=acc, gb=np.empty_like(self.b))] if self.bias else [gW]

    def diag_backprop(self, h, g):
        h = np.ascontiguousarray(h)
        hx = _dense.dense_vjp_x(W=self.W * self.W, g=h, gx=np.empty_like(self.x))
        hW = _dense.dense_vjp_W(x=self.x * self.x, g=h, gW=np.empty_like(self.W))
        return hx, ([hW, _dense.dense_vjp_b(g=h, gb=np.empty_like(self.b))] if self.bias else [hW])


class Activation(Layer):
    """An elementwise layer whose kernels come from an elementwise spec.

    Built-ins: :class:`Tanh`, :class:`Sigmoid`, :class:`ReLU`, :class:`SoftPlus`; any SymPy
    expression via :meth:`from_sympy`.
    """

    def __init__(self, kernel_name: str, module=_act, spec=None):
        self.kernel_name = kernel_name
        self.module = module
        self.spec = spec
        table = getattr(module, "KERNELS", {})
        missing = [f"{kernel_name}_{k}" for k in ("forward", "vjp") if f"{kernel_name}_{k}" not in table]
        if missing:
            raise ValueError(f"Activation {kernel_name!r}: no kernels {missing} in {module.__name__}")
        self._sig = {k: table[f"{kernel_name}_{k}"]
                     for k in ("forward", "vjp", "jvp", "rvjp", "residual", "diag_backprop")
                     if f"{kernel_name}_{k}" in table}

    @property
    def name(self):
        return f"Activation({self.kernel_name})"

    def config(self):
        return {"type": "Activation", "name": self.kernel_name}

    def _call(self, which: str, out_shape, **arrays):
        sig = self._sig[which]
        out = np.empty(out_shape, self.dtype)
        args = [arrays[a] for a in sig["arrays"]]
        getattr(self.module, f"{self.kernel_name}_{which}")(*args, out)
        return out

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.dtype != self.dtype:
            raise TypeError(f"{self.name}: expected a {self.dtype} array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        self.x = np.ascontiguousarray(x)
        self.y = self._call("forward", x.shape, x=self.x)
        return self.y

    def backward(self, g, need_input_grad=True):
        if not need_input_grad:
            return None, []
        return self._call("vjp", g.shape, x=self.x, y=self.y, g=np.ascontiguousarray(g)), []

    def jvp(self, Rx, Rparams):
        return None if Rx is None else self._call("jvp", Rx.shape, x=self.x, y=self.y, Rx=Rx)

    def rvjp(self, g, Rg, Rx, Rparams, need_input_grad=True):
        if not need_input_grad:
            return None, []
        zero = np.zeros_like(self.x) if Rx is None or Rg is None else None
        return self._call("rvjp", self.x.shape, x=self.x, y=self.y, g=np.ascontiguousarray(g),
                          Rx=zero if Rx is None else Rx, Rg=zero if Rg is None else Rg), []

    def residual(self, g):
        if "residual" not in self._sig:   # f'' ≡ 0 (e.g. ReLU): no kernel
            return None
        return self._call("residual", self.x.shape, x=self.x, y=self.y, g=np.ascontiguousarray(g))

    def diag_backprop(self, h, g):
        return self._call("diag_backprop", self.x.shape, x=self.x, y=self.y, g=np.ascontiguousarray(g),
                          h=np.ascontiguousarray(h)), []

    @classmethod
    def from_sympy(cls, name: str, expr, var, params=(), verbose: bool = False) -> "Activation":
        """Derive, generate and compile (cached by spec hash) an activation from SymPy."""
        from ..codegen.build import load_or_build
        from ..codegen.elementwise import render_elementwise_module
        from ..derive.elementwise import ElementwiseSpec, SpecError, derive_elementwise

        spec = ElementwiseSpec(name, expr, var, tuple(params))
        if spec.params:
            raise SpecError(f"spec {name!r}: parameterized activations are not supported by layers yet")
        derived = derive_elementwise(spec)
        try:
            text = render_elementwise_module(f"act_{name}", [derived])
        except NotImplementedError as exc:
            raise SpecError(f"spec {name!r}: cannot emit a kernel: {exc}") from exc
        module, compiled = load_or_build(f"act_{name}", text, name, verbose=verbose)
        layer = cls(name, module=module, spec=spec)
        layer.compiled = compiled
        layer.derived = derived
        return layer


def Tanh():
    return Activation("tanh")


def Sigmoid():
    return Activation("sigmoid")


def ReLU():
    return Activation("relu")


def SoftPlus():
    return Activation("softplus")


BUILTIN_ACTIVATIONS = {"tanh": Tanh, "sigmoid": Sigmoid, "relu": ReLU, "softplus": SoftPlus}


def from_config(cfg: dict, custom_objects: dict | None = None) -> Layer:
    """Rebuild a layer from :meth:`Layer.config` (used by checkpoints; no pickle)."""
    kind = cfg.get("type")
    if kind == "Dense":
        return Dense(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    if kind == "Conv2D":
        return Conv2D(cfg["in_channels"], cfg["out_channels"], tuple(cfg["kernel_size"]), tuple(cfg["stride"]),
                      tuple(cfg["padding"]), tuple(cfg["dilation"]), bias=cfg["bias"])
    if kind in ("MaxPool2D", "AvgPool2D"):
        return {"MaxPool2D": MaxPool2D, "AvgPool2D": AvgPool2D}[kind](
            tuple(cfg["kernel_size"]), tuple(cfg["stride"]), tuple(cfg["padding"]))
    if kind == "Flatten":
        return Flatten()
    if kind == "Residual":
        return Residual([from_config(c, custom_objects) for c in cfg["layers"]], cfg.get("projection"))
    if kind == "Activation":
        nm = cfg["name"]
        if nm in BUILTIN_ACTIVATIONS:
            return BUILTIN_ACTIVATIONS[nm]()
        if custom_objects and nm in custom_objects:
            return custom_objects[nm]
        raise ValueError(f"unknown activation {nm!r}: pass custom_objects={{'{nm}': layer}} to load it")
    raise ValueError(f"unknown layer type {kind!r} in checkpoint")


# image layers and skip connections live in their own modules; re-exported here (``L.Conv2D``)
from .conv import AvgPool2D, Conv2D, Flatten, MaxPool2D  # noqa: E402
from .residual import Residual  # noqa: E402
