"""Saving and loading a :class:`Sequential`: the architecture as a JSON config (a layer used
again is stored as a reference), the weights and buffers as arrays (``runtime/checkpoint.py``;
no pickle)."""
from __future__ import annotations

import numpy as np

from . import checkpoint
from .layers import custom_object, from_config
from .losses import get_loss


def save(model, path):
    """Write the architecture, weights and buffers to ``path`` (.npz, atomically)."""
    if model.input_shape is None:
        raise ValueError("Sequential.save: the model is not built yet (its input shape is unknown); "
                         "pass input_shape= or run fit/forward first")
    for i, a in enumerate(model.parameters() + model.buffers()):
        if not np.isfinite(a).all():
            raise ValueError(f"Sequential.save: array {i} holds NaN or inf values; refusing to write a "
                             f"checkpoint that cannot be loaded")
    first, cfgs = {}, []
    for k, layer in enumerate(model.layers):   # a layer used again is stored as a reference
        cfgs.append({"type": "Shared", "index": first[id(layer)]} if id(layer) in first else layer.config())
        first.setdefault(id(layer), k)
    cfg = {"layers": cfgs, "loss": model.loss.name, "dtype": model.dtype.name, "seed": model.seed,
           "input_shape": list(model.input_shape), "l1": model.l1, "l2": model.l2}
    if getattr(model.loss, "spec", None) is not None:   # a loss from a spec: loaded back by name and hash
        cfg["loss_hash"] = model.loss.spec.hash
    if getattr(model.loss, "scalars", None):             # its arguments (Huber's delta)
        cfg["loss_config"] = dict(model.loss.scalars)
    buffers = model.buffers()
    cfg["n_buffers"] = len(buffers)
    return checkpoint.save(path, cfg, model.parameters() + buffers)


def load(cls, path, custom_objects: dict | None = None):
    """Rebuild a model of class ``cls`` saved by :func:`save` (no pickle). The architecture comes from the
    JSON config; every array's declared shape and dtype is checked against it before the
    array is read; malformed files raise ValueError naming the file."""
    with checkpoint.Checkpoint(path) as ck:
        model = _from_checkpoint_config(cls, ck.path, ck.config, custom_objects)
        nb = ck.config.get("n_buffers", 0)
        if isinstance(nb, bool) or not isinstance(nb, int) or not 0 <= nb <= ck.n:
            raise ValueError(f"{path}: invalid buffer count {nb!r} in the checkpoint")
        params, buffers = model.parameters(), model.buffers()
        if buffers and not nb:
            raise ValueError(f"{path}: the model has buffers (running statistics) the checkpoint does not hold")
        targets = params + buffers
        if len(targets) != ck.n:
            raise ValueError(f"{path}: checkpoint has {ck.n} arrays, the model {len(targets)}")
        values = [ck.array(i, p.shape, p.dtype) for i, p in enumerate(targets)]
    for p, a in zip(targets, values):
        p[...] = a
    for layer in model.layers:
        check = getattr(layer, "check_state", None)
        if check is not None:
            check(str(path))
    return model


def _from_checkpoint_config(cls, path, cfg: dict, custom_objects):
    def need(key, kinds, what):
        v = cfg.get(key)
        if not isinstance(v, kinds) or isinstance(v, bool):
            raise ValueError(f"{path}: config entry {key!r} must be {what}, got {v!r:.80}")
        return v
    layer_cfgs = need("layers", list, "a list of layer configs")
    need("loss", str, "a loss name")
    need("dtype", str, "a dtype name")
    shape = need("input_shape", list, "a list of positive integers")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(f"{path}: config entry 'input_shape' must be positive integers, got {shape!r:.80}")
    layers = []
    for c in layer_cfgs:
        if not isinstance(c, dict):
            raise ValueError(f"{path}: a layer config is a {type(c).__name__}, not an object")
        if c.get("type") == "Shared":
            k = c.get("index")
            if not isinstance(k, int) or not 0 <= k < len(layers):
                raise ValueError(f"{path}: shared-layer reference {c} points at no earlier layer")
            layers.append(layers[k])
            continue
        try:
            layers.append(from_config(c, custom_objects))
        except (KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ValueError(f"{path}: malformed layer config {str(c)[:120]} "
                             f"({type(exc).__name__}: {exc})") from exc
    loss = _loss_from_config(path, cfg, custom_objects)
    try:
        return cls(layers, loss=loss, dtype=cfg["dtype"], seed=cfg.get("seed", 0),
                   input_shape=tuple(shape), l1=cfg.get("l1", 0.0), l2=cfg.get("l2", 0.0))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: the config does not describe a model ({type(exc).__name__}: {exc})") from exc


def _loss_from_config(path, cfg: dict, custom_objects):
    """The saved loss: a built-in by name; a loss from a spec by name and hash — a built-in
    written as a spec (Huber) when the hash is the built-in's and ``custom_objects`` does not
    name it, else the user's (given as a loss or a spec: compiled, or taken from the cache,
    only once the hash matched); with its saved scalar arguments."""
    from .losses import LOSSES, SpecLoss, from_sympy
    name, saved_hash = cfg["loss"], cfg.get("loss_hash")
    scalars = cfg.get("loss_config", {})
    if not isinstance(scalars, dict) or not all(isinstance(k, str) for k in scalars):
        raise ValueError(f"{path}: config entry 'loss_config' must map argument names to numbers, got {scalars!r:.80}")
    try:
        if saved_hash is None:
            return get_loss(name, custom_objects, **scalars)
        builtin = LOSSES.get(name)
        if (not (custom_objects and name in custom_objects) and builtin is not None
                and issubclass(builtin, SpecLoss) and builtin().spec.hash == saved_hash):
            return builtin(**scalars)
        loss = custom_object("loss", name, saved_hash, custom_objects)
        if hasattr(loss, "canonical"):
            loss = from_sympy(loss.name, loss.expr, loss.z, loss.t, scalars=loss.defaults())
        return loss.with_scalars(**scalars) if scalars and hasattr(loss, "with_scalars") else loss
    except TypeError as exc:
        raise ValueError(f"{path}: the saved loss {name!r} does not take {scalars} ({exc})") from exc
