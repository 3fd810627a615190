"""The spec classes a user writes layers with (``L.from_spec``) — the same ones the built-ins use.

- :class:`ElementwiseSpec`: ``y = f(x; params)`` (an activation);
- :class:`ContractionSpec`: ``y[idx] = Σ …`` over indexed input and parameter arrays; with
  ``maps=`` of :class:`AxisMap` s, a window (convolution, pooling) read ``x[…, h·s + i·d − p]``;
- :class:`CompositeSpec` of :class:`Stage` s: reductions over a group and elementwise maps
  (normalisations);
- :class:`PointwiseLossSpec`: an elementwise loss ``ℓ(z, t)`` (see ``symprop.losses.from_sympy``).
"""
from .derive.affine import AxisMap  # noqa: F401
from .derive.composite import CompositeSpec, Stage  # noqa: F401
from .derive.elementwise import ElementwiseSpec, SpecError  # noqa: F401
from .derive.indexed import ContractionSpec  # noqa: F401
from .derive.losses import PointwiseLossSpec  # noqa: F401

__all__ = ["ElementwiseSpec", "ContractionSpec", "AxisMap", "CompositeSpec", "Stage", "PointwiseLossSpec", "SpecError"]
