"""symprop.document — the derivations as a LaTeX document: the human-readable twin of ``generated/``.

Every formula is printed from the same derived SymPy objects that ``codegen`` prints as
kernels (no hand-typed formulas): definitions, first-order pullbacks (VJPs), pushforwards
(JVPs), the R-op pullbacks, the Hessian-diagonal rules, and the simplified forms with their
op counts. With a model, the document adds the network-level chain rule (layer shapes, the
composed first- and second-order sweeps); with ``taylor=True`` the Taylor-mode rules of every
activation and, for a model, its forward-Laplacian sweep; for a PDE problem
(:mod:`symprop.pinn`) the residual, the derivatives it needs and the cotangents ∂(r²)/∂q.
Kernel names appear only in the appendix.

This package reads :mod:`symprop.derive` (and nothing of ``runtime`` at import time), so
``symprop latex`` runs without compiled kernels. The parts:

==================  ==========================================================
``printer``         the LaTeX printer and its notation; :func:`escape`
``layout``          width estimate, line breaking, displays
``simplify``        display-only rewriting (checked equal, never fed to kernels)
``prose``           descriptions, titles, the notation table, the preamble
``derived``         which specs the document covers and their derivations
``elementwise``     per-family sections: elementwise, dense and window,
``contraction``     composite layers, and the losses
``composite``
``losses``
``appendix``        the kernel tables
``shapes``          a model's layers, shapes and parameters (:func:`describe_model`)
``model``           the model's composed chain rule
``schedule``        the kernels each training call runs (appendix)
``taylor``          the Taylor-mode rules of the activations
``sweep``           a model's forward-Laplacian sweep and its backward
``pde``             a PDE problem: residual, needed derivatives, cotangents
``assemble``        the whole document, and its PDF
==================  ==========================================================

    from symprop import document
    text = document.document()                     # every built-in layer and loss
    text = document.document(layers=["tanh", "conv2d"], extra=[my_spec], taylor=True)
    text = document.document(model=document.describe_model("m", (64,), configs))   # configs: Layer.config()
"""
from .assemble import build, compile_pdf, document, model_info, problem_document
from .derived import builtin_layer_names
from .printer import escape
from .prose import Document, command_tex
from .shapes import ModelInfo, describe_model

__all__ = ["build", "document", "compile_pdf", "builtin_layer_names", "describe_model", "ModelInfo",
           "Document", "escape", "command_tex", "model_info", "problem_document"]
