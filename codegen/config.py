"""Settings shared by every kernel family (what SymForce calls a codegen config)."""
from __future__ import annotations

from dataclasses import dataclass

#: (C type, suffix used in kernel names, math-function suffix)
DTYPES = (("float", "f32", "f"), ("double", "f64", ""))


@dataclass(frozen=True)
class CodegenConfig:
    dtypes: tuple = DTYPES
    cse: bool = True
