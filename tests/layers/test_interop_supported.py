"""from_torch's list of supported modules (its error message) is read from the registries:
the built-in layer definitions' torch counterparts and the activation registries."""
import dataclasses
import re

import pytest
import torch.nn as nn

from symprop.derive import builtins
from symprop.interop import from_torch


def _listed(mod) -> list[str]:
    with pytest.raises(ValueError, match="is not supported") as info:
        from_torch(nn.Sequential(nn.Linear(2, 2), mod))
    return re.search(r"supported: (.*)$", str(info.value)).group(1).split(", ")


def test_message_lists_every_layer_definition_and_mapped_activation():
    listed = _listed(nn.Hardswish())
    want = [d.torch.module for d in builtins.LAYERS.values() if d.torch is not None]
    assert want and set(want) <= set(listed)
    assert {"ReLU", "Tanh", "GELU", "LeakyReLU", "ELU", "PReLU", "Dropout", "Sequential"} <= set(listed)
    assert len(listed) == len(set(listed))   # each once
    for name in listed:                       # every name is a torch.nn module
        assert hasattr(nn, name), name


def test_message_follows_the_registries(monkeypatch):
    """A definition added to LAYERS appears; an activation gone from the registry disappears."""
    dense = builtins.LAYERS["Dense"]
    monkeypatch.setitem(builtins.LAYERS, "Bilinear", dataclasses.replace(
        dense, name="Bilinear", torch=dataclasses.replace(dense.torch, module="Bilinear")))
    monkeypatch.delitem(builtins.ACTIVATIONS, "mish")
    listed = _listed(nn.Hardswish())
    assert "Bilinear" in listed and "Mish" not in listed and "GELU" in listed
