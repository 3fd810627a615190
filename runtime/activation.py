"""Elementwise layers: one registry of activations, read from the compiled manifest.

A built-in activation is one line in ``derive/builtins.py`` plus ``symprop generate``: its
kernels (forward, vjp, jvp, R-op, residual, Becker–LeCun) land in ``generated/activations``
with a manifest entry, and :func:`names` (hence ``L.Activation(name)``, checkpoints, the CLI
and the test tables) lists it. User activations (:meth:`Activation.from_sympy`) go through
the same derive → codegen path into a module compiled on the fly.
"""
from __future__ import annotations

import numpy as np

from .kernels import load, manifest
from .layer_base import SpecLayer


def _builtin_module():
    return load("activations")


def names() -> list[str]:
    """Every built-in activation (the registry: the compiled activations manifest)."""
    return [k for k, e in manifest(_builtin_module()).items()
            if e["family"] == "elementwise" and e.get("kind", "activation") == "activation"]


class Activation(SpecLayer):
    """An elementwise layer ``y = f(x)`` whose kernels come from an elementwise spec.

    ``Activation("tanh")`` for any name in :func:`names`; any SymPy expression via
    :meth:`from_sympy`.
    """

    def __init__(self, kernel_name: str, module=None, spec=None, params: dict | None = None):
        self.kernel_name = kernel_name
        self.spec = spec
        if module is None:   # a built-in: checked against the spec table, kernels bound at first use
            from ..derive.builtins import ACTIVATIONS
            if kernel_name not in ACTIVATIONS:
                raise ValueError(f"Activation: unknown activation {kernel_name!r}; built-ins are "
                                 f"{sorted(ACTIVATIONS)} (or build one with Activation.from_sympy)")
            defaults = dict(ACTIVATIONS[kernel_name].params)
        else:
            table = manifest(module)
            if kernel_name not in table or table[kernel_name].get("kind", "activation") != "activation":
                raise ValueError(f"Activation: unknown activation {kernel_name!r}; built-ins are {sorted(table)} "
                                 f"(or build one with Activation.from_sympy)")
            defaults = table[kernel_name].get("defaults", {})
        self._module = module
        params = dict(params or {})
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise TypeError(f"Activation({kernel_name}): unknown parameter(s) {unknown}; "
                            f"it has {sorted(defaults) or 'none'}")
        self.params = {}
        for p, d in defaults.items():
            v = params.get(p, d)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise ValueError(f"Activation({kernel_name}): {p} must be a finite number, got {v!r}")
            self.params[p] = float(v)
        self._bind("activations" if module is None else module, kernel_name)

    @property
    def module(self):
        """The compiled module of its kernels (a built-in's: loaded at first use)."""
        return self._module if self._module is not None else _builtin_module()

    @property
    def name(self):
        if not self.params:
            return f"Activation({self.kernel_name})"
        return f"Activation({self.kernel_name}, " + ", ".join(f"{k}={v:g}" for k, v in self.params.items()) + ")"

    def scalars(self):
        return self.params

    def config(self):
        cfg = {"type": "Activation", "name": self.kernel_name}
        if self.spec is not None:   # a user spec: loaded back through custom_objects, checked by hash
            cfg["hash"] = self.spec.hash
        if self.params:
            cfg["params"] = dict(self.params)
        return cfg

    @classmethod
    def from_sympy(cls, name: str, expr, var, params=(), verbose: bool = False, **values) -> "Activation":
        """Derive, generate and compile (cached by spec hash) an activation from SymPy.

        ``params``: ``(("alpha", 0.01), ...)`` fixed parameters of ``expr`` with defaults
        (kernel scalars); ``values`` override them for this layer (``alpha=0.2``)."""
        from ..codegen.build import compile_spec
        from ..codegen.elementwise import render_elementwise_module
        from ..derive.elementwise import ElementwiseSpec, derive_elementwise
        from .kernels import register

        spec = ElementwiseSpec(name, expr, var, tuple(params))
        module, compiled, derived = compile_spec(f"act_{name}", spec, derive_elementwise, render_elementwise_module,
                                                 verbose)
        layer = cls(name, module=register(module), spec=spec, params=values)
        layer.compiled = compiled
        layer._derived = derived
        return layer

    @property
    def derived(self):
        """The derivation of a ``from_sympy`` activation (derived on first access after a
        cache hit)."""
        if getattr(self, "_derived", None) is None and self.spec is not None:
            from ..derive.elementwise import derive_elementwise
            self._derived = derive_elementwise(self.spec)
        return getattr(self, "_derived", None)


def Tanh():
    return Activation("tanh")


def Sigmoid():
    return Activation("sigmoid")


def ReLU():
    return Activation("relu")


def SoftPlus():
    return Activation("softplus")


def LeakyReLU(alpha: float = 0.01):
    return Activation("leaky_relu", params={"alpha": alpha})


def ELU(alpha: float = 1.0):
    return Activation("elu", params={"alpha": alpha})


def SiLU():
    return Activation("silu")


def Swish(beta: float = 1.0, learnable: bool = False, num_parameters: int = 1):
    """x·σ(βx); with ``learnable`` β is trained (shared, or one per channel)."""
    if learnable:
        return LearnableActivation("swish_learnable", num_parameters, beta)
    return Activation("swish", params={"beta": beta})


def GELU():
    return Activation("gelu")


def Mish():
    return Activation("mish")


class LearnableActivation(SpecLayer):
    """An elementwise layer with one learnable parameter, one value per channel (axis 1) or
    one shared value, from a spec of the channelwise family (``generated/learnable``).

    The kernels see the data as (N, C, S) (:meth:`kernel_view`; the executor reshapes); the
    parameter's pullback is their reduction over N and S (and C when shared).
    """

    def __init__(self, spec_name: str, num_parameters: int = 1, init: float | None = None, module=None):
        from .layer_base import check_positive_int
        self.kernel_name = spec_name
        self.module = module if module is not None else load("learnable")
        table = manifest(self.module)
        if spec_name not in table:
            raise ValueError(f"LearnableActivation: unknown spec {spec_name!r}; have {sorted(table)}")
        self.param_name = table[spec_name]["params"][0]
        self.num_parameters = check_positive_int(spec_name, "num_parameters", num_parameters)
        init = table[spec_name]["defaults"][self.param_name] if init is None else init
        if isinstance(init, bool) or not isinstance(init, (int, float, np.integer, np.floating)) or not np.isfinite(init):
            raise ValueError(f"{spec_name}: init must be a finite number, got {init!r}")
        self.init = float(init)
        self.weight = None
        self._bind(self.module, spec_name)

    @property
    def name(self):
        return f"{self.kernel_name}({self.param_name}: {self.num_parameters})"

    spec = None   # a user's spec (L.from_spec); built-ins: None

    def config(self):
        cfg = {"type": "LearnableActivation", "name": self.kernel_name, "num_parameters": self.num_parameters,
               "init": self.init}
        if self.spec is not None:   # loaded back through custom_objects, checked by hash
            cfg["hash"] = self.spec.hash
        return cfg

    def init_parameters(self, dtype, rng):
        dtype = np.dtype(dtype)
        if self.weight is not None:
            if self.weight.dtype != dtype:
                raise TypeError(f"{self.name}: already initialised as {self.weight.dtype}, cannot join a {dtype} model")
            return
        self.weight = np.full(self.num_parameters, self.init, dtype)

    def spec_arrays(self):
        return {self.param_name: self.weight}

    def trainable(self):
        return (self.param_name,)

    def output_shape(self, input_shape):
        if self.num_parameters > 1 and (len(input_shape) < 1 or input_shape[0] != self.num_parameters):
            raise ValueError(f"{self.name}: {self.num_parameters} parameters need {self.num_parameters} channels "
                             f"on axis 1, got per-sample inputs {tuple(input_shape)}")
        return tuple(input_shape)

    def check_input(self, x):
        x = super().check_input(x)
        if x.ndim < 2:
            raise ValueError(f"{self.name}: expected a batch (N, C, ...), got shape {x.shape}")
        self.output_shape(x.shape[1:])
        return x

    def kernel_view(self, shape):
        return (shape[0], shape[1], -1) if len(shape) != 3 else None

    def factor_backprop(self, rec, groups, g, exact, need_input=True):
        new, diag = super().factor_backprop(rec, groups, g, exact, need_input)
        if exact:   # the parameter's own second-order term Σ f_pp·ḡ: its Becker–LeCun role at h = 0
            diag[0] = diag[0] + self.bl(rec, np.zeros_like(g), g)[1][0]
        return new, diag


def PReLU(num_parameters: int = 1, init: float = 0.25):
    """PyTorch's PReLU: a learnable slope below zero, shared or one per channel (axis 1)."""
    return LearnableActivation("prelu", num_parameters, init)
