"""Window kernel family (conv, pooling): affine gathers lowered to im2col/col2im + GEMM.

Each term of a derived window kernel is recognized by its index structure, using the
:class:`~symprop.derive.affine.AxisMap` objects the spec declares:

- ``im2col_gemm``   out[n,o,h,w] += Σ_{c,i,j} A[o,c,i,j]·X[n,c,⟨h,i⟩,⟨w,j⟩]   (conv forward/JVP)
- ``im2col_wgrad``  out[o,c,i,j] += Σ_{n,h,w} G[n,o,h,w]·X[n,c,⟨h,i⟩,⟨w,j⟩]   (weight VJP)
- ``col2im_gemm``   out[n,c,u,v] += Σ_{o,i,j} [cond]·A[o,c,i,j]·G[n,o,⟨u,i⟩⁻¹,⟨v,j⟩⁻¹]  (input VJP)
- ``gather``        out[n,c,h,w] += α Σ_{i,j} (M)·X[n,c,⟨h,i⟩,⟨w,j⟩]          (pooling)
- ``scatter``       out[n,c,u,v] += α Σ_{i,j} [cond]·(M)·G[n,c,⟨u,i⟩⁻¹,⟨v,j⟩⁻¹]  (pooling VJP)
- ``loop``          broadcasts and reductions (bias terms), as in the contraction family.

``⟨h,i⟩ = h·s + i·d − p`` is the forward read; ``⟨u,i⟩⁻¹`` its adjoint with the guard that
:func:`~symprop.derive.affine.adjoint_delta` derived. A guarded adjoint gather is lowered as
the scatter of the forward map (col2im), which visits only valid (h, i) pairs; an adjoint
read *without* its guard is refused, since that is SymPy's silently wrong ``doit`` result.
A mask ``M`` declared in ``spec.selects`` is a one-hot argmax stored as an int16 offset
``i·K_w + j`` per output (the forward kernel computes it; -1 for an empty window; windows
of more than 32767 cells are refused). int16, not int64: the CIFAR CNN's masks at batch 256
take 6 MiB instead of 24 of grad + HVP's working memory.
"""
from __future__ import annotations

import sympy as sp

from ..derive.indexed import ContractionKernel, ContractionSpec, DerivedContraction
from .config import DTYPES
from .contraction import (LoweringError, Term, _loop_op, argument_layout, def_arrays, fused_contexts, fused_parts,
                          indexed_manifest, name_squares, sqvjp_contexts)
from .manifest import indexed_binding, contraction_role
from .printer import print_expr
from .render import render


def _is_guard(e) -> bool:
    return isinstance(e, sp.Piecewise) and len(e.args) == 2 and e.args[1] == (0, True)


def window_terms(expr: sp.Expr, allowed: set) -> list[dict]:
    """``Σ [cond]·coeff·Π factors`` terms; coefficients may use extents and geometry scalars."""
    out = []
    for t in sp.Add.make_args(expr):
        sums = []
        inner = [f for f in sp.Mul.make_args(t) if isinstance(f, sp.Sum)]
        if len(inner) == 1:      # c·Σ body -> Σ c·body
            sums = [lim[0] for lim in inner[0].limits]
            t = sp.Mul(*[f for f in sp.Mul.make_args(t) if f is not inner[0]]) * inner[0].function
        elif inner:
            raise LoweringError(f"term {t} is a product of sums; flatten it first")
        cond, parts = None, []
        for f in sp.Mul.make_args(t):
            if _is_guard(f):
                cond = f.args[0].cond
                parts += list(sp.Mul.make_args(f.args[0].expr))
            else:
                parts.append(f)
        factors = [f for f in parts if isinstance(f, sp.Indexed)]
        coeff = sp.Mul(*[f for f in parts if not isinstance(f, sp.Indexed)])
        if coeff.has(sp.Indexed, sp.Piecewise) or not coeff.free_symbols <= allowed:
            raise LoweringError(f"term {t} has a coefficient {coeff} that is not a constant")
        out.append({"coeff": coeff, "factors": factors, "sums": sums, "cond": cond})
    return out


def _roles(spec: ContractionSpec, f: sp.Indexed) -> list:
    """Per index: ('plain', symbol) | ('fwd', map) | ('adj', map)."""
    roles = []
    for e in f.indices:
        if isinstance(e, sp.Symbol):
            roles.append(("plain", e))
            continue
        for m in spec.maps:
            if m.is_forward(e):
                roles.append(("fwd", m))
                break
            if m.is_adjoint(e):
                roles.append(("adj", m))
                break
        else:
            raise LoweringError(f"{spec.name}: index {e} of {f} is neither a window read nor its adjoint")
    return roles


def _spatial(spec, roles, kind) -> bool:
    """The last two indices read the two declared axes, in order, the ``kind`` way."""
    return list(roles[-2:]) == [(kind, m) for m in spec.maps]


def _plain(roles) -> tuple:
    return tuple(r[1] for r in roles) if all(r[0] == "plain" for r in roles) else None


def lower_term(spec: ContractionSpec, k: ContractionKernel, t: dict) -> dict:
    """One term as an op: a broadcast/reduction loop, one of the im2col/col2im GEMM or pooling
    patterns of a two-axis window, or else (a depthwise or 1-D window, any number of axes) the
    generic guarded loop nest of :func:`_affine_op`."""
    facs = t["factors"]
    roles = {f: _roles(spec, f) for f in facs}
    name = f"{k.name}: term {t['coeff']}·{'·'.join(map(str, facs))} summed over {t['sums']}"
    has_adj = any(r[0] == "adj" for f in facs for r in roles[f])
    if has_adj and t["cond"] is None:
        raise LoweringError(f"{name}: adjoint window read without its integrality/range guard")
    masks = [f for f in facs if str(f.base) in spec.selects]
    data = [f for f in facs if f not in masks]
    if len(data) == 1 and all(isinstance(e, sp.Symbol) for e in data[0].indices) and not masks:
        op = _loop_op(k, Term(t["coeff"], data, t["sums"]))
        if op is not None:
            return op
    if len(spec.maps) == 2:
        try:
            return _pattern_op(spec, k, t, roles, name)
        except LoweringError:
            if masks:
                raise
    return _affine_op(spec, k, t, roles, name)


def _conditions(cond) -> frozenset | None:
    """A guard as a set of normalised conditions (``a ≥ b`` and ``b ≤ a`` both as ``a − b ≥ 0``;
    the derivation distributes the divisions its own way)."""
    if cond is None:
        return None
    out = set()
    for c in sp.And.make_args(cond):
        if isinstance(c, (sp.GreaterThan, sp.LessThan, sp.StrictGreaterThan, sp.StrictLessThan)):
            strict = isinstance(c, (sp.StrictGreaterThan, sp.StrictLessThan))
            diff = c.lhs - c.rhs if isinstance(c, (sp.GreaterThan, sp.StrictGreaterThan)) else c.rhs - c.lhs
            out.add((">" if strict else ">=", sp.expand(diff)))
        elif isinstance(c, sp.Eq):
            out.add(("==", sp.expand(c.lhs - c.rhs)))
        else:
            out.add(("?", c))
    return frozenset(out)


def _affine_op(spec: ContractionSpec, k: ContractionKernel, t: dict, roles: dict, name: str) -> dict:
    """Any product of arrays read plainly, through a window (``h·s + i·d − p``, zero outside the
    input) or through its adjoint (``(u + p − i·d)/s`` under the derived guard), as one loop nest
    (:func:`_affine_code`: in scatter form where it has one, else a guarded gather). Serves what
    the im2col GEMM and pooling patterns do not (depthwise and 1-D or 3-D windows); the guard is
    checked to be exactly the adjoint rule's, never printed."""
    facs = t["factors"]
    if any(str(f.base) in spec.selects for f in facs):
        raise LoweringError(f"{name}: an argmax mask read outside max pooling's own pattern")
    adj = list(dict.fromkeys(r[1] for f in facs for r in roles[f] if r[0] == "adj"))
    want = sp.And(*[m.adjoint_guard() for m in adj]) if adj else None
    if t["cond"] is not None and _conditions(t["cond"]) != _conditions(want):
        raise LoweringError(f"{name}: its guard {t['cond']} is not the adjoint guard of its window reads")
    for m in spec.maps:
        for q in (m.stride, m.dilation, m.padding):
            if not (isinstance(q, sp.Integer) or q in spec.scalars):
                raise LoweringError(f"{name}: the window's stride, dilation and padding must each be an integer "
                                    f"or one of the spec's scalars {list(spec.scalars)}, got {q}")
    out = list(k.out_indices)
    order = out + [s for s in t["sums"] if s not in out]
    reads = [(str(f.base), roles[f]) for f in facs]
    needed = set()
    for _, idx in reads:
        for kind, r in idx:
            needed |= {r} if kind == "plain" else ({r.out, r.kernel} if kind == "fwd" else {r.inp, r.kernel})
    missing = sorted(map(str, needed - set(order)))
    if missing:
        raise LoweringError(f"{name}: index(es) {missing} are neither output indices nor summed")
    return {"kind": "affine", "alpha": t["coeff"], "order": order, "reads": reads, "sums": list(t["sums"]),
            "out_idx": out,
            "n": str(out[0]) if out[0] == spec.out_indices[0] else None,
            "arrays": list(dict.fromkeys(str(f.base) for f in facs))}


def _pattern_op(spec: ContractionSpec, k: ContractionKernel, t: dict, roles: dict, name: str) -> dict:
    """The two-axis window patterns: im2col/col2im GEMMs, pooling gathers and scatters."""
    out = tuple(k.out_indices)
    m0, m1 = spec.maps
    facs = t["factors"]
    masks = [f for f in facs if str(f.base) in spec.selects]
    data = [f for f in facs if f not in masks]
    sums = set(t["sums"])
    base = {"alpha": t["coeff"]}
    if len(data) == 2 and not masks:
        A, X = data
        if not _plain(roles[A]):
            A, X = X, A
        pa, rx = _plain(roles[A]), roles[X]
        if pa is None or len(pa) != 4 or len(rx) != 4:
            raise LoweringError(f"{name}: expected a 4-index array times a windowed 4-index array")
        n, c = rx[0][1], rx[1][1]
        if _spatial(spec, rx, "fwd") and sums == {c, m0.kernel, m1.kernel} and \
                pa == (out[1], c, m0.kernel, m1.kernel) and out == (n, out[1], m0.out, m1.out):
            return {**base, "kind": "im2col_gemm", "A": str(A.base), "X": str(X.base), "n": str(n),
                    "o": str(out[1]), "c": str(c), "arrays": [str(A.base), str(X.base)]}
        if _spatial(spec, rx, "fwd") and sums == {n, m0.out, m1.out} and \
                pa == (n, out[0], m0.out, m1.out) and out == (out[0], c, m0.kernel, m1.kernel):
            return {**base, "kind": "im2col_wgrad", "G": str(A.base), "X": str(X.base), "n": str(n),
                    "o": str(out[0]), "c": str(c), "arrays": [str(A.base), str(X.base)]}
        if _spatial(spec, rx, "adj") and sums == {c, m0.kernel, m1.kernel} and \
                pa == (c, out[1], m0.kernel, m1.kernel) and out == (n, out[1], m0.inp, m1.inp):
            return {**base, "kind": "col2im_gemm", "A": str(A.base), "G": str(X.base), "n": str(n),
                    "o": str(c), "c": str(out[1]), "arrays": [str(A.base), str(X.base)]}
        raise LoweringError(f"{name}: index structure matches no im2col/col2im GEMM")
    if len(data) == 1 and len(masks) <= 1:
        (X,) = data
        rx = roles[X]
        mask = str(masks[0].base) if masks else None
        if masks:
            rm = roles[masks[0]]
            # the mask is indexed by the output position of the same window: (n, c, h, w, i, j)
            ok = [r[1] for r in rm[:2]] == [r[1] for r in rx[:2]] and \
                [r[1] for r in rm[-2:]] == [m0.kernel, m1.kernel]
            if not ok:
                raise LoweringError(f"{name}: mask {masks[0]} is not indexed by the window of {X}")
        if sums != {m0.kernel, m1.kernel} or [r[0] for r in rx[:2]] != ["plain", "plain"]:
            raise LoweringError(f"{name}: a pooling term must sum over the kernel offsets only")
        if _spatial(spec, rx, "fwd") and out == (rx[0][1], rx[1][1], m0.out, m1.out):
            kind = "argmax" if (mask and k.name.endswith("_forward")) else "gather"
            return {**base, "kind": kind, "X": str(X.base), "mask": mask, "n": str(rx[0][1]),
                    "c": str(rx[1][1]), "arrays": [str(X.base)]}
        if _spatial(spec, rx, "adj") and out == (rx[0][1], rx[1][1], m0.inp, m1.inp):
            return {**base, "kind": "scatter", "G": str(X.base), "mask": mask, "n": str(rx[0][1]),
                    "c": str(rx[1][1]), "arrays": [str(X.base)]}
    raise LoweringError(f"{name}: no window lowering for this term")


GEMM_KINDS = ("im2col_gemm", "im2col_wgrad", "col2im_gemm")

#: weight gradients sum per-sample GEMMs into one slab per chunk of consecutive samples, then
#: the slabs in chunk order: at most WGRAD_CHUNKS chunks (so at most that many threads share a
#: weight-gradient sweep), more than two only while each chunk keeps WGRAD_CHUNK_WORK output
#: positions (samples x H x W). The count depends on the shapes only, so a result is bitwise
#: the same on any thread count.
WGRAD_CHUNKS = 16
WGRAD_CHUNK_WORK = 2048
#: a weight pullback of at least this many output channels over at least this many taps (C·K_h·K_w)
#: stays im2col + GEMM under the direct lowering: there one GEMM per sample is large enough for
#: OpenBLAS to beat the direct kernel (1.1-1.2x on the CIFAR CNN's conv2, 64 channels x 288 taps,
#: AMD EPYC Zen 3); runtime.conv_lowering.takes_direct reads the same numbers
DIRECT_WGRAD_GEMM = (64, 256)


def lower_kernel(d: DerivedContraction, k: ContractionKernel) -> dict:
    """One derived kernel lowered to ops (each writing ``op["out"]``), with its arguments."""
    spec = d.spec
    k, squares = name_squares(k)
    allowed = set(spec.extents.values()) | set(spec.scalars)
    ops = [lower_term(spec, k, t) for t in window_terms(k.expr, allowed)]
    argmax = any(op["kind"] == "argmax" for op in ops)
    if argmax and (len(ops) != 1 or ops[0]["alpha"] != 1):
        raise LoweringError(f"{k.name}: an argmax (max-pool) forward must be the kernel's only term")
    arrays, optional, shapes = argument_layout(spec, k, ops)
    masks = sorted({op["mask"] for op in ops if op.get("mask")})
    for mk in masks:   # stored compressed: the argmax offset per output position
        shapes[mk] = [str(i) for i in spec.constants[mk][:4]]
    for op in ops:
        op["out"] = k.out
    return {"name": k.name, "role": k.role, "arrays": arrays, "def_arrays": def_arrays(arrays, squares),
            "squares": sorted(squares.items()), "out": k.out, "outs": [k.out], "shapes": shapes, "ops": ops,
            "optional": optional, "masks_in": [mk for mk in masks if not argmax],
            "masks_out": [mk for mk in masks if argmax], "calls_blas": any(op["kind"] in GEMM_KINDS for op in ops),
            "extents": [], "zero": [],
            "doc": f"{k.out}[{', '.join(map(str, k.out_indices))}] = {k.expr}"}


def fuse_window(spec: ContractionSpec, ctxs: list[dict], name: str, role: str, parts: list[str]) -> dict:
    """A fused window kernel (``codegen/fusion.py``): the parts' ops in one kernel; a mask the
    forward part produces is read by the later parts from the same call."""
    by_role = {c["role"]: c for c in ctxs}
    ctx = fused_parts(spec, [by_role[r] for r in parts], name, role, parts)
    made = [mk for r in parts for mk in by_role[r]["masks_out"]]
    ctx["masks_out"] = made
    ctx["masks_in"] = sorted({mk for r in parts for mk in by_role[r]["masks_in"]} - set(made))
    return ctx


def _sweep(ctx: dict, gemm: list[dict]) -> dict:
    """All GEMM terms of a kernel in one loop over samples: each distinct windowed source is
    im2col'd once per sample and every term reading it runs on those columns (the forward and
    its pushforward share x's columns; the weight pullback and its R-op share x's and Rx's);
    input pullbacks sum their GEMMs into one column buffer and col2im it into their output.
    Each term keeps its guard (an absent direction skips only the terms that read it)."""
    n, o, c = (gemm[0][key] for key in ("n", "o", "c"))
    if any((op["n"], op["o"], op["c"]) != (n, o, c) for op in gemm):
        raise LoweringError(f"{ctx['name']}: window GEMM terms over different index triples")
    produced = set(ctx["outs"]) | set(ctx.get("masks_out", []))
    if any({op.get("A"), op.get("G"), op.get("X")} & produced for op in gemm):
        raise LoweringError(f"{ctx['name']}: a GEMM term reads an output of the same kernel")
    sources = list(dict.fromkeys(op["X"] for op in gemm if op["kind"] != "col2im_gemm"))
    wouts = list(dict.fromkeys(op["out"] for op in gemm if op["kind"] == "im2col_wgrad"))
    steps = []
    for slot, X in enumerate(sources):
        steps.append({"kind": "im2col", "X": X, "slot": slot, "guard": [X] if X in ctx["optional"] else []})
        for op in gemm:
            if op["kind"] != "col2im_gemm" and op["X"] == X:
                step = {"kind": "fwd" if op["kind"] == "im2col_gemm" else "wgrad", "slot": slot, "out": op["out"],
                        "alpha_c": op["alpha_c"], "guard": op["guard"], "A": op.get("A"), "G": op.get("G")}
                if step["kind"] == "wgrad":
                    step["acc"] = wouts.index(op["out"])
                steps.append(step)
    slot = len(sources)
    for out in dict.fromkeys(op["out"] for op in gemm if op["kind"] == "col2im_gemm"):
        steps.append({"kind": "col2im", "out": out, "slot": slot, "guard": [],
                      "terms": [{"A": op["A"], "G": op["G"], "alpha_c": op["alpha_c"], "guard": op["guard"]}
                                for op in gemm if op["kind"] == "col2im_gemm" and op["out"] == out]})
    uses = 0
    for st in steps:
        for t in st.get("terms", [st]):
            t["use"] = uses
            uses += 1
    memset = list(dict.fromkeys(st["out"] for st in steps if st["kind"] in ("fwd", "col2im")))
    return {"n": n, "o": o, "c": c, "steps": steps, "memset": memset, "wouts": wouts, "uses": uses,
            "slots": len(sources) + (1 if any(st["kind"] == "col2im" for st in steps) else 0)}


def _flat(name: str, idx: list, dims: list) -> str:
    """``name[i, j, k]`` of a C-contiguous array as a flat index (the template's ``at`` macro)."""
    text = str(idx[0])
    for i, dim in zip(idx[1:], dims[1:]):
        text = f"({text}) * {dim}_ + {i}" if text.count(" ") else f"{text} * {dim}_ + {i}"
    return f"{name}[{text}]"


def _ident(v) -> str:
    return str(v) if str(v).isidentifier() else "_" + str(v).replace("'", "_b")


def _loop_nest(op: dict, loops: list, body: dict, acc_at: int | None, target: str, prod: str) -> dict:
    """Per C type the lines of an ``affine`` op's loop nest (4 spaces a level): ``loops`` are
    ``(variable, range arguments)`` outermost first, the first run in parallel (``prange``: its
    writes are disjoint); ``body[n]`` the lines after loop n's header (a line ending in ``:``
    opens a level); innermost ``target += alpha·prod``, through a register ``_acc`` opened after
    loop ``acc_at`` when the sum runs deeper than the output's indices (None: directly)."""
    lines, level, acc = [], 0, None
    for n, (var, args) in enumerate(loops):
        loop = f'prange({args}, num_threads=_T, schedule="static")' if n == 0 else f"range({args})"
        lines.append((level, f"for {var} in {loop}:"))
        level += 1
        for line in body.get(n, ()):
            lines.append((level, line))
            if line.endswith(":"):
                level += 1
        if n == acc_at:
            acc = level
            lines.append((level, "_acc = 0"))
    if acc is None:
        lines.append((level, f"{target} += {{alpha}} * {prod}"))
    else:
        lines += [(level, f"_acc = _acc + {prod}"), (acc, f"{target} += {{alpha}} * _acc")]
    return {ct: ["    " * lv + text.replace("{alpha}", op["alpha_c"][ct]) for lv, text in lines] for ct, _, _ in DTYPES}


def _scatter_code(spec: ContractionSpec, op: dict, shapes: dict, extents: list) -> tuple[dict, list] | None:
    """The loop nest of an ``affine`` op in scatter form, or None when it has none (its output's
    first index is read through an adjoint). An adjoint read ``g[(u + p − i·d)/s]`` under its
    guard, summed into ``out[u]``, is the forward map read backwards: loop over the output
    position ``h`` instead of ``u`` and write ``out[h·s + i·d − p]`` (col2im's form: no
    divisibility test, and the guard is exactly the range of ``h``). Loops: the output's first
    index (in parallel: disjoint writes), the other plain indices, the kernel offsets, then the
    window positions, each over the range whose reads land inside (``_valid_range``), so the
    innermost loop runs along a row without tests; a sum the output does not depend on is
    accumulated in a register."""
    order, reads, out, out_idx = op["order"], op["reads"], op["out"], op["out_idx"]
    adj = {r.inp: r for _, roles in reads for kind, r in roles if kind == "adj"}
    if out_idx[0] in adj or any(m.out in order for m in adj.values()):
        return None

    def position(kind, r):
        if kind == "plain":
            return ("fwd", adj[r]) if r in adj else ("var", r)
        return ("fwd", r) if kind == "fwd" else ("var", r.out)
    out_pos = [position("plain", v) for v in out_idx]
    read_pos = [(arr, [position(kind, r) for kind, r in roles]) for arr, roles in reads]
    loops = list(dict.fromkeys(adj[v].out if v in adj else v for v in order))
    fwd = list(dict.fromkeys(r for _, pos in [(out, out_pos)] + read_pos for kind, r in pos if kind == "fwd"))
    outs_, kernels = {m.out for m in fwd}, {m.kernel for m in fwd}
    first = loops[0]
    order2 = [first] + [v for v in loops[1:] if v not in outs_ and v not in kernels]
    order2 += [m.kernel for m in fwd if m.kernel in loops and m.kernel not in order2]
    order2 += [m.out for m in fwd if m.out in loops and m.out not in order2]
    order2 = list(dict.fromkeys(order2))
    if set(order2) != set(loops):
        return None
    depth = {v: n for n, v in enumerate(order2)}
    size_of = {}
    for arr, pos in [(out, out_pos)] + read_pos:
        for p_, (kind, r) in enumerate(pos):
            if kind == "fwd":
                size_of.setdefault(r, shapes[arr][p_])

    def extent(v):
        for arr, pos in [(out, out_pos)] + read_pos:
            for p_, (kind, r) in enumerate(pos):
                if kind == "var" and r == v and str(v) not in extents:
                    return f"{shapes[arr][p_]}_"
        same = _same_extent(spec, v, extents)
        if same is None:
            raise LoweringError(f"{op['name']}: the extent of the index {v} is not determined by any argument")
        return f"{same}_"
    temps, before, inside, bounds = {}, {}, {}, {}
    for k, m in enumerate(fwd):
        t = temps[m] = f"_t{k}"
        off = f"{_ident(m.kernel)} * {m.dilation} - {m.padding}"
        size = f"{size_of[m]}_"
        if depth[m.kernel] < depth[m.out] and m.out not in bounds:   # the h whose h·s + off lands in [0, size)
            lo, hi = f"_lo{k}", f"_hi{k}"
            bounds[m.out] = (lo, hi)
            before.setdefault(depth[m.kernel], []).extend([
                f"{lo} = 0 if {off} >= 0 else ({m.stride} - 1 - ({off})) // {m.stride}",
                f"{hi} = 0 if {size} - 1 - ({off}) < 0 else ({size} - 1 - ({off})) // {m.stride} + 1",
                f"{hi} = {extent(m.out)} if {hi} > {extent(m.out)} else {hi}"])
            inside.setdefault(depth[m.out], []).append(f"{t} = {_ident(m.out)} * {m.stride} + {off}")
        else:   # a test after both loops (a second window on the same position loop, or the offset inside)
            inside.setdefault(max(depth[m.kernel], depth[m.out]), []).extend([
                f"{t} = {_ident(m.out)} * {m.stride} + {off}", f"if 0 <= {t} < {size}:"])

    def index(pos):
        return [temps[r] if kind == "fwd" else _ident(r) for kind, r in pos]
    prod = " * ".join(_flat(arr, index(pos), shapes[arr]) for arr, pos in read_pos)
    target = _flat(out, index(out_pos), shapes[out])
    needs = [v for kind, r in out_pos for v in ((r,) if kind == "var" else (r.out, r.kernel))]
    d_out = max(depth[v] for v in needs)
    loops = [(_ident(v), f"{bounds[v][0]}, {bounds[v][1]}" if v in bounds and n > 0 else extent(v))
             for n, v in enumerate(order2)]
    body = {n: inside.get(n, []) + before.get(n, []) for n in range(len(order2))}
    code = _loop_nest(op, loops, body, d_out if d_out < len(order2) - 1 else None, target, prod)
    extra = [_ident(v) for v in order2 if str(v) not in extents] + list(temps.values())
    extra += [x for lo_hi in bounds.values() for x in lo_hi]
    return code, extra


def _affine_code(spec: ContractionSpec, op: dict, shapes: dict, extents: list, taken: set) -> tuple[dict, list]:
    """The loop nest of an ``affine`` op, per C type a list of lines (4 spaces a level), and the
    variables it declares beyond the kernel's extents (loops over renamed indices, read offsets):
    the scatter form (:func:`_scatter_code`) where there is one, else a guarded gather."""
    order, reads, out = op["order"], op["reads"], op["out"]
    ident = {v: _ident(v) for v in order}
    ident.update({m.out: _ident(m.out) for _, roles in reads for kind, m in roles if kind == "adj"})
    clash = sorted(x for x in ident.values() if x in taken)
    if clash:
        raise LoweringError(f"{op['name']}: index name(s) {clash} clash with the spec's array or scalar names")
    scatter = _scatter_code(spec, op, shapes, extents)
    if scatter is not None:
        return scatter

    def extent(v):
        if str(v) in extents:
            return f"{v}_"
        for arr, roles in reads:
            for pos, (kind, r) in enumerate(roles):
                if kind == "plain" and r == v:
                    return f"{shapes[arr][pos]}_"
        same = _same_extent(spec, v, extents)
        if same is None:
            raise LoweringError(f"{op['name']}: the extent of the index {v} is not determined by any argument")
        return f"{same}_"
    depth = {v: n for n, v in enumerate(order)}
    temps, texts, at_depth = {}, [], {}
    for arr, roles in reads:
        idx = []
        for pos, (kind, r) in enumerate(roles):
            if kind == "plain":
                idx.append(ident[r])
                continue
            key = (kind, r)
            if key not in temps:
                t = temps[key] = f"_t{len(temps)}"
                dim = shapes[arr][pos]
                if kind == "fwd":
                    code = [f"{t} = {ident[r.out]} * {r.stride} + {ident[r.kernel]} * {r.dilation} - {r.padding}",
                            f"if 0 <= {t} < {dim}_:"]
                    deps = (r.out, r.kernel)
                else:
                    code = [f"{t} = {ident[r.inp]} + {r.padding} - {ident[r.kernel]} * {r.dilation}"]
                    if r.stride != 1:
                        code += [f"if {t} % {r.stride} == 0:", f"{t} = {t} // {r.stride}"]
                    code.append(f"if 0 <= {t} < {dim}_:")
                    deps = (r.inp, r.kernel)
                at_depth.setdefault(max(1, max(depth[v] for v in deps)), []).append(code)
            idx.append(temps[key])
        texts.append(_flat(arr, idx, shapes[arr]))
    prod = " * ".join(texts)
    target = _flat(out, [ident[v] for v in op["out_idx"]], shapes[out])
    loops = [(ident[v], extent(v)) for v in order]
    body = {n: [line for code in at_depth.get(n, ()) for line in code] for n in range(len(order))}
    code = _loop_nest(op, loops, body, len(op["out_idx"]) - 1 if op["sums"] else None, target, prod)
    extra = [ident[v] for v in order if str(v) not in extents] + list(temps.values())
    return code, extra


def _same_extent(spec: ContractionSpec, v, extents: list) -> str | None:
    """The kernel's extent variable's index for ``v``: ``v`` itself when an argument has it, else
    an index of the same extent that one has (three kernel offsets all of size K, where the
    scalar K fixes one of them), else None."""
    if str(v) in extents:
        return str(v)
    ext = spec.extents.get(v)
    return next((ix for ix in extents if ext is not None and spec.extents.get(sp.Symbol(ix, integer=True)) == ext),
                None)


def _affine_parallel(ops: list) -> str | None:
    """The index whose extent sizes the thread team of a kernel with no batch-parallel op: the
    first index of its first ``affine`` op's output (a parameter's pullback, in parallel over
    its first index), or None (serial)."""
    first = next((op for op in ops if op["kind"] == "affine"), None)
    return None if first is None else str(first["out_idx"][0])


def layout(d: DerivedContraction, ctx: dict) -> dict:
    """Everything the template needs beyond the ops: guards, the sample sweep, column and
    weight-accumulator buffers, geometry, zeroing, threads."""
    spec = d.spec
    ops = ctx["ops"]
    windowed = any(op["kind"] != "loop" for op in ops)
    # extent of index i is the C variable ``i_``; geometry scalars keep their names
    names = {str(ext): f"{ix}_" for ix, ext in spec.extents.items()}
    scalar_names = [str(s) for s in spec.scalars] if windowed else []
    scalar_extents = {str(ext): str(ix) for ix, ext in spec.extents.items() if str(ext) in scalar_names}
    optional, shapes = ctx["optional"], ctx["shapes"]
    for op in ops:
        op["alpha_c"] = {ct: print_expr(op["alpha"], ct, names) for ct, _, _ in DTYPES}
        op["guard"] = [a for a in op["arrays"] if a in optional]
        op["zero_sample"] = False
    gemm = [op for op in ops if op["kind"] in GEMM_KINDS]
    rest = sorted((op for op in ops if op["kind"] not in GEMM_KINDS), key=lambda op: op["kind"] == "loop")
    sweep = _sweep(ctx, gemm) if gemm else None
    masks = ctx["masks_in"] + ctx["masks_out"]
    outs = ctx["outs"]
    extents = list(dict.fromkeys(i for a in ctx["arrays"] + outs + masks for i in shapes[a]))
    extents += [ix for ix in scalar_extents.values() if ix not in extents]
    geometry = []
    for m in spec.maps if windowed else ():
        named = {}
        for ix in (m.out, m.inp, m.kernel):
            named[ix] = _same_extent(spec, ix, extents)
            if named[ix] is None:
                raise LoweringError(f"{ctx['name']}: the extent of {ix} is not determined by any argument")
        geometry.append({
            "out": f"{named[m.out]}_", "inp": f"{named[m.inp]}_", "k": f"{named[m.kernel]}_",
            "s": str(m.stride), "d": str(m.dilation), "p": str(m.padding),
            "formula": f"{m.out_extent} = ({m.in_extent} + 2*{m.padding} - {m.dilation}*({m.kernel_extent} - 1)"
                       f" - 1) // {m.stride} + 1"})
    idx = {}
    if len(spec.maps) == 2:   # the two-axis patterns' names (columns, masks, pooling loops)
        m0, m1 = spec.maps
        idx = {"h": str(m0.out), "w": str(m1.out), "u": str(m0.inp), "v": str(m1.inp),
               "i": str(m0.kernel), "j": str(m1.kernel)}
    decl = []
    taken = set(ctx["arrays"]) | set(outs) | set(masks) | set(scalar_names)
    for op in ops:
        if op["kind"] == "affine":
            op["name"] = ctx["name"]
            op["code"], extra = _affine_code(spec, op, shapes, extents, taken)
            decl += [v for v in extra if v not in decl]
    cols = wacc = None
    if sweep:
        cols = (f"{sweep['c']}_ * {idx['i']}_ * {idx['j']}_", f"{idx['h']}_ * {idx['w']}_")
        if sweep["wouts"]:   # per-chunk partial weight gradients (transposed: C·K·K × O), summed after
            wacc = (cols[0], f"{sweep['o']}_", WGRAD_CHUNKS, WGRAD_CHUNK_WORK)
    samples = {op["n"] for op in ops if op["kind"] != "loop" and op["n"] is not None}
    if len(samples) > 1:
        raise LoweringError(f"{ctx['name']}: window terms loop over different sample indices {sorted(samples)}")
    for op in rest:   # a loop whose outer index is the output's first writes disjoint slices
        op["par"] = bool(samples) and op["kind"] == "loop" and op["order"][0] == shapes[op["out"]][0]
        # such a loop over the sweep's samples, adding to an output the sweep fills (a bias), runs
        # per sample right after the sweep's steps, while that sample's output is in cache
        op["epilogue"] = bool(sweep) and op["par"] and op["order"][0] == sweep["n"] \
            and op["out"] in sweep["memset"] and not set(op["arrays"]) & set(outs)
    # zero each output per sample in the sweep, per sample in its first sample loop (a mask
    # gather/scatter assigns instead), not at all when an argmax forward assigns every
    # element, else serially before anything runs
    first = {}
    for op in rest:
        first.setdefault(op["out"], op)
    zero = []
    for out in outs:
        if sweep and out in sweep["memset"]:
            continue
        f = first.get(out)
        if sweep and out in sweep["wouts"] or f is None:
            zero.append(out)
        elif f["kind"] == "argmax":
            continue
        elif f["kind"] in ("gather", "scatter") and shapes[out][0] == f["n"] and (not f["guard"] or f["mask"]):
            # per sample; a mask gather/scatter overwrites its planes and zeroes when its direction is absent
            f["zero_sample"] = True
        else:
            zero.append(out)
    minimum = {str(s): 1 if s.is_positive else 0 for s in spec.scalars}
    # gathers/scatters through an argmax mask (read, or made by the same kernel's forward part)
    moff = any(op.get("mask") for op in rest if op["kind"] in ("gather", "scatter"))
    return {**ctx, "ops": rest, "sweep": sweep, "moff": moff, "cols": cols, "wacc": wacc,
            "parallel": samples.pop() if samples else _affine_parallel(rest), "calls_blas": bool(gemm), "zero": zero,
            "sample_sizes": {o: " * ".join(f"{i}_" for i in shapes[o][1:]) for o in outs},
            "minimum": minimum, "extents": extents, "scalars": scalar_names, "scalar_extents": scalar_extents,
            "geometry": geometry, "idx": idx, "affine_decl": decl}


def kernel_context(d: DerivedContraction, k: ContractionKernel) -> dict:
    return layout(d, lower_kernel(d, k))


def window_role(ctx: dict, canonical: dict) -> dict:
    return {**contraction_role(ctx, canonical, ctx["masks_in"], ctx["masks_out"], ctx["scalars"]),
            "binding": window_binding(ctx)}


def window_binding(ctx: dict) -> dict:
    """:func:`indexed_binding` plus what a window kernel needs: argmax masks (int16, after
    the float arrays), the geometry scalars (integers with a minimum; some are extents, the
    rest follow the extents), the output-size rule per axis, the sample extent its threads
    split, and its work buffers (per-thread im2col columns, per-chunk weight-gradient slabs)."""
    b = indexed_binding(ctx)
    masks = ctx["masks_in"] + ctx["masks_out"]
    b["pointers"] += masks
    b["indices"].update({mk: list(ctx["shapes"][mk]) for mk in masks})
    b["masks"] = list(masks)
    b["scalars"] = {s: ctx["minimum"][s] for s in ctx["scalars"]}
    b["scalar_extents"] = dict(ctx["scalar_extents"])
    b["geometry_scalars"] = [s for s in ctx["scalars"] if s not in ctx["scalar_extents"]]
    b["geometry"] = [{"out": g["out"][:-1], "inp": g["inp"][:-1], "k": g["k"][:-1], "s": g["s"], "d": g["d"],
                      "p": g["p"], "formula": g["formula"]} for g in ctx["geometry"]]
    b["parallel"] = ctx["parallel"]
    b["mask_offsets"] = [ctx["idx"]["i"], ctx["idx"]["j"]] if ctx["masks_in"] else None
    sweep, idx = ctx["sweep"], ctx["idx"]
    b["cols"] = b["wacc"] = None
    if ctx["cols"]:     # the shapes the template's cols/wacc expressions name (layout)
        rows = [sweep["c"], idx["i"], idx["j"]]
        b["cols"] = {"slots": sweep["slots"], "rows": rows, "cols": [idx["h"], idx["w"]]}
        if ctx["wacc"]:
            b["wacc"] = {"count": len(sweep["wouts"]), "chunks": WGRAD_CHUNKS, "rows": rows, "cols": [sweep["o"]]}
    return b


def _libm(kernels: list) -> list:
    """The libm functions the kernels' coefficients call (``pow(K, -6)`` in a 3-axis pool's
    Becker-LeCun kernel), to cimport."""
    import re
    from .printer import MATH
    known = MATH | {f + "f" for f in MATH}
    found = set()
    for ctx in kernels:
        terms = list(ctx["ops"])
        for st in (ctx.get("sweep") or {}).get("steps", []):
            terms += st.get("terms", [st])
        for op in terms:
            for text in op.get("alpha_c", {}).values():
                found |= set(re.findall(r"\b(\w+)\(", text)) & known
    return sorted(found)


def render_window_module(module: str, derived: list[DerivedContraction]) -> str:
    lowered = [[lower_kernel(d, k) for k in d.kernels] for d in derived]
    # fused roles share im2col columns and argmax masks between their parts; loop nests share
    # nothing, so a spec with one gets none (a quarter less to compile, one call per part instead)
    fused = [[] if any(op["kind"] == "affine" for c in low for op in c["ops"]) else
             [layout(d, f) for f in fused_contexts(d, low, fuse_window)] for d, low in zip(derived, lowered)]
    contexts = [[layout(d, c) for c in low] for d, low in zip(derived, lowered)]
    kernels = [ctx for ctxs in contexts + fused for ctx in ctxs]
    sqs = [sqvjp_contexts(d, ctxs, [str(s) for s in d.spec.scalars]) for d, ctxs in zip(derived, contexts)]
    specs = [{"name": d.spec.name, "hash": d.spec.hash} for d in derived]
    return render("window.pyx.j2", module=module, specs=specs, kernels=kernels, dtypes=DTYPES, libm=_libm(kernels),
                  direct_wgrad_gemm=DIRECT_WGRAD_GEMM,
                  sqvjps=[f for fs in sqs for f in fs],
                  manifest=indexed_manifest("window", derived, contexts, window_role, sqs, fused),
                  doc="Window kernels (conv via im2col/col2im + GEMM, pooling): "
                  + ", ".join(s["name"] for s in specs) + ".")
