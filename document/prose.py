"""The document's words: what a reader is told about each built-in layer, section titles,
the notation table and the preamble; the record of every printed kernel expression
(:class:`Printed`, :class:`Document`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import sympy as sp

from .derived import _builtin_specs
from .printer import escape


@dataclass
class Printed:
    """A kernel expression as the document prints it: ``expr`` is the kernel's own expression
    (before display rewriting); ``shown`` is what was printed, with CSE temporaries ``temps``."""
    kernel: str
    output: str
    expr: sp.Expr
    shown: sp.Expr
    temps: list = field(default_factory=list)


@dataclass
class Document:
    """The LaTeX text and every kernel expression printed in it."""
    text: str
    printed: list          # [Printed]: every kernel expression in the text


def _kernel_ref(name: str, breakable: bool = False) -> str:
    """A kernel's name in typewriter type; ``breakable`` allows line breaks after underscores
    (for table cells)."""
    text = escape(name)
    if breakable:
        text = text.replace(r"\_", r"\_\allowbreak{}")
    return r"\texttt{" + text + "}"


#: what a reader is told about each built-in layer (math in math mode); user specs print their doc
DESCRIPTIONS = {
    "tanh": r"The hyperbolic tangent.",
    "sigmoid": r"The logistic sigmoid $\sigma(x) = 1/(1 + e^{-x})$.",
    "relu": r"The rectified linear unit, differentiated almost everywhere: $f'(x) = [x > 0]$ and "
            r"$f'' = 0$ (the distributional $\delta$ at 0 is dropped, as in every framework).",
    "softplus": r"Softplus, a smooth ReLU; the kernels evaluate it in the overflow-free form "
                r"$\max(0, x) + \log(1 + e^{-|x|})$.",
    "leaky_relu": r"Leaky ReLU with slope $\alpha$ below 0.",
    "elu": r"The exponential linear unit: $x$ for $x > 0$ and $\alpha(e^x - 1)$ otherwise.",
    "silu": r"The sigmoid-weighted linear unit $x\,\sigma(x)$.",
    "swish": r"Swish, $x\,\sigma(\beta x)$ for a fixed $\beta$.",
    "gelu": r"The Gaussian error linear unit in its exact form $x\,\Phi(x) = \tfrac{x}{2}(1 + \operatorname{erf}(x/\sqrt 2))$.",
    "mish": r"Mish, $x \tanh(\operatorname{softplus}(x))$.",
    "prelu": r"PReLU: leaky ReLU whose slope $\alpha$ below 0 is learned (one per channel, or one shared).",
    "swish_learnable": r"Swish $x\,\sigma(\beta x)$ with a learned $\beta$ (one per channel, or one shared).",
    "dropout": r"Inverted dropout: $y = m x$ with a mask $m \in \{0, 1/(1-p)\}$ drawn per forward call "
               r"(each element kept with probability $1 - p$); the same kernels mask a dense layer's weights "
               r"for DropConnect.",
    "penalty": r"The weight penalty $\lambda_1 |x| + \tfrac{\lambda_2}{2} x^2$ of one weight $x$ (of a fully connected "
               r"or convolution layer), added to the loss.",
    "batchnorm": r"Batch normalisation in training mode: each channel normalised by its batch mean and "
                 r"biased batch variance, then scaled by $\gamma$ and shifted by $\beta$.",
    "batchnorm_eval": r"Batch normalisation in evaluation mode: the running mean $\hat\mu$ and variance "
                      r"$\hat\sigma^2$ (constants here) in place of the batch statistics.",
    "softmax": r"Softmax over the $K$ classes of a sample, shifted by the row maximum so that no exponential "
               r"overflows.",
    "standardize": r"Standardisation over each group of one sample: its mean subtracted and divided by the "
                   r"square root of its biased variance plus $\epsilon$ --- the normalisation of LayerNorm (the "
                   r"group: the last dimensions of a sample) and of GroupNorm (the group: consecutive channels of a "
                   r"sample and all their positions), before their scale and shift.",
    "rms_scale": r"Division by the root mean square over each group of one sample (RMSNorm's normalisation, "
                 r"the group being the sample's last dimensions), before its scale.",
    "channel_affine": r"A learnable scale $\gamma$ and shift $\beta$ per channel $c$ of an input viewed as rows "
                      r"$\times$ channels $\times$ positions: LayerNorm's and GroupNorm's elementwise affine map.",
    "channel_scale": r"A learnable scale $\gamma$ per channel (RMSNorm's, and LayerNorm's without a bias).",
    "dense": r"The fully connected layer $y = x W^\top + b$ for a batch $x$ of $N$ rows, with $W$ of shape "
             r"$O \times I$ (PyTorch's layout).",
    "conv2d": r"Two-dimensional convolution (a cross-correlation, as in PyTorch) of an input of shape "
              r"$N \times C_{\mathrm{in}} \times H_{\mathrm{in}} \times W_{\mathrm{in}}$ with a weight of shape "
              r"$C_{\mathrm{out}} \times C_{\mathrm{in}} \times K_h \times K_w$ and stride $(s_h, s_w)$, padding $(p_h, p_w)$, "
              r"dilation $(d_h, d_w)$.",
    "avgpool2d": r"Average pooling over $K_h \times K_w$ windows with stride $(s_h, s_w)$ and padding "
                 r"$(p_h, p_w)$; zero padding counts in the mean (PyTorch's \texttt{count\_include\_pad=True}).",
    "maxpool2d": r"Max pooling, written as its local linearisation: $A_{n,c,h,w,k,l}$ is the one-hot argmax "
                 r"of each window (the first maximum in row-major order, as in PyTorch), saved by the "
                 r"forward pass and held fixed by every derivative, so the second derivative is zero.",
}

#: section titles of the built-in layers, as a reader names them (the spec name is given once in the text)
TITLES = {"tanh": "Hyperbolic tangent", "sigmoid": "Logistic sigmoid", "relu": "Rectified linear unit",
          "softplus": "Softplus", "leaky_relu": "Leaky rectified linear unit", "elu": "Exponential linear unit",
          "silu": "Sigmoid-weighted linear unit", "swish": "Swish", "gelu": "Gaussian error linear unit",
          "mish": "Mish", "prelu": "Parametric rectified linear unit", "swish_learnable": "Swish with a learned slope",
          "dropout": "Dropout", "penalty": "Weight penalty", "dense": "Fully connected layer",
          "conv2d": "Two-dimensional convolution", "avgpool2d": "Average pooling", "maxpool2d": "Max pooling",
          "batchnorm": "Batch normalisation, training mode", "batchnorm_eval": "Batch normalisation, evaluation mode",
          "softmax": "Softmax", "standardize": "Standardisation (LayerNorm, GroupNorm)",
          "rms_scale": "Root-mean-square scaling (RMSNorm)", "channel_affine": "Scale and shift per channel",
          "channel_scale": "Scale per channel"}
#: the named models' titles (``symprop train --model NAME``)
MODEL_TITLES = {"lenet": "LeNet-5", "cnn": "a small convolutional network", "mlp": "a multilayer perceptron",
                "cifar_cnn": "a convolutional network for CIFAR-10"}


def _title(spec) -> str:
    """A section title in words: the built-in's name, or for a user spec the first clause of its
    docstring (capitalised) when that is short, else its name with spaces for underscores."""
    if _builtin_specs().get(spec.name) is spec and spec.name in TITLES:
        return TITLES[spec.name]
    first = re.split(r"[.;:\n]", spec.doc or "")[0].strip()
    words = first if 0 < len(first) <= 48 else spec.name.replace("_", " ").strip()
    return escape(_capitalised(words))


def _capitalised(text: str) -> str:
    """``text`` with a capital first letter when its first word is a plain word (a name such as
    ``my_act#1`` is left as written)."""
    first = text.split(" ", 1)[0]
    return text[:1].upper() + text[1:] if first.isalpha() and first.islower() else text


def _heading(spec) -> str:
    """The subsection of one layer, kept with at least the first lines of what follows it."""
    return f"\\needlines{{8}}\n\\subsection{{{_title(spec)}}}\\label{{sec:{spec.name}}}\n"


def _spec_note(name: str) -> str:
    """The one mention of a layer's spec name, for readers who look for the code, with a pointer
    to its kernels in the appendix."""
    return (f"In the code it is the spec {_kernel_ref(name)}; its kernels are listed in "
            f"Appendix~\\ref{{app:{name}}}.")


def command_tex(cmd: str) -> str:
    """A command line in typewriter type, typeset verbatim: ``--model`` keeps both hyphens (no
    en dash), special characters escaped."""
    return r"\texttt{" + escape(cmd).replace("-", "-{}") + "}"


#: display names of a window layer's indices: û, ŵ input positions, k, l kernel offsets
WINDOW_NAMES = {"u": r"\hat h", "v": r"\hat w", "i": "k", "j": "l", "M": "A"}
#: composite stage symbols that would collide with other meanings: the softmax shift, sum and
#: exponentials (m, s, e: mask, stride, Euler's e) and batch norm's centred input (d: dilation)
COMPOSITE_NAMES = {"m": r"x_{\max}", "s": "Z", "e": "u", "d": r"\tilde{x}"}
#: the losses: j' a second class index, ⟨p, v⟩ = Σ_j p_j v_j
LOSS_NAMES = {"k": "j'", "l": "j'", "s": r"\langle p, v\rangle"}


def _is_word(name: str) -> bool:
    """A multi-letter name SymPy would set in italics as a product (not a Greek letter, not
    a letter with a numeric subscript such as l1)."""
    return len(name) > 1 and name.isalpha() and sp.latex(sp.Symbol(name)) == name


def _description(name: str, doc: str) -> str:
    return DESCRIPTIONS.get(name) or (escape(_capitalised(doc)) + ("" if doc.endswith(".") else ".") if doc else "")


# ---------------------------------------------------------------- front matter
PREAMBLE = r"""\documentclass[11pt,a4paper]{article}
\pdfgentounicode=1
\input{glyphtounicode}
\usepackage[T1]{fontenc}
\usepackage{lmodern}
\usepackage{textcomp}
\usepackage[margin=2cm]{geometry}
\usepackage{amsmath,amssymb}
\usepackage{booktabs,tabularx,array}
\usepackage{microtype}
\allowdisplaybreaks
\sloppy
\clubpenalty=10000
\widowpenalty=10000
\numberwithin{equation}{section}
\setlength{\parindent}{0pt}
\setlength{\parskip}{0.5ex plus 0.3ex}
\newcolumntype{M}{>{\raggedright\arraybackslash$}X<{$}}
\newcolumntype{R}{>{\raggedright\arraybackslash}X}
\newcolumntype{K}[1]{>{\raggedright\arraybackslash}p{#1}}
\makeatletter
% a new page unless #1 lines are left: keeps a heading with what follows it
\newcommand{\needlines}[1]{\par\penalty-100\begingroup\dimen@=#1\baselineskip
  \dimen@ii=\pagegoal\advance\dimen@ii-\pagetotal
  \ifdim\dimen@>\dimen@ii\ifdim\dimen@ii>\z@\vfil\fi\break\fi\endgroup}
\makeatother
% the value the kernels use where an intermediate overflows (see the notation)
\newcommand{\guarded}[2]{\left\{\begin{array}{@{}l@{\quad}l@{}}\displaystyle #1 & \text{(finite)}\\[1ex]
  \displaystyle #2 & \text{(overflow)}\end{array}\right.}
\title{symprop: derivations of first- and second-order backpropagation}
\date{}
\begin{document}
\maketitle
"""

#: the notation section: one symbol per meaning, stated once (symbol, meaning)
NOTATION_ROWS = [
    (r"$x$, $y$; $W$, $b$", r"a layer's input and output; its weight and bias"),
    (r"$\bar g = \partial L/\partial y$; $\bar g^x$, $\bar g^W$", r"the gradient arriving at a layer's output; the "
     r"gradients it passes on (pullbacks, vector--Jacobian products $J^\top \bar g$)"),
    (r"$\mathcal{R}\{\cdot\}$", r"Pearlmutter's R-operator: the derivative along a direction $v$ in parameter space "
     r"($\mathcal{R}\{W\} = v_W$)"),
    (r"$\mathcal{R}\{x\}$, $\mathcal{R}\{y\}$; $\mathcal{R}\{\bar g\}$, $\mathcal{R}\{\bar g^x\}$",
     r"the direction at a layer's input and its pushforward (Jacobian--vector product); the direction of the "
     r"incoming gradient and the R-op of a pullback (its parameter parts make up the Hessian--vector product $Hv$)"),
    (r"$D$; $D^x$, $D^W$", r"the diagonal of the loss Hessian with respect to a layer's output (per sample); its "
     r"Becker--LeCun counterparts at the input and parameters"),
    (r"$S_q$, $\sigma_{q,n}$", r"columns of a factorisation of the output Hessian (Gauss--Newton), and their signs"),
    (r"indices", r"$n$ sample; $o$ output feature or channel; $i$ input feature; $c$ input channel; $h, w$ output "
     r"and $\hat h, \hat w$ input row and column; $k, l$ kernel offsets; $j, j'$ classes"),
    (r"sizes", r"$N$ samples; $I, O$ features; $C_{\mathrm{in}}, C_{\mathrm{out}}$ channels; "
     r"$H_{\mathrm{in}} \times W_{\mathrm{in}}$, $H_{\mathrm{out}} \times W_{\mathrm{out}}$ images; $K_h \times K_w$ "
     r"kernel; $K$ classes; $s, p, d$ stride, padding, dilation (subscript: the axis)"),
    (r"$\sum_{a,b}$", r"a sum over the whole range of its indices (stated with each layer)"),
    (r"$[P]$; $a \mid b$; $A^{\circ 2}$", r"1 when $P$ holds, else 0; $a$ divides $b$; every entry of $A$ squared"),
    (r"$\tau_1, \tau_2, \dots$", r"common subexpressions of one kernel"),
    (r"$\guarded{e}{a}$", r"$e$, which is the function; $a$, its limit at $\pm\infty$, is the value "
     r"the kernels use where an intermediate of $e$ overflows in floating point"),
    (r"$\mathcal{G}$; $M$; $\sum_{\mathcal{G}}$", r"in a composite layer: a group (a channel, a sample) a "
     r"reduction runs over; its size; a sum over it"),
    (r"op count", r"the weighted cost of an expression: a transcendental function counts 10--12, a division 4, "
     r"a multiplication or addition 1; multiply-adds are counted per output element"),
]


def notation(body: str) -> str:
    """The notation table: every row whose symbol the document ``body`` uses (the temporaries
    τ₁, τ₂ and the overflow guard only when some equation has them)."""
    optional = {r"$\tau_1, \tau_2, \dots$": r"\tau_{", r"$\guarded{e}{a}$": r"\guarded{"}
    rows = [(a, b) for a, b in NOTATION_ROWS if a not in optional or optional[a] in body]
    return ("\n\\section*{Notation}\n"
            "\\begin{center}\\small\n\\begin{tabularx}{\\linewidth}{@{}l R@{}}\n\\toprule\n"
            "symbol & meaning\\\\\n\\midrule\n"
            + "".join(f"{a} & {b}\\\\\n" for a, b in rows)
            + "\\bottomrule\n\\end{tabularx}\n\\end{center}\n")
