"""A model's forward-Laplacian sweep: value, Jacobian columns and Laplacian through each layer,
and the backward sweep through them (the parameter gradient of a loss on u, ∇u, Δu).

The activation lines are the derived ``laplacian`` role and its pullback
(:mod:`symprop.derive.taylor`) with each layer's arrays substituted; affine layers map every
coefficient by their linear part, the bias entering the value only.
"""
from __future__ import annotations

import sympy as sp

from ..derive.taylor import laplacian_role, vjp_role
from .printer import tex
from .shapes import ModelInfo, _shape_tex, _size, model_title
from .taylor import TaylorPrinter

#: layer kinds whose rows the document's forward-Laplacian sweep writes out (the runtime sweeps
#: more: max pooling, normalisations, composite layers, runtime/taylor.py)
SWEPT = ("Dense", "Conv2D", "AvgPool2D", "Flatten", "Activation")


def unswept(info: ModelInfo) -> list[str]:
    """The layers of ``info`` that have no Taylor-mode sweep, in words ("layer 3, max pooling")."""
    return [f"layer {k} ({la.label[:1].lower() + la.label[1:]})" for k, la in enumerate(info.layers, 1)
            if la.kind not in SWEPT]


def _names(k: int) -> dict:
    """Printed names of layer k's role arrays: input coefficients at k − 1, outputs at k."""
    a, b = k - 1, k
    return {"x": f"x_{{{a}}}", "y": f"x_{{{b}}}", "J": f"J_{{{a},i}}", "L": f"L_{{{a}}}",
            "Jy": f"J_{{{b},i}}", "Ly": f"L_{{{b}}}", "F1": f"f_{{{b}}}'", "F2": f"f_{{{b}}}''",
            "F3": f"f_{{{b}}}'''", "gy": rf"\bar{{g}}^{{x}}_{{{b}}}", "gJy": rf"\bar{{g}}^{{J}}_{{{b},i}}",
            "gLy": rf"\bar{{g}}^{{L}}_{{{b}}}", "gx": rf"\bar{{g}}^{{x}}_{{{a}}}", "gJ": rf"\bar{{g}}^{{J}}_{{{a},i}}",
            "gL": rf"\bar{{g}}^{{L}}_{{{a}}}"}


def _rows(k: int, outputs, P) -> list[str]:
    """``lhs &= rhs`` rows of one layer's role outputs, printed with layer k's names."""
    return [tex(sp.Symbol(o), P) + " &= " + tex(e, P) for o, e in outputs]


def laplacian_sweep_section(info: ModelInfo, pde: bool = False) -> str:
    """The forward-Laplacian sweep of ``info`` (which must have only swept layers) and its
    backward sweep, layer by layer with shapes (``pde``: the document has a PDE part to cite)."""
    bad = unswept(info)
    if bad:
        raise ValueError(f"latex: the document does not write out {model_title(info)}'s forward-Laplacian sweep: "
                         f"{', '.join(bad)} is not one of the layers it writes (supported: {', '.join(SWEPT)})")
    d = _size(info.input_shape)
    K = len(info.layers)
    xs = [info.input_shape] + [la.out_shape for la in info.layers]
    lap, back = laplacian_role(), vjp_role(laplacian_role())
    title = model_title(info)
    out = [f"\\needlines{{12}}\n\\subsection{{The forward-Laplacian sweep of {title}}}\\label{{sec:taylor:sweep}}\n",
           f"For inputs $x_0 \\in {_shape_tex(info.input_shape)}$ ($d = {d}$ coordinates), layer $k$ carries its "
           "value $x_k$, the $d$ first-order coefficients $J_{k,i} = \\partial x_k/\\partial x_{0,i}$ and the "
           "summed second-order coefficient $L_k = \\sum_i \\partial^2 x_k/\\partial x_{0,i}^2$ (each of the "
           "value's shape: $d + 2$ arrays), starting from $J_{0,i} = e_i$ (the $i$-th unit vector, for every "
           "sample) and $L_0 = 0$. Affine layers map every coefficient by their linear part (the bias enters "
           "$x_k$ only); an activation $f_k$ applies the forward Laplacian \\eqref{eq:taylor:lap} "
           "elementwise:\n"]
    rows = []
    for k, la in enumerate(info.layers, 1):
        shape = f" \\in {_shape_tex(xs[k])}"
        if la.kind == "Activation":
            P = TaylorPrinter(names=_names(k))
            r = [f"x_{{{k}}} &= f_{{{k}}}(x_{{{k - 1}}})" + shape]
            r += _rows(k, lap.dir_outputs + [(o, e) for o, e in lap.point_outputs if o != "y"], P)
        elif la.kind == "Dense":
            b = " + b_{%d}" % k if len(la.params) > 1 else ""
            r = [f"x_{{{k}}} &= x_{{{k - 1}}} W_{{{k}}}^\\top{b}" + shape,
                 f"J_{{{k},i}} &= J_{{{k - 1},i}} W_{{{k}}}^\\top", f"L_{{{k}}} &= L_{{{k - 1}}} W_{{{k}}}^\\top"]
        elif la.kind == "Flatten":
            r = [f"x_{{{k}}}, J_{{{k},i}}, L_{{{k}}} &= x_{{{k - 1}}}, J_{{{k - 1},i}}, L_{{{k - 1}}} "
                 f"\\text{{ reshaped to }} {_shape_tex(xs[k])}"]
        else:       # Conv2D, AvgPool2D: the linear part A_k
            b = " + b_{%d}" % k if len(la.params) > 1 else ""
            r = [f"x_{{{k}}} &= A_{{{k}}} x_{{{k - 1}}}{b}" + shape,
                 f"J_{{{k},i}} &= A_{{{k}}} J_{{{k - 1},i}}", f"L_{{{k}}} &= A_{{{k}}} L_{{{k - 1}}}"]
            r[0] += r" && \text{(%s)}" % la.label.split(",")[0].lower()
        rows += r
    out.append("\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}\n")
    convs = [k for k, la in enumerate(info.layers, 1) if la.kind in ("Conv2D", "AvgPool2D")]
    if convs:
        out.append("where $A_k$ is the linear part of the window layer (its pushforward along the input).\n")
    out.append(f"At the output, $u = x_{{{K}}}$, $\\nabla u = (J_{{{K},1}}, \\dots, J_{{{K},d}})$ and "
               f"$\\Delta u = L_{{{K}}}$. A loss of $u, \\nabla u, \\Delta u$ "
               + ("(the mean squared PDE residual of Section~\\ref{sec:pde}) " if pde else "(the mean squared residual of a PDE) ")
               + "gives the cotangents "
               f"$\\bar g^{{x}}_{{{K}}}, \\bar g^{{J}}_{{{K},i}}, \\bar g^{{L}}_{{{K}}}$ that start the backward sweep, in "
               "reverse layer order: an activation applies the pullback \\eqref{eq:taylor:lapvjp}; an affine layer "
               "sums its weight's pullback over all $d + 2$ coefficient arrays, takes its bias's from the value only, "
               "and passes every cotangent back through its transposed linear part (the first layer computes no "
               "input cotangent).\n")
    rows = []
    for k in range(K, 0, -1):
        la = info.layers[k - 1]
        if la.kind == "Activation":
            P = TaylorPrinter(names=_names(k))
            rows += _rows(k, back.point_outputs + back.dir_outputs, P)
            continue
        if la.kind == "Flatten":
            rows.append(f"\\bar g^{{x}}_{{{k - 1}}}, \\bar g^{{J}}_{{{k - 1},i}}, \\bar g^{{L}}_{{{k - 1}}} &= "
                        f"\\bar g^{{x}}_{{{k}}}, \\bar g^{{J}}_{{{k},i}}, \\bar g^{{L}}_{{{k}}} \\text{{ reshaped to }} "
                        f"{_shape_tex(xs[k - 1])}")
            continue
        dense = la.kind == "Dense"
        for p, shape in la.params:
            if p == "W":
                if dense:
                    rows.append(f"\\partial \\mathcal{{L}}/\\partial W_{{{k}}} &= (\\bar g^{{x}}_{{{k}}})^\\top x_{{{k - 1}}} + "
                                f"\\sum_i (\\bar g^{{J}}_{{{k},i}})^\\top J_{{{k - 1},i}} + (\\bar g^{{L}}_{{{k}}})^\\top "
                                f"L_{{{k - 1}}} \\in {_shape_tex(shape, False)}")
                else:
                    rows.append(f"\\partial \\mathcal{{L}}/\\partial W_{{{k}}} &= \\bar W(x_{{{k - 1}}}, \\bar g^{{x}}_{{{k}}}) + "
                                f"\\sum_i \\bar W(J_{{{k - 1},i}}, \\bar g^{{J}}_{{{k},i}}) + \\bar W(L_{{{k - 1}}}, "
                                f"\\bar g^{{L}}_{{{k}}}) \\in {_shape_tex(shape, False)}")
            else:
                rows.append(f"\\partial \\mathcal{{L}}/\\partial b_{{{k}}} &= \\textstyle\\sum_{{n}} "
                            f"\\bar g^{{x}}_{{{k}}} \\in {_shape_tex(shape, False)}")
        if k > 1:
            gx, gJ, gL = r"\bar g^{x}_{%d}" % k, r"\bar g^{J}_{%d,i}" % k, r"\bar g^{L}_{%d}" % k
            lin = (lambda g: f"{g} W_{{{k}}}") if dense else (lambda g: f"A_{{{k}}}^\\top {g}")
            rows.append(f"\\bar g^{{x}}_{{{k - 1}}} &= {lin(gx)}, \\quad \\bar g^{{J}}_{{{k - 1},i}} = {lin(gJ)}, "
                        f"\\quad \\bar g^{{L}}_{{{k - 1}}} = {lin(gL)}")
    out.append("\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}\n")
    if any(la.kind == "Conv2D" for la in info.layers):
        out.append("Here $\\bar W(a, \\bar g)$ is the convolution's weight pullback of input $a$ "
                   "and output cotangent $\\bar g$, and the sums over $n$ run over the samples (and, for a "
                   "convolution, the positions).\n")
    out.append("The sums over $i$ run over the $d$ input coordinates and $\\mathcal{L}$ is the loss. Per layer "
               "this is about $d + 2$ times the work of a plain forward and backward pass, and no Hessian is "
               "formed; $f'''$ enters the backward sweep only.\n")
    return "".join(out)

