"""The model part: the network-level chain rule of a model (shapes, the composed
first-order product in reverse layer order, the R-op sweeps)."""
from __future__ import annotations

import sympy as sp

from .printer import tex
from .schedule import _layer_roles
from .shapes import LOSS_TEXT, ModelInfo, _shape_tex, _size, model_title


def model_section(info: ModelInfo) -> str:
    """The network-level chain rule of a model: shapes, the composed first-order product
    (reverse layer order), the R-op sweeps (forward, then reverse); the kernels per call are
    in the appendix (:func:`model_schedule`)."""
    L = len(info.layers)
    xs = [info.input_shape] + [la.out_shape for la in info.layers]
    roles = _layer_roles(info)
    loss_name, loss_def, loss_hess = LOSS_TEXT[info.loss]
    title = model_title(info)
    out = [f"\\section{{Model: {title[:1].upper() + title[1:]}}}\\label{{sec:model}}\n",
           f"The network{info.origin} for inputs "
           f"$x_0 \\in {_shape_tex(info.input_shape)}$: layer $k$ maps $x_{{k-1}}$ to "
           f"$x_k = f_k(x_{{k-1}}; \\theta_k)$ and the loss $L$ ({loss_name}, "
           f"\\eqref{{{loss_def}}}, averaged over the batch) is taken of $x_{{{L}}}$. "
           + f"${info.n_params:,}$ parameters in all; the kernels each training call runs are listed in "
           .replace(",", "\\,") + "Appendix~\\ref{app:schedule}.\n"]
    out.append("\\begin{center}\\small\n\\begin{tabular}{@{}r l l l r@{}}\n\\toprule\n"
               "$k$ & layer $f_k$ & output $x_k$ & parameters $\\theta_k$ & count\\\\\n\\midrule\n")
    for k, la in enumerate(info.layers, 1):
        ps = ", ".join(f"${tex(sp.Symbol(p))}_{{{k}}} \\in {_shape_tex(shape, False)}$" for p, shape in la.params)
        cnt = sum(_size(s) for _, s in la.params)
        out.append(f"{k} & {la.label} & ${_shape_tex(la.out_shape)}$ & {ps or '---'} & {cnt if cnt else ''}\\\\\n")
    out.append("\\bottomrule\n\\end{tabular}\n\\end{center}\n")

    def jac(k):
        return f"J_{{{k}}}"

    # first order
    out.append("\\subsection{First order: the chain rule in reverse layer order}\n"
               "With $J_k = \\partial x_k/\\partial x_{k-1}$ and $J_{\\theta_k} = \\partial x_k/\\partial \\theta_k$ "
               "(per sample; a $|x_k| \\times |x_{k-1}|$ matrix, never formed), the gradient of a "
               "parameter is the product of the transposed Jacobians from the loss back to its layer,\n"
               "\\begin{equation}\n\\frac{\\partial L}{\\partial \\theta_k} = J_{\\theta_k}^\\top\\, J_{k+1}^\\top "
               f"\\cdots J_{{{L}}}^\\top\\, \\bar g_{{{L}}}, \\qquad \\bar g_{{{L}}} = \\frac{{\\partial L}}{{\\partial x_{{{L}}}}},"
               "\\label{eq:model:grad}\n\\end{equation}\n"
               "evaluated right to left: each product is one pullback kernel applied to a vector "
               "($\\bar g_{k-1} = J_k^\\top \\bar g_k$), so no Jacobian is ever formed. For this model, top to bottom:\n")
    rows = [f"\\bar g_{{{L}}} &= \\nabla_{{x_{{{L}}}}} L \\in {_shape_tex(xs[L])}"]
    for k in range(L, 0, -1):
        la, r = info.layers[k - 1], roles[k - 1]
        for p, shape in la.params:
            P = tex(sp.Symbol(p))
            rows.append(f"\\partial L/\\partial {P}_{{{k}}} &= J_{{{P}_{{{k}}}}}^\\top \\bar g_{{{k}}} \\in "
                        f"{_shape_tex(shape, False)}")
        if k > 1:
            what = "" if la.spec else r" && \text{(a reshape)}"
            rows.append(f"\\bar g_{{{k - 1}}} &= {jac(k)}^\\top \\bar g_{{{k}}} \\in {_shape_tex(xs[k - 1])}{what}")
    out.append("\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}\n")

    # second order
    out.append("\\subsection{Second order: the R-op sweeps}\n"
               "For a direction $v = (v_{\\theta_1}, \\dots)$ aligned with the parameters, the R-operator "
               "pushes $v$ forward through the layers in their own order (the Jacobian products "
               "left to right),\n\\begin{equation}\n"
               f"\\mathcal{{R}}\\{{x_{{{L}}}\\}} = \\sum_k J_{{{L}}} \\cdots J_{{k+1}} J_{{\\theta_k}} v_{{\\theta_k}},"
               "\\label{eq:model:rfwd}\n\\end{equation}\n"
               f"through the loss Hessian, $\\mathcal{{R}}\\{{\\bar g_{{{L}}}\\}} = \\nabla^2 \\ell\\; "
               f"\\mathcal{{R}}\\{{x_{{{L}}}\\}}$ \\eqref{{{loss_hess}}}, and back through the R-op of every pullback in reverse order,\n"
               "\\begin{equation}\n\\mathcal{R}\\{\\bar g_{k-1}\\} = J_k^\\top \\mathcal{R}\\{\\bar g_k\\} + "
               "\\mathcal{R}\\{J_k\\}^\\top \\bar g_k, \\qquad (Hv)_{\\theta_k} = J_{\\theta_k}^\\top "
               "\\mathcal{R}\\{\\bar g_k\\} + \\mathcal{R}\\{J_{\\theta_k}\\}^\\top \\bar g_k,"
               "\\label{eq:model:rbwd}\n\\end{equation}\n"
               "where $\\mathcal{R}\\{J_k\\}^\\top \\bar g_k$ is the second-order term ($f''$ of an "
               "activation, the direction of a weight; zero for pooling and reshapes). For this model:\n")
    rows, started = [], False
    for k in range(1, L + 1):
        la, r = info.layers[k - 1], roles[k - 1]
        terms = []
        if started:
            terms.append(f"{jac(k)} \\mathcal{{R}}\\{{x_{{{k - 1}}}\\}}")
        terms += [f"J_{{{tex(sp.Symbol(p))}_{{{k}}}}} v_{{{tex(sp.Symbol(p))}_{{{k}}}}}" for p, _ in la.params]
        started = started or bool(la.params)
        if not terms:
            continue
        what = "" if la.spec else r" && \text{(a reshape)}"
        rows.append(f"\\mathcal{{R}}\\{{x_{{{k}}}\\}} &= {' + '.join(terms)} \\in {_shape_tex(xs[k])}{what}")
    rows.append(f"\\mathcal{{R}}\\{{\\bar g_{{{L}}}\\}} &= \\nabla^2 \\ell\\; \\mathcal{{R}}\\{{x_{{{L}}}\\}} "
                f"\\in {_shape_tex(xs[L])}")
    for k in range(L, 0, -1):
        la, r = info.layers[k - 1], roles[k - 1]
        for p, shape in la.params:
            P = f"{tex(sp.Symbol(p))}_{{{k}}}"
            rows.append(f"(Hv)_{{{P}}} &= J_{{{P}}}^\\top \\mathcal{{R}}\\{{\\bar g_{{{k}}}\\}} + "
                        f"\\mathcal{{R}}\\{{J_{{{P}}}\\}}^\\top \\bar g_{{{k}}} \\in {_shape_tex(shape, False)}")
        if k > 1:
            second = la.params or la.kind == "Activation"
            rhs = f"{jac(k)}^\\top \\mathcal{{R}}\\{{\\bar g_{{{k}}}\\}}" + (
                f" + \\mathcal{{R}}\\{{{jac(k)}\\}}^\\top \\bar g_{{{k}}}" if second else "")
            what = "" if la.spec else r" && \text{(a reshape)}"
            rows.append(f"\\mathcal{{R}}\\{{\\bar g_{{{k - 1}}}\\}} &= {rhs} \\in {_shape_tex(xs[k - 1])}{what}")
    out.append("\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}\n")

    return "".join(out)
