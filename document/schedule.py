"""The kernel schedule of a model: the kernels each training call runs, in order, and the
appendix tables that list them.

:func:`kernel_schedule` reads the schedule the runtime recorded (the sweep engine running the
model's calls on a tiny batch, ``runtime/sweep.py``): nothing here knows the call order.
"""
from __future__ import annotations

from ..derive.elementwise import DerivedElementwise
from .derived import _derived_builtin
from .prose import _kernel_ref
from .shapes import ModelInfo, model_title


def _kernels_by_role(spec_name: str) -> dict:
    d = _derived_builtin(spec_name)
    if isinstance(d, DerivedElementwise):
        return {k.role: k.name for k in d.kernels}
    roles = {"forward": d.forward.name, "jvp": d.jvp.name}
    roles.update({k.role: k.name for k in d.vjps.values()})
    roles.update({k.role: k.name for k in d.rvjps.values()})
    roles.update({k.role: k.name for k in d.bls.values()})
    roles.update({f"sqvjp:{p}": f"{spec_name}_sqvjp_{p}" for p in d.sqvjps})
    return roles


def _layer_roles(info: ModelInfo) -> list[dict]:
    """Per layer of the model, its spec's kernels by role ({} for a reshape)."""
    return [(_kernels_by_role(la.spec) if la.spec else {}) for la in info.layers]


def kernel_schedule(info: ModelInfo) -> dict:
    """The kernels each training call runs, in order, as the runtime recorded them: ``{call:
    [(layer k or None for the loss, kernel name, note)]}`` from ``info.schedule``, the log of
    the sweep engine running the model's calls on a tiny batch (``runtime/sweep.py``,
    ``record_schedule``; entries with a ``position``, ``role`` and ``kernel``). A layer inside a
    block counts as the block's layer k."""
    if info.schedule is None:
        raise ValueError("latex: the kernel schedule of a model is recorded by running it (the runtime's "
                         "sweep.record_schedule); compile the kernels (pip install .) to document a model")
    notes = {"curv:x": "a new group", "value_and_grad": "the loss and its gradient",
             "hvp": "the loss Hessian times the pushed-forward direction",
             "hessian_blocks": "once per output unit: the loss Hessian blocks"}
    calls = ("loss_and_grad", "hvp", "exact", "gauss_newton", "becker_lecun", "hutchinson")
    return {call: [(c.position[0] + 1 if c.position else None, c.kernel, notes.get(c.role, ""))
                   for c in info.schedule.get(call, ())] for call in calls}


def model_schedule(info: ModelInfo) -> str:
    """The appendix section of a model: the kernels each training call runs, in order
    (:func:`kernel_schedule`), as two tables (first order and the R-op; the Hessian diagonals)."""
    L = len(info.layers)
    sched = kernel_schedule(info)
    n_grad = len(sched["loss_and_grad"])

    def cell(steps, k):
        mine = [(n, note if note == "a new group" else "") for kk, n, note in steps if kk == k]
        return ", ".join(_kernel_ref(n) + (f" ({note})" if note else "") for n, note in dict.fromkeys(mine)) or "---"
    fwd = [s for s in sched["loss_and_grad"] if s[1].endswith("_forward")]
    pull = sched["loss_and_grad"][len(fwd) + 1:]
    rop = sched["hutchinson"][n_grad:]
    hvp = sched["hvp"]
    out = [f"\\needlines{{16}}\n\\section{{Kernel schedule: {model_title(info)}}}\\label{{app:schedule}}\n"
           "The kernels each training call runs, layer by layer ($k$ as in the table of Section~\\ref{sec:model}). "
           f"\\texttt{{loss\\_and\\_grad(X, y)}} runs the forward column top to bottom, then the loss kernel "
           f"{_kernel_ref(info.loss)} (the loss and $\\bar g_{{{L}}}$), then the pullback column bottom to top: "
           f"${n_grad}$ kernel calls. \\texttt{{hessian\\_diagonal(X, y, method)}} with \\texttt{{hutchinson}} adds, per "
           "probe, the R-op: the "
           f"JVPs top to bottom, {_kernel_ref(info.loss + '_hvp')}, then the R-op pullbacks bottom to top. "
           "\\texttt{hvp(X, y, v)} (and AdaHessian's step) runs fused kernels instead, which compute several "
           "of these products in one pass over their arrays: each layer's forward and JVP together, top to bottom "
           "(a convolution im2cols its input once for both), the loss with its gradient and Hessian term, then "
           "each layer's pullbacks and their R-ops together, bottom to top (the first layer computes no input "
           f"gradient): ${len(hvp)}$ kernel calls, which also give the gradient.\n"
           "\\begin{center}\\small\\setlength{\\tabcolsep}{4pt}\n"
           "\\begin{tabularx}{\\linewidth}{@{}r l R R R@{}}\n\\toprule\n"
           "$k$ & forward & pullbacks & JVP; R-op pullbacks & fused (\\texttt{hvp})\\\\\n\\midrule\n"]
    for k in range(1, L + 1):
        r = [s for s in rop if s[0] == k]
        jr = "; ".join(x for x in (cell([s for s in r if s[1].endswith("_jvp")], k),
                                   cell([s for s in r if not s[1].endswith("_jvp")], k)) if x != "---") or "---"
        out.append(f"{k} & {cell(fwd, k)} & {cell(pull, k)} & {jr} & {cell(hvp, k)}\\\\\n")
    out.append("\\bottomrule\n\\end{tabularx}\n\\end{center}\n")
    out.append("\\texttt{hessian\\_diagonal(X, y, method)} with \\texttt{becker\\_lecun}, \\texttt{gauss\\_newton} or "
               "\\texttt{exact} starts with the calls of \\texttt{loss\\_and\\_grad}, then runs "
               f"{_kernel_ref(info.loss + '_hvp')} once per output unit (the per-sample loss Hessian). "
               "Becker--LeCun passes its diagonal $D$ down through every layer's diagonal kernels (middle column). "
               "Gauss--Newton factors it by an eigendecomposition into a group of columns $S_q$; layer by layer, "
               "from the last, each group gives every parameter's diagonal (one call of its kernel per group) and passes "
               "its columns down through the input pullback (one call per column; right column); the exact diagonal adds, at each activation with $f'' \\ne 0$, its "
               "curvature term $f''(x)\\,\\bar g$ as a new group.\n")
    out.append("\\begin{center}\\small\n\\begin{tabularx}{\\linewidth}{@{}r l R R@{}}\n\\toprule\n"
               "$k$ & layer & Becker--LeCun & Gauss--Newton and exact\\\\\n\\midrule\n")
    bl = sched["becker_lecun"][n_grad:]
    ex = sched["exact"][n_grad:]
    for k in range(L, 0, -1):
        la = info.layers[k - 1]
        out.append(f"{k} & {la.label} & {cell(bl, k)} & {cell(ex, k)}\\\\\n")
    out.append("\\bottomrule\n\\end{tabularx}\n\\end{center}\n")
    return "".join(out)
