"""symprop.derive — SymPy only: layer specs, differentiation, cost-aware simplification.

Nothing in this package knows about code: it turns specs into simplified SymPy
expressions (with recorded op counts) that ``symprop.codegen`` prints as kernels and
``symprop.document`` prints as a LaTeX document. It imports neither of them.
"""
from .elementwise import ElementwiseSpec, DerivedElementwise, derive_elementwise
from .indexed import ContractionSpec, derive_contraction
from . import builtins

__all__ = ["ElementwiseSpec", "DerivedElementwise", "derive_elementwise",
           "ContractionSpec", "derive_contraction", "builtins"]
