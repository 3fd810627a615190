"""Equations laid out for a 17 cm text width: a rough width estimate of LaTeX math
(:func:`tex_width`), right-hand sides broken between terms and guard groups (:func:`row`),
and rows set as one ``equation`` or ``align`` display (:func:`display`)."""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from .printer import DerivationPrinter, _mathematical_names, _neg, close_trailing_cases


_CMD_WIDTH = {"sum": 2.0, "cdot": 0.8, "quad": 2.0, "qquad": 4.0, "mid": 1.6, "le": 1.8, "ge": 1.8,
              "in": 1.6, "to": 1.8, "top": 0.8, "langle": 0.6, "rangle": 0.6, "dots": 2.0, "cdots": 2.0,
              "ldots": 2.0, "times": 1.6, "mapsto": 2.0, "odot": 1.6, "circ": 1.2, "tanh": 3.6,
              "log": 2.6, "exp": 2.6, "max": 3.0, "min": 3.0, "cosh": 3.6, "sinh": 3.6, "partial": 1.0,
              "nabla": 1.2, "ell": 0.8, "left": 0.0, "right": 0.0, "notag": 0.0, "label": 0.0, "\\": 0.0}
_WRAPPERS = {"bar", "hat", "tilde", "mathcal", "mathrm", "mathit", "mathbf", "operatorname", "text", "texttt"}
_SPACES = {",": 0.3, ";": 0.5, "!": 0.0, ":": 0.4, " ": 0.3, "{": 0.5, "}": 0.5, "|": 0.5}


def tex_width(s: str) -> float:
    """Rough display width of a LaTeX math string in units of one italic letter (about 5.5 pt at
    11 pt): good enough to decide whether an equation fits on a line."""
    w, _ = _width(s, 0)
    return w


def _group(s: str, i: int):
    while i < len(s) and s[i] == " ":
        i += 1
    if i < len(s) and s[i] == "{":
        w, i = _width(s, i + 1)
        return w, i + 1
    if i < len(s) and s[i] == "\\":
        j = i + 1
        while j < len(s) and s[j].isalpha():
            j += 1
        return _CMD_WIDTH.get(s[i + 1:j], 1.0), max(j, i + 2)
    return (1.0 if i < len(s) else 0.0), i + 1


def _width(s: str, i: int):
    total = 0.0
    while i < len(s):
        c = s[i]
        if c == "}":
            return total, i
        if c == "{":
            w, i = _width(s, i + 1)
            total, i = total + w, i + 1
        elif c == "\\":
            j = i + 1
            while j < len(s) and s[j].isalpha():
                j += 1
            name = s[i + 1:j]
            if not name:                               # \, \; \{ \! …
                total += _SPACES.get(s[i + 1:i + 2], 1.0) if i + 1 < len(s) else 0
                i += 2
                continue
            i = j
            if name == "frac":
                a, i = _group(s, i)
                b, i = _group(s, i)
                total += max(a, b) + 0.4
            elif name == "guarded":                    # cases: the wider line and its note
                a, i = _group(s, i)
                b, i = _group(s, i)
                total += max(a, b) + 12.0
            elif name == "sqrt":
                a, i = _group(s, i)
                total += a + 1.2
            elif name in _WRAPPERS:
                a, i = _group(s, i)
                total += a * (1.15 if name == "texttt" else 1.0)
            elif name in ("left", "right"):
                if i < len(s) and s[i] == "\\":
                    i += 2
                else:
                    i += 1
                total += 0.5
            elif name in ("label", "tag"):
                _, i = _group(s, i)
            else:
                total += _CMD_WIDTH.get(name, 1.0)
        elif c in "^_":
            a, i = _group(s, i + 1)
            total += 0.7 * a
        elif c in " &":
            i += 1
        elif c in "+-=<>":
            total += 1.7
            i += 1
        elif c in "()[],;.'|":
            total += 0.5
            i += 1
        else:
            total += 1.0
            i += 1
    return total, i


#: display width (in :func:`tex_width` units) of one equation line: 17 cm of text less the number
LINE = 62.0


def _pack(lhs: str, terms: list[list[str]]) -> list[str]:
    """Lines of the right-hand side: whole terms while they fit, long terms broken between their
    pieces (guards, value) with a leading ·."""
    cap = LINE - tex_width(lhs) - 3
    lines, cur = [], ""
    for parts in terms:
        whole = " ".join(parts)
        if cur and tex_width(cur + " " + whole) <= cap and not whole.startswith("= "):
            cur += " " + whole
            continue
        if cur:
            lines.append(cur)
            cur = ""
        if tex_width(whole) <= cap:
            cur = whole
            continue
        for j, p in enumerate(parts):
            if not cur:
                cur = p if j == 0 else r"\cdot " + p
            elif tex_width(cur + " " + p) <= cap:
                cur += " " + p
            else:
                lines.append(cur)
                cur = r"\cdot " + p
    lines.append(cur)
    return lines


def rhs_terms(expr, printer: DerivationPrinter) -> list[list[str]]:
    """``expr`` as terms (sign included), each a list of line-breakable pieces."""
    expr = _mathematical_names(expr)
    terms = printer.ordered_terms(expr) if isinstance(expr, sp.Add) else [expr]
    out = []
    for k, t in enumerate(terms):
        sign = ""
        if _neg(t):
            sign, t = "- ", -t
        elif k:
            sign = "+ "
        parts = printer.term_parts(t)
        parts[0] = sign + parts[0]
        if k < len(terms) - 1:
            parts[-1] = close_trailing_cases(parts[-1])
        out.append(parts)
    return out


@dataclass
class Row:
    """One equation of a display: ``lhs = rhs`` (rhs given as terms of pieces)."""
    lhs: str
    terms: list
    label: str | None = None


def row(lhs: str, expr, printer: DerivationPrinter, label: str | None = None, then=None) -> Row:
    """``lhs = expr``, and ``= then`` (the same value in another form) on the next line."""
    terms = rhs_terms(expr, printer)
    if then is not None:
        t = rhs_terms(then, printer)
        t[0][0] = "= " + t[0][0]
        terms += [[" ".join(x for p in t for x in p)]]
    return Row(lhs, terms, label)


def display(rows: list[Row]) -> str:
    """Rows as one display: ``equation`` when it is a single short line, else ``align`` (aligned
    at =, long right-hand sides continued on indented lines). Only labelled rows are numbered."""
    if not rows:
        return ""
    packed = [(r, _pack(r.lhs, r.terms)) for r in rows]
    if len(rows) == 1 and len(packed[0][1]) == 1:
        r, (line,) = packed[0]
        lab = f"\\label{{{r.label}}}" if r.label else "\\notag"
        return "\\begin{equation}\n" + r.lhs + " = " + line + lab + "\n\\end{equation}\n"
    body = []
    for r, lines in packed:
        lab = f"\\label{{{r.label}}}" if r.label else "\\notag"
        if r.lhs == "":                  # a "where" line under the previous row: the temporaries
            body.append(r"&\qquad \text{where } " + (r" \notag\\" + "\n" + r"&\qquad ").join(lines) + lab)
            continue
        text = r.lhs + " &= " + lines[0]
        for ln in lines[1:]:
            text += " \\notag\\\\\n" + ("&" + ln if ln.startswith("= ") else r"&\quad " + ln)
        body.append(text + lab)
    return "\\begin{align}\n" + " \\\\\n".join(body) + "\n\\end{align}\n"
