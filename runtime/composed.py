"""LayerNorm, RMSNorm and GroupNorm: built-in layers composed of two specs' layers.

Each is a normalisation over groups inside one sample (the composite spec ``standardize`` or
``rms_scale``) followed by a per-channel scale and shift (the contraction spec
``channel_affine`` or ``channel_scale``) — the specs a user writes for LayerNorm with
``L.from_spec`` (README, "Write your own layer"), emitted with the built-ins. The layer
composes: its two parts run as one chain through the sweep engine
(:class:`~symprop.runtime.branched.BranchedLayer`); every product is a part's kernel. What the
layer adds is bookkeeping: which elements form a group, how the channels lie.
"""
from __future__ import annotations

import numpy as np

from .branched import BranchedLayer
from .defined import DefinedMixin, defined
from .layer_base import SpecLayer
from .normalization import CompositeLayer


class _Part:
    """A part's name, shape rule and input check are its layer's."""

    @property
    def name(self):
        return self.owner.name

    def output_shape(self, input_shape):
        return self.owner.output_shape(input_shape)


class _Normalize(_Part, CompositeLayer):
    """The normalisation part: each run of ``owner.group_size`` consecutive elements of a sample
    is one group (the kernels see (1, groups, group size))."""

    def __init__(self, owner, spec: str):
        self.owner = owner
        self._bind("composite", spec)

    def scalars(self):
        return {"eps": self.owner.eps_value(None)}

    def call_scalars(self, shape, dtype=None):
        return {**super().call_scalars(shape, dtype), "eps": self.owner.eps_value(dtype)}

    def layout(self, shape):
        size = self.owner.group_size(shape)
        return 1, int(np.prod(shape, dtype=np.int64)) // size, size

    def factor_backprop(self, rec, groups, g, exact, need_input=True):
        if exact and need_input:
            raise ValueError(f"hessian_diagonal: method='exact' is not available below {self.name} (its second "
                             f"derivative couples the elements of a group); use method='gauss_newton' or "
                             f"'hutchinson'")
        return super().factor_backprop(rec, groups, g, False, need_input)


class _ScaleShift(_Part, SpecLayer):
    """The per-channel scale (and shift) part; the kernels see (rows, channels, positions)."""

    def __init__(self, owner, spec: str, trained: tuple):
        self.owner, self._trained = owner, trained
        self._bind("dense", spec)

    def spec_arrays(self):
        return {p: getattr(self.owner, p) for p in self._trained}

    def trainable(self):
        return self._trained

    def kernel_view(self, shape):
        return self.owner.channel_view(shape)

    def call_shapes(self, x):
        return {"x": x.shape, "y": x.shape}


class _NormLayer(DefinedMixin, BranchedLayer):
    """A normalisation then, when it has parameters, its scale and shift (the definition's
    ``parts``: the one whose parameters are the trained ones)."""

    def __init__(self, *args, **kwargs):
        self._define(*args, **kwargs)
        d = self.definition
        self.parts = [_Normalize(self, d.spec.name)]
        if self._trained:
            spec = next(s for s in d.parts if set(s.params) == set(self._trained))
            self.parts.append(_ScaleShift(self, spec.name, self._trained))

    def branches(self):
        return [self.parts]

    def eps_value(self, dtype) -> float:
        """``eps``, or when None (RMSNorm's default, as PyTorch) the machine epsilon of the
        input's dtype (float32's when unknown)."""
        if self.eps is not None:
            return self.eps
        return float(np.finfo(dtype if dtype is not None else np.float32).eps)

    def bl(self, rec, h, g):
        self.refuse_curvature("becker_lecun", " (the normalisation couples the elements of a group)")

    def group_size(self, shape: tuple) -> int:
        """Elements per group for a batch of ``shape``."""
        raise NotImplementedError

    def channel_view(self, shape: tuple) -> tuple:
        """A batch of ``shape`` as (rows, channels, positions) for the scale and shift."""
        raise NotImplementedError


class _OverLastDims(_NormLayer):
    def group_size(self, shape):
        return int(np.prod(self.normalized_shape, dtype=np.int64))

    def channel_view(self, shape):
        q = self.group_size(shape)
        return int(np.prod(shape, dtype=np.int64)) // q, q, 1


@defined("LayerNorm")
class LayerNorm(_OverLastDims):
    """``L.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True)`` (PyTorch's
    LayerNorm): each sample (each position of the leading dimensions) standardized over its
    last dimensions ``normalized_shape`` (biased variance), then ``γ·x̂ + β`` elementwise. γ and
    β are stored flat (``prod(normalized_shape)`` values; interop reshapes PyTorch's)."""


@defined("RMSNorm")
class RMSNorm(_OverLastDims):
    """``L.RMSNorm(normalized_shape, eps=None, elementwise_affine=True)`` (PyTorch's RMSNorm):
    ``γ·x/sqrt(mean(x²) + eps)`` over the last dimensions; eps None is the machine epsilon of
    the model's dtype, as in PyTorch."""


@defined("GroupNorm")
class GroupNorm(_NormLayer):
    """``L.GroupNorm(num_groups, num_channels, eps=1e-5, affine=True)`` (PyTorch's GroupNorm):
    the channels of each sample of (N, C, ...) in ``num_groups`` groups of consecutive channels,
    each group standardized over its channels and positions, then ``γ·x̂ + β`` per channel."""

    def group_size(self, shape):
        return int(np.prod(shape[1:], dtype=np.int64)) // self.num_groups

    def channel_view(self, shape):
        return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))
