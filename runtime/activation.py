"""Elementwise layers: one registry of activations, read from the compiled manifest.

A built-in activation is one line in ``derive/builtins.py`` plus ``symprop generate``: its
kernels (forward, vjp, jvp, R-op, residual, Becker–LeCun) land in ``generated/activations``
with a manifest entry, and :func:`names` (hence ``L.Activation(name)``, checkpoints, the CLI
and the test tables) lists it. User activations (:meth:`Activation.from_sympy`) go through
the same derive → codegen path into a module compiled on the fly.
"""
from __future__ import annotations

import numpy as np

from .kernels import SpecKernels, load, manifest
from .layer import SpecLayer


def _builtin_module():
    return load("activations")


def names() -> list[str]:
    """Every built-in activation (the registry: the compiled activations manifest)."""
    return [k for k, e in manifest(_builtin_module()).items() if e["family"] == "elementwise"]


class Activation(SpecLayer):
    """An elementwise layer ``y = f(x)`` whose kernels come from an elementwise spec.

    ``Activation("tanh")`` for any name in :func:`names`; any SymPy expression via
    :meth:`from_sympy`.
    """

    def __init__(self, kernel_name: str, module=None, spec=None, params: dict | None = None):
        self.kernel_name = kernel_name
        self.module = module if module is not None else _builtin_module()
        self.spec = spec
        table = manifest(self.module)
        if kernel_name not in table:
            known = names() if module is None else sorted(table)
            raise ValueError(f"Activation: unknown activation {kernel_name!r}; built-ins are {known} "
                             f"(or build one with Activation.from_sympy)")
        defaults = table[kernel_name].get("defaults", {})
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
        self._bind(self.module, kernel_name)

    @property
    def name(self):
        if not self.params:
            return f"Activation({self.kernel_name})"
        return f"Activation({self.kernel_name}, " + ", ".join(f"{k}={v:g}" for k, v in self.params.items()) + ")"

    def scalars(self):
        return self.params

    def config(self):
        cfg = {"type": "Activation", "name": self.kernel_name}
        if self.params:
            cfg["params"] = dict(self.params)
        return cfg

    @classmethod
    def from_sympy(cls, name: str, expr, var, params=(), verbose: bool = False, **values) -> "Activation":
        """Derive, generate and compile (cached by spec hash) an activation from SymPy.

        ``params``: ``(("alpha", 0.01), ...)`` fixed parameters of ``expr`` with defaults
        (kernel scalars); ``values`` override them for this layer (``alpha=0.2``)."""
        from ..codegen.build import load_or_build
        from ..codegen.elementwise import render_elementwise_module
        from ..derive.elementwise import ElementwiseSpec, SpecError, derive_elementwise
        from .kernels import register

        spec = ElementwiseSpec(name, expr, var, tuple(params))
        derived = derive_elementwise(spec)
        try:
            text = render_elementwise_module(f"act_{name}", [derived])
        except NotImplementedError as exc:
            raise SpecError(f"spec {name!r}: cannot emit a kernel: {exc}") from exc
        module, compiled = load_or_build(f"act_{name}", text, name, verbose=verbose)
        layer = cls(name, module=register(module), spec=spec, params=values)
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


def LeakyReLU(alpha: float = 0.01):
    return Activation("leaky_relu", params={"alpha": alpha})


def ELU(alpha: float = 1.0):
    return Activation("elu", params={"alpha": alpha})


def SiLU():
    return Activation("silu")


def Swish(beta: float = 1.0):
    return Activation("swish", params={"beta": beta})


def GELU():
    return Activation("gelu")


def Mish():
    return Activation("mish")
