"""The public layer namespace (``from symprop import layers as L``) and checkpoint configs.

Every derivative a layer computes is a role of its spec, run by the manifest executor
(:mod:`symprop.runtime.kernels`); nothing derivative-shaped is written by hand in runtime/.
"""
from __future__ import annotations

from .activation import (ELU, GELU, Activation, LeakyReLU, LearnableActivation, Mish, PReLU, ReLU, Sigmoid, SiLU,
                         SoftPlus, Swish, Tanh, names as activation_names)
from .composed import GroupNorm, LayerNorm, RMSNorm
from .conv import AvgPool2D, Conv2D, Flatten, MaxPool2D
from .defined import DefinedLayer, definitions, layer_class
from .dense import Dense
from .dropout import Dropout
from .layer_base import Layer, SpecLayer
from .normalization import BatchNorm1D, BatchNorm2D, CompositeLayer, Softmax
from .residual import Residual
from .user_layers import ContractionLayer, GroupLayer, from_spec

__all__ = ["Layer", "SpecLayer", "Dense", "Activation", "Tanh", "Sigmoid", "ReLU", "SoftPlus", "LeakyReLU", "ELU",
           "SiLU", "Swish", "GELU", "Mish", "PReLU", "LearnableActivation", "Conv2D",
           "MaxPool2D", "AvgPool2D", "Flatten", "Residual", "Dropout", "BatchNorm1D", "BatchNorm2D", "LayerNorm", "RMSNorm", "GroupNorm", "Softmax", "CompositeLayer",
           "activation_names", "from_config", "from_spec", "ContractionLayer", "GroupLayer", "DefinedLayer"]

# every built-in layer by its definition (derive/builtins.py LAYERS): a layer defined there and
# nowhere else is L.<Name> through a class made from its definition
for _name in definitions():
    globals()[_name] = layer_class(_name)
    if _name not in __all__:
        __all__.append(_name)


def custom_object(kind: str, name: str, saved_hash, custom_objects: dict | None):
    """What ``custom_objects`` gives for the user-spec ``kind`` saved as ``name`` with spec hash
    ``saved_hash`` (a spec, or a layer or loss carrying one); refused by name when absent or when
    its hash is another (a checkpoint is never loaded onto other kernels)."""
    obj = (custom_objects or {}).get(name)
    if obj is None:
        raise ValueError(f"the {kind} {name!r} was built from a user spec (hash {saved_hash}): pass "
                         f"custom_objects={{'{name}': spec}} to load it")
    have = getattr(getattr(obj, "spec", None) or obj, "hash", None)
    if saved_hash is not None and have != saved_hash:
        raise ValueError(f"the {kind} {name!r} in custom_objects is not the one the model was saved with (spec "
                         f"hash {have} != {saved_hash})")
    return obj


def from_config(cfg: dict, custom_objects: dict | None = None) -> Layer:
    """Rebuild a layer from :meth:`Layer.config` (used by checkpoints; no pickle)."""
    kind = cfg.get("type")
    defs = definitions()
    if kind in defs:   # a built-in layer: its definition says which arguments the config holds
        return layer_class(kind)(**defs[kind].args_from_config(cfg))
    if kind == "LearnableActivation":
        if cfg.get("hash") is not None:   # a user's learnable spec
            obj = custom_object("layer", cfg["name"], cfg["hash"], custom_objects)
            return from_spec(getattr(obj, "spec", None) or obj, num_parameters=cfg.get("num_parameters", 1),
                             init=cfg.get("init"), **cfg.get("params", {}))
        return LearnableActivation(cfg["name"], cfg.get("num_parameters", 1), cfg.get("init"),
                                   params=cfg.get("params"))
    if kind == "Dropout":
        return Dropout(cfg["p"])
    if kind == "Residual":
        return Residual([from_config(c, custom_objects) for c in cfg["layers"]], cfg.get("projection"))
    if kind == "Activation":
        nm = cfg["name"]
        if (custom_objects and nm in custom_objects) or cfg.get("hash") is not None:   # a user's spec, even
            layer = custom_object("activation", nm, cfg.get("hash"), custom_objects)   # named like a built-in
            if hasattr(layer, "var"):   # an ElementwiseSpec
                return from_spec(layer, **cfg.get("params", {}))
            if isinstance(layer, Activation) and cfg.get("params", {}) != layer.params:   # the saved values
                return Activation(nm, module=layer.module, spec=layer.spec, params=cfg.get("params"))
            return layer
        if nm in activation_names():
            return Activation(nm, params=cfg.get("params"))
        raise ValueError(f"unknown activation {nm!r}: pass custom_objects={{'{nm}': layer}} to load it")
    if kind == "Spec":   # a layer from a user's spec: the spec comes back through custom_objects
        spec = custom_object("layer", cfg["name"], cfg.get("hash"), custom_objects)
        if cfg.get("family") == "composite":
            return from_spec(spec, axes=tuple(cfg["axes"]), **cfg.get("scalars", {}))
        # the checkpoint's arrays replace the values: zeros are only placeholders
        return from_spec(spec, init={p: 0.0 for p in getattr(spec, "params", {})},
                         **{**cfg.get("sizes", {}), **cfg.get("scalars", {})})   # scalars: a window spec's
    raise ValueError(f"unknown layer type {kind!r} in checkpoint")
