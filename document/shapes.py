"""A model as the document describes it: layers with output shapes and parameters, from
their checkpoint configs by shape arithmetic alone (no kernels, no data).

:func:`describe_model` holds the per-layer shape rules; it is the one place to replace when
the layer definitions carry their own shape inference.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..derive import builtins
from .printer import escape
from .prose import MODEL_TITLES, TITLES


@dataclass
class ModelLayer:
    """One layer of a model as the document describes it (from its checkpoint config)."""
    kind: str                 # config type: Dense, Conv2D, MaxPool2D, AvgPool2D, Flatten, Activation
    spec: str | None          # the spec whose kernels it runs (None: a reshape)
    label: str                # in words, e.g. convolution, 1→6, 5×5, padding 2
    out_shape: tuple          # per sample
    params: list              # [(name, shape)]
    config: dict


@dataclass
class ModelInfo:
    """A model as the document describes it: layers with shapes and parameters, its loss, and
    where it comes from (e.g. " as symprop train --model lenet builds it")."""
    name: str
    input_shape: tuple
    layers: list
    loss: str = "softmax_cross_entropy"
    origin: str = ""
    schedule: dict | None = None   # the kernels each call runs, as recorded (see kernel_schedule)

    @property
    def n_params(self) -> int:
        return sum(_size(shape) for la in self.layers for _, shape in la.params)


def _size(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


#: per loss: its name in the text, the label of its definition and of its Hessian
LOSS_TEXT = {"softmax_cross_entropy": ("softmax cross-entropy", "eq:ce:def", "eq:ce:hvp"),
             "mse": ("mean squared error", "eq:mse:def", "eq:mse:hess"),
             "sigmoid_cross_entropy": ("sigmoid cross-entropy", "eq:sce:def", "eq:sce:hess"),
             # the built-ins written as specs (document/losses.py builtin_label)
             "huber": ("Huber loss", "eq:loss:huber:def", "eq:loss:huber:hess"),
             "log_cosh": ("log-cosh loss", "eq:loss:log_cosh:def", "eq:loss:log_cosh:hess")}


def describe_model(name: str, input_shape, configs: list, loss: str = "softmax_cross_entropy",
                   origin: str = "") -> ModelInfo:
    """Shapes and parameters of a model from its layers' configs (``Layer.config()``, the
    checkpoint format) by shape arithmetic alone: no kernels, no data."""
    if loss not in LOSS_TEXT:
        raise ValueError(f"latex: the model's loss {loss!r} is not one the document derives ({sorted(LOSS_TEXT)})")
    shape = tuple(int(s) for s in input_shape)
    layers = []
    for cfg in configs:
        t = cfg.get("type")
        d = builtins.LAYERS.get(t)
        if d is not None:   # a built-in layer: shape rule, parameters and words from its definition
            args = d.bind(**d.args_from_config(cfg))
            params = [(p.name, d.param_shape(p, args)) for p in d.params if p.name in d.trained(args)]
            la = ModelLayer(t, d.spec.name if d.spec is not None else None, d.words(args),
                            d.out_shape(args, shape), params, cfg)
        elif t == "Activation":
            if cfg["name"] not in builtins.ACTIVATIONS:
                raise ValueError(f"latex: activation {cfg['name']!r} is not a built-in spec")
            la = ModelLayer(t, cfg["name"], TITLES.get(cfg["name"], escape(cfg["name"])), shape, [], cfg)
        else:
            raise ValueError(f"latex: no shape rule for layer type {t!r}")
        layers.append(la)
        shape = la.out_shape
    return ModelInfo(name, tuple(int(s) for s in input_shape), layers, loss, origin)


def _shape_tex(shape, batch: bool = True) -> str:
    dims = (["N"] if batch else []) + [str(s) for s in shape]
    return r"\mathbb{R}^{" + r" \times ".join(dims) + "}"


def model_title(info: ModelInfo) -> str:
    """The model's name in words (``LeNet-5``), for titles and text."""
    return MODEL_TITLES.get(info.name, escape(info.name))
