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

    def __init__(self, kernel_name: str, module=None, spec=None):
        self.kernel_name = kernel_name
        self.module = module if module is not None else _builtin_module()
        self.spec = spec
        if kernel_name not in manifest(self.module):
            known = names() if module is None else sorted(manifest(self.module))
            raise ValueError(f"Activation: unknown activation {kernel_name!r}; built-ins are {known} "
                             f"(or build one with Activation.from_sympy)")
        self._bind(self.module, kernel_name)

    @property
    def name(self):
        return f"Activation({self.kernel_name})"

    def config(self):
        return {"type": "Activation", "name": self.kernel_name}

    @classmethod
    def from_sympy(cls, name: str, expr, var, params=(), verbose: bool = False) -> "Activation":
        """Derive, generate and compile (cached by spec hash) an activation from SymPy."""
        from ..codegen.build import load_or_build
        from ..codegen.elementwise import render_elementwise_module
        from ..derive.elementwise import ElementwiseSpec, SpecError, derive_elementwise
        from .kernels import register

        spec = ElementwiseSpec(name, expr, var, tuple(params))
        if spec.params:
            raise SpecError(f"spec {name!r}: parameterized activations are not supported by layers yet")
        derived = derive_elementwise(spec)
        try:
            text = render_elementwise_module(f"act_{name}", [derived])
        except NotImplementedError as exc:
            raise SpecError(f"spec {name!r}: cannot emit a kernel: {exc}") from exc
        module, compiled = load_or_build(f"act_{name}", text, name, verbose=verbose)
        layer = cls(name, module=register(module), spec=spec)
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
