"""The appendix: one table of kernels per layer (kernel names appear only here)."""
from __future__ import annotations

from dataclasses import dataclass

from .prose import _kernel_ref


@dataclass
class KernelTable:
    """One appendix table: the kernels of a layer (or the loss kernels), which product each
    computes, where the document derives it, and its cost."""
    title: str
    key: str                  # label app:<key>
    columns: str              # tabularx column spec
    header: tuple
    rows: list                # [tuple of cells]; the first cell is a kernel name
    note: str = ""


#: a kernel table two of which fit side by side: no wrapping column, names of at most this many characters
_NARROW_NAME = 25


def _narrow(t: KernelTable) -> bool:
    return "R" not in t.columns.split() and max(len(r[0]) for r in t.rows) <= _NARROW_NAME


def _table_tex(t: KernelTable) -> str:
    cols = t.columns.split()
    spec = "@{}" + " ".join(cols) + "@{}"
    env = "tabularx" if "R" in cols else "tabular"
    width = "{\\linewidth}" if env == "tabularx" else ""
    return (f"\\begin{{{env}}}{width}{{{spec}}}\n\\toprule\n" + " & ".join(t.header) + "\\\\\n\\midrule\n"
            + "".join(_kernel_ref(r[0]) + " & " + " & ".join(r[1:]) + "\\\\\n" for r in t.rows)
            + f"\\bottomrule\n\\end{{{env}}}\n")


def kernel_appendix(tables: list) -> str:
    """The appendix: one table of kernels per layer (typewriter names only here, never beside
    the equations); two narrow tables share a row."""
    if not tables:
        return ""
    out = ["\\section{Kernels}\\label{app:kernels}\n"
           "The generated kernels, one table per layer: the kernel's name in \\texttt{generated/}, what it "
           "computes, the equation it computes, and its op count (elementwise layers) or its multiply-adds per "
           "output element (dense and window layers).\n"]
    i = 0
    while i < len(tables):
        t = tables[i]
        if _narrow(t) and i + 1 < len(tables) and _narrow(tables[i + 1]):
            pair = tables[i:i + 2]
            rows = max(len(x.rows) for x in pair)
            out.append(f"\\needlines{{{rows + 6}}}\n\\noindent")
            for j, x in enumerate(pair):
                out.append(("\\hfill" if j else "") + "\\begin{minipage}[t]{0.485\\linewidth}\n"
                           f"\\refstepcounter{{subsection}}\\label{{app:{x.key}}}"
                           f"{{\\large\\bfseries \\thesubsection\\quad {x.title}\\par}}\\medskip\n"
                           + (x.note + "\n" if x.note else "") + "{\\small\\setlength{\\tabcolsep}{4pt}\n" + _table_tex(x) + "}\n\\end{minipage}")
            out.append("\n\\par\\bigskip\n")
            i += 2
            continue
        out.append(f"\\needlines{{{min(len(t.rows), 10) + 5}}}\n\\subsection{{{t.title}}}\\label{{app:{t.key}}}\n"
                   + (t.note + "\n" if t.note else "")
                   + "\\begin{center}\\small\n" + _table_tex(t) + "\\end{center}\n")
        i += 1
    return "".join(out)
