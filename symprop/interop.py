"""PyTorch interop (optional: ``pip install 'symprop[torch]'``).

``from_torch(nn.Sequential)`` builds the equivalent :class:`~symprop.Sequential` with the same
weights; ``to_torch(model)`` the reverse. Supported: ``Linear``, ``Conv2d`` (groups 1, zero
padding), ``ReLU``/``Tanh``/``Sigmoid``/``Softplus`` (default beta/threshold), ``MaxPool2d`` and
``AvgPool2d`` (no ceil mode, dilation 1, ``count_include_pad=True``), ``Flatten`` (from dim 1),
``LeakyReLU``, ``ELU``, ``SiLU``, ``GELU`` (erf form), ``Mish``, ``PReLU``, ``Softmax(dim=1)``,
``Dropout``, ``BatchNorm1d``/``BatchNorm2d`` (affine, tracked running statistics, a numeric
momentum; weights and running statistics copied), ``LayerNorm``, ``RMSNorm``, ``GroupNorm`` and
nested ``Sequential``s. Anything else raises a ValueError naming the module. Both layouts are
PyTorch's, so weights are copied as they are; the dtype (float32/float64) is kept.

Built-in layers map through their definitions (``derive/builtins.py`` ``LAYERS``: each one's
``torch`` counterpart names the torch.nn class, its arguments and arrays, and the torch settings
we can represent); activations, PReLU and Dropout are mapped here.
"""
from __future__ import annotations

import numpy as np


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError("symprop.interop needs PyTorch: pip install 'symprop[torch]' "
                          "(torch==2.13.0)") from exc
    return torch


_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softplus": "softplus", "SiLU": "silu",
                "Mish": "mish", "GELU": "gelu", "LeakyReLU": "leaky_relu", "ELU": "elu"}
#: torch attribute of each parameterized activation's fixed parameter
_ACT_PARAMS = {"LeakyReLU": ("negative_slope", "alpha"), "ELU": ("alpha", "alpha")}


def _supported() -> str:
    """The torch.nn modules ``from_torch`` maps, read from the registries: every built-in layer
    definition with a torch counterpart (``LAYERS``), the activations above that the activation
    registry has, PReLU when the learnable registry has it, Dropout, and nested Sequentials."""
    from .derive.builtins import ACTIVATIONS, LAYERS, LEARNABLE
    names = [d.torch.module for d in LAYERS.values() if d.torch is not None]
    names += [k for k, ours in _ACTIVATIONS.items() if ours in ACTIVATIONS]
    names += ["PReLU"] if "prelu" in LEARNABLE else []
    return ", ".join(dict.fromkeys(names + ["Dropout", "Sequential"]))


def _flat_modules(seq, prefix=""):
    torch = _torch()
    for name, mod in seq.named_children():
        _check_plain(f"{prefix}{name}", mod)
        if type(mod) is torch.nn.Sequential:
            yield from _flat_modules(mod, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", mod


def _check_plain(where, mod) -> None:
    """Refuse a module that may compute something other than its torch.nn class: a subclass, an
    instance with its own ``forward``, or one with forward hooks."""
    base = next((c for c in type(mod).__mro__ if c.__module__.startswith("torch.nn.modules")), None)
    if base is not None and type(mod) is not base:
        raise _unsupported(where, mod, f"{type(mod).__name__} subclasses torch.nn.{base.__name__} and may compute "
                                       f"something else (its own forward); only the torch.nn classes themselves are")
    if "forward" in vars(mod):
        raise _unsupported(where, mod, "its forward is replaced on the instance")
    if getattr(mod, "_forward_hooks", None) or getattr(mod, "_forward_pre_hooks", None):
        raise _unsupported(where, mod, "it has forward hooks, which may change its output")


def _values(where, mod, t):
    """A tensor's values as a NumPy array: on the CPU, finite, not on the meta device."""
    if t.is_meta:
        raise ValueError(f"from_torch: module {where} ({type(mod).__name__}) is on the meta device: its tensors "
                         f"have no values; materialise it first (e.g. module.to_empty(device='cpu') and initialise)")
    a = t.detach().cpu().numpy()
    if not np.isfinite(a).all():
        raise ValueError(f"from_torch: module {where} ({type(mod).__name__}) holds NaN or inf values in a tensor "
                         f"of shape {tuple(a.shape)}; refusing to copy them")
    return a


def _unsupported(where, mod, why=""):
    return ValueError(f"from_torch: module {where} ({mod!r}) is not supported{': ' + why if why else ''}; "
                      f"supported: {_supported()}")


def _from_definition(where, mod, d):
    """The built-in layer ``d`` equal to the torch module ``mod``: what we cannot represent
    (``d.torch.requires``) refused by name, the arguments read from the module's attributes."""
    from .runtime.defined import layer_class
    for attr, allowed in d.torch.requires.items():
        v = getattr(mod, attr)
        if not any(v == a and type(v) is type(a) for a in allowed):
            raise _unsupported(where, mod, f"{attr}={v!r} is not (only {' or '.join(map(repr, allowed))})")
    args = {}
    for ours, attr in d.torch.args.items():
        v = getattr(mod, attr)
        kind = next(a.kind for a in d.args if a.name == ours)
        args[ours] = v if kind != "flag" or isinstance(v, bool) else v is not None   # bias: a tensor or None
    try:
        return layer_class(d.name)(**args)
    except (TypeError, ValueError) as exc:
        raise _unsupported(where, mod, str(exc)) from None


def from_torch(seq, loss="softmax_cross_entropy", input_shape: tuple | None = None, seed: int = 0):
    """The symprop model equivalent to the ``torch.nn.Sequential`` ``seq``, with copies of its
    weights. ``input_shape`` (per sample, e.g. ``(1, 28, 28)``) is needed when the first layer
    is not ``Linear``, unless the model is to be built on its first batch. ``loss``: a loss name,
    a symprop loss, or a torch loss module (see :func:`loss_from_torch`)."""
    torch = _torch()
    from .runtime import layers as L
    from .runtime.defined import definitions
    from .runtime.model import Sequential

    nn = torch.nn
    by_torch = {d.torch.module: d for d in definitions().values() if d.torch is not None}
    if not isinstance(seq, nn.Sequential):
        raise ValueError(f"from_torch: expects a torch.nn.Sequential, got {type(seq).__name__}")
    _check_plain("(the Sequential)", seq)
    layers, weights, dtype = [], [], None
    for where, mod in _flat_modules(seq):
        kind = type(mod).__name__
        d = by_torch.get(type(mod).__name__)
        arrays = dict(d.torch.arrays) if d is not None else {"alpha": "weight"} if isinstance(mod, nn.PReLU) else {}
        tensors = [getattr(mod, a, None) for a in arrays.values()]
        if any(t is not None for t in tensors):   # (LayerNorm without elementwise affine has none)
            dt = next(t for t in tensors if t is not None).dtype
            if dt not in (torch.float32, torch.float64):
                raise _unsupported(where, mod, f"dtype {dt}")
            if dtype is not None and dt != dtype:
                raise _unsupported(where, mod, f"dtype {dt} differs from an earlier layer's {dtype}")
            dtype = dt
        if d is not None:   # a built-in layer: arguments and arrays by its definition's torch counterpart
            layer = _from_definition(where, mod, d)
        elif kind in _ACTIVATIONS and type(mod) is getattr(nn, kind):
            if kind == "Softplus" and (mod.beta != 1 or mod.threshold != 20):
                raise _unsupported(where, mod, "only beta=1, threshold=20")
            if kind == "GELU" and mod.approximate != "none":
                raise _unsupported(where, mod, "only the erf form (approximate='none')")
            params = {}
            if kind in _ACT_PARAMS:
                attr, name = _ACT_PARAMS[kind]
                params[name] = float(getattr(mod, attr))
            layer = L.Activation(_ACTIVATIONS[kind], params=params)
        elif isinstance(mod, nn.PReLU):
            layer = L.PReLU(mod.num_parameters)
        elif isinstance(mod, nn.Dropout) and type(mod) is nn.Dropout:
            if mod.p == 0:
                continue
            layer = L.Dropout(mod.p)
        else:
            raise _unsupported(where, mod)
        layers.append(layer)
        weights.append([_values(where, mod, t) for t in tensors if t is not None])
    if not layers:
        raise ValueError("from_torch: the Sequential has no layers")
    np_dtype = "float64" if dtype == torch.float64 else "float32"
    model = Sequential(layers, loss=loss_from_torch(loss), dtype=np_dtype, seed=seed, input_shape=input_shape)
    for layer, ws in zip(layers, weights):
        for p, w in zip(layer.parameters() + layer.buffers(), ws):
            p[...] = w.reshape(p.shape)   # LayerNorm's γ over a normalized shape is stored flat
    model.train(seq.training)
    return model


def to_torch(model):
    """A ``torch.nn.Sequential`` computing the same function as ``model``, with copies of its
    weights (same dtype). Shared layers become shared modules. Residual blocks and user-defined
    activations have no ``nn.Sequential`` equivalent here and raise a ValueError naming them."""
    torch = _torch()
    from .runtime import layers as L
    from .runtime.defined import definitions, layer_class

    nn = torch.nn
    dt = torch.float64 if model.dtype == np.float64 else torch.float32
    made, mods = {}, []
    for k, layer in enumerate(model.layers):
        if id(layer) in made:
            mods.append(made[id(layer)])
            continue
        if isinstance(layer, L.Dense) and layer.dropconnect:
            raise ValueError(f"to_torch: layer {k} ({layer.name}) uses DropConnect (p={layer.dropconnect}), which "
                             f"torch.nn has no module for; a plain Linear would silently drop it (build the model "
                             f"without dropconnect to export it)")
        d = getattr(type(layer), "definition", None)
        tensors = []
        if d is not None and d.torch is not None and type(layer) is layer_class(d.name):
            kw = {attr: layer.args[ours] for ours, attr in d.torch.args.items()}
            if d.torch.arrays:
                kw["dtype"] = dt
            mod = getattr(nn, d.torch.module)(**kw, **d.torch.keywords)
            tensors = [getattr(mod, a) for ours, a in d.torch.arrays.items()
                       if ours in layer.trainable() or ours not in {p.name for p in d.params}]
        elif isinstance(layer, L.Activation) and layer.config().get("name") in _ACTIVATIONS.values() \
                and layer.module is _builtin_activations():
            name = layer.config()["name"]
            kind = next(k2 for k2, v in _ACTIVATIONS.items() if v == name)
            kw = {_ACT_PARAMS[kind][0]: layer.params[_ACT_PARAMS[kind][1]]} if kind in _ACT_PARAMS else {}
            mod = getattr(nn, kind)(**kw)
        elif isinstance(layer, L.LearnableActivation) and layer.kernel_name == "prelu" and layer.spec is None:
            mod = nn.PReLU(layer.num_parameters, dtype=dt)
            tensors = [mod.weight]
        elif isinstance(layer, L.Dropout):
            mod = nn.Dropout(layer.p)
        else:
            supported = ", ".join(n for n, dd in definitions().items() if dd.torch is not None)
            raise ValueError(f"to_torch: layer {k} ({layer.name}) has no torch.nn equivalent here; supported: "
                             f"{supported}, PReLU, Dropout, Activation ({', '.join(_ACTIVATIONS.values())})")
        if tensors:
            with torch.no_grad():
                for t, p in zip(tensors, layer.parameters() + layer.buffers()):
                    t.copy_(torch.from_numpy(np.ascontiguousarray(p)).reshape(t.shape))
        made[id(layer)] = mod
        mods.append(mod)
    return nn.Sequential(*mods).train(model.training)


def _builtin_activations():
    from .runtime.kernels import load
    return load("activations")


# ---------------------------------------------------------------- losses (torch loss modules)
#: torch.nn loss class -> our loss name, and the settings (attribute: value) we compute exactly
_TORCH_LOSSES = {
    "MSELoss": ("mse", {"reduction": "mean"}),
    "HuberLoss": ("huber", {"reduction": "mean"}),
    "CrossEntropyLoss": ("softmax_cross_entropy", {"reduction": "mean", "weight": None, "ignore_index": -100,
                                                   "label_smoothing": 0.0}),
    "BCEWithLogitsLoss": ("sigmoid_cross_entropy", {"reduction": "mean", "weight": None, "pos_weight": None}),
}


def loss_from_torch(loss):
    """Our loss for ``loss``: a torch loss module — ``nn.MSELoss``, ``nn.HuberLoss`` (its delta
    kept), ``nn.CrossEntropyLoss`` (no class weights, label smoothing or ignore_index) or
    ``nn.BCEWithLogitsLoss`` (no weight or pos_weight), each with ``reduction="mean"`` (the batch
    mean our losses compute) — or, unchanged, a loss name or a symprop loss. Any other torch
    module, or a setting we do not compute, is refused by name."""
    import sys
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(loss, torch.nn.Module):
        return loss   # a name or one of our losses: Sequential checks it
    from .runtime.losses import get_loss
    kind = type(loss).__name__
    known = _TORCH_LOSSES.get(kind) if type(loss) is getattr(torch.nn, kind, None) else None
    if known is None:
        raise ValueError(f"from_torch: loss {kind} has no symprop equivalent; supported: "
                         f"{', '.join('nn.' + k for k in _TORCH_LOSSES)} (reduction='mean'), or a loss name")
    name, settings = known
    for attr, want in settings.items():
        have = getattr(loss, attr, None)
        if (have is not None) if want is None else have != want:
            shown = "set" if want is None else repr(have)
            raise ValueError(f"from_torch: loss {kind} with {attr}={shown} is not supported: symprop's {name!r} "
                             f"is the plain {kind}({attr}={want!r})" + (" (the mean over the batch)"
                                                                         if attr == "reduction" else ""))
    return get_loss(name, delta=float(loss.delta)) if name == "huber" else get_loss(name)


def loss_to_torch(loss):
    """The torch loss module computing ``loss`` (a name or one of our losses) as ours does — the
    inverse of :func:`loss_from_torch`: ``nn.HuberLoss(delta=...)``, ``nn.MSELoss()``,
    ``nn.CrossEntropyLoss()``, ``nn.BCEWithLogitsLoss()``; a loss torch.nn has no module for
    (log-cosh, a user's) is refused by name."""
    torch = _torch()
    from .runtime.losses import LOSSES, get_loss
    ours = get_loss(loss)
    for kind, (name, _) in _TORCH_LOSSES.items():
        if ours.name == name and type(ours) is LOSSES[name]:   # the built-in, not a user's loss of its name
            return getattr(torch.nn, kind)(**ours.scalars)
    raise ValueError(f"loss_to_torch: the loss {ours.name!r} has no torch.nn module; torch.nn has "
                     f"{', '.join('nn.' + k for k in _TORCH_LOSSES)}")
