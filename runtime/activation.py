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


def _finite(layer: str, what: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
        raise ValueError(f"{layer}: {what} must be a finite number, got {v!r}")
    return float(v)


def learnable_arguments(layer: str, names: tuple, defaults: dict, num_parameters=1, init=None,
                        params: dict | None = None):
    """A learnable activation's arguments checked: ``({learnable: count}, {learnable: first
    value}, {fixed parameter: value})`` for the learnable parameters ``names`` of a spec whose
    parameters default to ``defaults`` (checked before a user's spec is compiled)."""
    from .layer_base import check_positive_int
    if isinstance(num_parameters, dict):
        unknown = sorted(set(num_parameters) - set(names))
        if unknown:
            raise TypeError(f"{layer}: num_parameters for unknown parameter(s) {unknown}; the learnable ones are "
                            f"{list(names)}")
        counts = {p: num_parameters.get(p, 1) for p in names}
    else:
        counts = {p: num_parameters for p in names}
    counts = {p: check_positive_int(layer, f"num_parameters of {p}", c) for p, c in counts.items()}
    if len({c for c in counts.values() if c > 1}) > 1:
        raise ValueError(f"{layer}: per-channel parameters must agree on the channel count, got {counts}")
    if isinstance(init, dict):
        unknown = sorted(set(init) - set(names))
        if unknown:
            raise TypeError(f"{layer}: init for unknown parameter(s) {unknown}; the learnable ones are {list(names)}")
        inits = {p: init.get(p, defaults[p]) for p in names}
    elif init is None:
        inits = {p: defaults[p] for p in names}
    elif len(names) == 1:
        inits = {names[0]: init}
    else:
        raise ValueError(f"{layer}: init must be {{name: value}} for its learnable parameters {list(names)}, "
                         f"got {init!r}")
    inits = {p: _finite(layer, f"init of {p}", v) for p, v in inits.items()}
    fixed = {q: v for q, v in defaults.items() if q not in names}
    params = dict(params or {})
    learnt = sorted(set(params) & set(names))
    if learnt:
        raise TypeError(f"{layer}: {learnt} are learnable; give their first values as init={{{learnt[0]!r}: ...}}")
    unknown = sorted(set(params) - set(fixed))
    if unknown:
        raise TypeError(f"{layer}: unknown argument(s) {unknown}; it takes num_parameters, init and its fixed "
                        f"parameters {sorted(fixed) or '(none)'}")
    return counts, inits, {q: _finite(layer, q, params.get(q, d)) for q, d in fixed.items()}


class LearnableActivation(SpecLayer):
    """An elementwise layer with learnable parameters, each one value per channel (axis 1) or
    one shared value, from a spec of the channelwise family (``generated/learnable``, or a
    user's spec compiled by :func:`L.from_spec`); the spec's other parameters are fixed
    numbers, like a plain activation's.

    ``num_parameters``: one count for every learnable parameter (1: shared, C: per channel),
    or ``{name: count}``; ``init``: a number (one learnable parameter) or ``{name: value}``,
    the spec's value where absent; ``params``: the fixed parameters' values.
    The kernels see the data as (N, C, S) (:meth:`kernel_view`; the executor reshapes); a
    parameter's pullback is their reduction over N and S (and C when shared).
    """

    def __init__(self, spec_name: str, num_parameters=1, init=None, module=None, params: dict | None = None):
        self.kernel_name = spec_name
        self.module = module if module is not None else load("learnable")
        table = manifest(self.module)
        if spec_name not in table:
            raise ValueError(f"LearnableActivation: unknown spec {spec_name!r}; have {sorted(table)}")
        entry = table[spec_name]
        self.param_names = tuple(entry["params"])
        self.counts, self.inits, self.params = learnable_arguments(spec_name, self.param_names, entry["defaults"],
                                                                   num_parameters, init, params)
        self.arrays = {p: None for p in self.param_names}
        self._bind(self.module, spec_name)

    # one learnable parameter (the built-ins PReLU and learnable Swish): its name, count, value
    @property
    def param_name(self) -> str:
        return self.param_names[0]

    @property
    def num_parameters(self):
        """The count of every learnable parameter, or ``{name: count}`` when they differ."""
        counts = set(self.counts.values())
        return next(iter(counts)) if len(counts) == 1 else dict(self.counts)

    @property
    def init(self):
        return self.inits[self.param_names[0]] if len(self.param_names) == 1 else dict(self.inits)

    @property
    def weight(self):
        return self.arrays[self.param_names[0]]

    @property
    def name(self):
        learnt = ", ".join(f"{p}: {c}" for p, c in self.counts.items())
        fixed = "".join(f", {q}={v:g}" for q, v in self.params.items())
        return f"{self.kernel_name}({learnt}{fixed})"

    spec = None   # a user's spec (L.from_spec); built-ins: None

    def scalars(self):
        return self.params

    def config(self):
        cfg = {"type": "LearnableActivation", "name": self.kernel_name, "num_parameters": self.num_parameters,
               "init": self.init}
        if self.params:
            cfg["params"] = dict(self.params)
        if self.spec is not None:   # loaded back through custom_objects, checked by hash
            cfg["hash"] = self.spec.hash
        return cfg

    def init_parameters(self, dtype, rng):
        dtype = np.dtype(dtype)
        for p in self.param_names:
            a = self.arrays[p]
            if a is not None:
                if a.dtype != dtype:
                    raise TypeError(f"{self.name}: already initialised as {a.dtype}, cannot join a {dtype} model")
                continue
            self.arrays[p] = np.full(self.counts[p], self.inits[p], dtype)

    def spec_arrays(self):
        return dict(self.arrays)

    def trainable(self):
        return self.param_names

    def output_shape(self, input_shape):
        for p, c in self.counts.items():
            if c > 1 and (len(input_shape) < 1 or input_shape[0] != c):
                raise ValueError(f"{self.name}: {c} parameters need {c} channels on axis 1 (num_parameters of "
                                 f"{p}), got per-sample inputs {tuple(input_shape)}")
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
        if exact:   # each parameter's own second-order term Σ f_pp·ḡ: its Becker–LeCun role at h = 0
            own = self.bl(rec, np.zeros_like(g), g)[1]
            diag = [d + o for d, o in zip(diag, own)]
        return new, diag


def PReLU(num_parameters: int = 1, init: float = 0.25):
    """PyTorch's PReLU: a learnable slope below zero, shared or one per channel (axis 1)."""
    return LearnableActivation("prelu", num_parameters, init)
