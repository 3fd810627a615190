"""symprop.codegen — derived expressions -> kernel plans -> Cython text (Jinja2).

``generate`` writes ``generated/``; ``build`` compiles user specs on the fly into a cache.
"""
from .config import CodegenConfig

__all__ = ["CodegenConfig"]
