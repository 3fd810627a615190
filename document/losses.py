"""The losses: built-in and user-written (``losses.from_sympy``), their gradient and
Hessian (-vector product) as the kernels compute them."""
from __future__ import annotations

import sympy as sp

from ..derive.losses import (POINTWISE_LOSSES, PointwiseLossSpec, derive_softmax_cross_entropy, derive_user_loss,
                             mse, sigmoid_cross_entropy)
from .appendix import KernelTable
from .layout import display, row
from .printer import DerivationPrinter, escape, tex
from .prose import LOSS_NAMES, _capitalised
from .simplify import display_form


def losses_section(kernels: list | None = None) -> str:
    """The losses: definition, gradient and Hessian (-vector product) as the kernels compute them
    (their appendix table of kernels appended to ``kernels``)."""
    if kernels is not None:
        kernels.append(KernelTable("Losses", "losses", "l R l", ("kernel", "computes", "eq."), [
            ("softmax_cross_entropy", "the loss and its gradient", "\\eqref{eq:ce:def}, \\eqref{eq:ce:grad}"),
            ("softmax_cross_entropy_hvp", "the Hessian-vector product", "\\eqref{eq:ce:hvp}"),
            ("mse", "the loss and its gradient", "\\eqref{eq:mse:def}, \\eqref{eq:mse:grad}"),
            ("mse_hvp", "the second derivative times the direction", "\\eqref{eq:mse:hess}"),
            ("sigmoid_cross_entropy", "the loss and its gradient", "\\eqref{eq:sce:def}, \\eqref{eq:sce:grad}"),
            ("sigmoid_cross_entropy_hvp", "the second derivative times the direction", "\\eqref{eq:sce:hess}"),
            *(row for spec in POINTWISE_LOSSES.values() for row in _kernel_rows(spec, builtin_label(spec.name)))]))
    ce = derive_softmax_cross_entropy()
    ms = mse()
    sc = sigmoid_cross_entropy()
    P = DerivationPrinter(names=LOSS_NAMES)
    j = sp.Symbol("j", integer=True)
    pe, ve = sp.symbols("p v")
    hvp_indexed = ce.hvp_elem.xreplace({pe: sp.IndexedBase("p")[j], ve: sp.IndexedBase("v")[j]})
    a, t = sp.symbols("a t")
    return "".join([
        "\\section{Losses}\n",
        "A loss compares the network's output with the targets; the batch loss is the mean over the "
        "$N$ samples. The gradient $\\partial L/\\partial y$ of the last layer's output is the first "
        "$\\bar g$ of the backward pass, and the loss Hessian times the pushed-forward direction the first "
        "$\\mathcal{R}\\{\\bar g\\}$ of the R-op.\n",
        "\\subsection{Softmax cross-entropy}\n",
        "Per sample, for logits $z$ and target $t$ (one-hot, or probabilities), with a shift $m$ for "
        "stability (the kernels use the row maximum):\n",
        display([row(r"\ell", ce.definition, P, "eq:ce:def")]),
        "The derivation checks $\\partial\\ell/\\partial m = " + tex(ce.shift_derivative, P)
        + "$, so any shift is exact. The gradient, as differentiated and in the probabilities "
        "$p = \\operatorname{softmax}(z)$, and the Hessian-vector product for a direction $v$ at the output:\n",
        display([row(r"\frac{\partial \ell}{\partial z_j}", ce.grad_raw, P, "eq:ce:grad", then=ce.grad),
                 row(r"(\nabla^2\ell\, v)_j", display_form(ce.hvp), P, "eq:ce:hvp", then=display_form(hvp_indexed))]),
        "\\subsection{Mean squared error}\n",
        "Per element of the output $a$ and target $t$, averaged over all elements:\n",
        display([row(r"\ell(a, t)", ms.elem.subs(sp.Symbol("a"), a), P, "eq:mse:def"),
                 row(r"\frac{\partial \ell}{\partial a}", display_form(ms.grad_elem), P, "eq:mse:grad"),
                 row(r"\frac{\partial^2 \ell}{\partial a^2}", ms.hess_elem, P, "eq:mse:hess")]),
        "\\subsection{Sigmoid cross-entropy}\n",
        "Per element of the logits $a$ and target $t \\in [0, 1]$, averaged over all elements, in the "
        "forms the rewriter chose, finite for logits of any size:\n",
        display([row(r"\ell(a, t)", sc.elem, P, "eq:sce:def"),
                 row(r"\frac{\partial \ell}{\partial a}", display_form(sc.grad_elem), P, "eq:sce:grad"),
                 row(r"\frac{\partial^2 \ell}{\partial a^2}", sc.hess_elem, P, "eq:sce:hess")]),
        *(_spec_section(spec, builtin_label(spec.name), "") for spec in POINTWISE_LOSSES.values()),
    ])


def builtin_label(name: str) -> str:
    """The equation label prefix of a built-in loss written as a spec (``eq:loss:huber``; a user's
    loss of the same name is ``eq:huber``)."""
    return f"eq:loss:{name}"


def _kernel_rows(spec: PointwiseLossSpec, label: str) -> list:
    return [(spec.name, "the loss and its gradient", f"\\eqref{{{label}:def}}, \\eqref{{{label}:grad}}"),
            (spec.name + "_hvp", "the second derivative times the direction", f"\\eqref{{{label}:hess}}")]


def user_loss_section(spec: PointwiseLossSpec, kernels: list | None = None) -> str:
    """A loss written with ``losses.from_sympy``: its definition, and ℓ′, ℓ″ as differentiated
    and in the forms its kernels compute."""
    label = f"eq:{spec.name}"
    if kernels is not None:
        kernels.append(KernelTable(_capitalised(spec.name.replace("_", " ")), spec.name, "l R l",
                                   ("kernel", "computes", "eq."), _kernel_rows(spec, label)))
    return _spec_section(spec, label, " (a loss written by the user)")


def _spec_section(spec: PointwiseLossSpec, label: str, note: str) -> str:
    """A loss written as a :class:`PointwiseLossSpec` (a built-in, or the user's): its
    definition, and ℓ′, ℓ″ as differentiated and in the forms its kernels compute."""
    d = derive_user_loss(spec)
    P = DerivationPrinter(names=LOSS_NAMES)
    a, tt = sp.symbols("a t", real=True)
    raw_g = sp.diff(spec.canonical, a)
    args = "".join(f", ${tex(sp.Symbol(n), P)} = {v:g}$ by default" for n, v in spec.scalars)
    return "".join([
        f"\\subsection{{{escape(_capitalised(spec.name.replace('_', ' ')))}{note}}}\n",
        (escape(spec.doc) + " " if spec.doc else "")
        + "Per element of the prediction $a$ and target $t$" + args + ", averaged over all elements; the "
        "gradient as differentiated and as the kernel computes it, and the second derivative:\n",
        display([row(r"\ell(a, t)", spec.canonical, P, f"{label}:def",
                     then=None if d.elem == spec.canonical else d.elem),   # a stable form the kernel computes
                 row(r"\frac{\partial \ell}{\partial a}", raw_g, P, f"{label}:grad",
                     then=None if sp.simplify(raw_g - d.grad_elem) == 0 and raw_g == d.grad_elem else d.grad_elem),
                 row(r"\frac{\partial^2 \ell}{\partial a^2}", d.hess_elem, P, f"{label}:hess")]),
    ])
