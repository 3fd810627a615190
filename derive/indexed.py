"""Indexed (Einstein-style) layer specs and their derived VJPs/JVPs.

A contraction layer is written the way a textbook writes it, e.g. the dense layer
``y[n,o] = Σ_i x[n,i]·W[o,i] + b[o]``. Its pullbacks come from differentiating
``L = Σ_{n,o} ḡ[n,o]·y[n,o]`` with respect to one array element; SymPy returns sums of
``KroneckerDelta`` under range guards, which :func:`resolve_deltas` collapses (a
delta over a summation variable substitutes that variable and removes the sum).
Affine window reads (convolution, pooling) resolve through the adjoint-map rule of
:mod:`symprop.derive.affine` (SymPy's own substitution drops the divisibility condition);
without a set of output indices to solve for they raise instead of going wrong.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import sympy as sp

from .affine import adjoint_delta

EPS = sp.Symbol("epsilon")


def R(name: str) -> str:
    """Name of the R-operator (direction) array of ``name``: x -> Rx."""
    return "R" + name


@dataclass(frozen=True)
class ContractionSpec:
    """``output[out_indices] = expr`` over named input and parameter arrays."""
    name: str
    output: str
    out_indices: tuple
    expr: sp.Expr
    inputs: dict          # array name -> canonical index tuple (data flowing through)
    params: dict          # array name -> canonical index tuple (trainable)
    extents: dict         # index symbol -> extent symbol
    doc: str = ""
    maps: tuple = ()      # AxisMap per affine window axis (conv/pool)
    constants: dict = field(default_factory=dict)  # arrays saved by forward, not differentiated
    selects: dict = field(default_factory=dict)    # mask name -> ("max", array): one-hot argmax
    scalars: tuple = ()   # integer geometry symbols passed to kernels (stride, padding, ...)

    @property
    def arrays(self) -> dict:
        """Differentiable arrays: inputs, then parameters."""
        return {**self.inputs, **self.params}

    @property
    def all_arrays(self) -> dict:
        return {**self.inputs, **self.params, **self.constants}

    @property
    def hash(self) -> str:
        text = "|".join([self.name, self.output, sp.srepr(tuple(self.out_indices)),
                         sp.srepr(tuple(sorted(self.extents.items(), key=str))),
                         sp.srepr(self.expr), repr(sorted(self.arrays.items(), key=str)),
                         repr(sorted(self.constants.items(), key=str)), repr(sorted(self.selects.items())),
                         sp.srepr(tuple(self.scalars))] + [sp.srepr(tuple(vars(m).values())) for m in self.maps])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def base(self, name: str) -> sp.IndexedBase:
        return sp.IndexedBase(name)


def linear_in_inputs(spec: ContractionSpec) -> bool:
    """Whether ``spec``'s output is linear in its input arrays (every input read scaled by t
    scales the output by t): its Taylor coefficients of order ≥ 1 are then the linear part
    applied to the input's (a convolution, a scale and shift), the offset only at order 0."""
    t = sp.Dummy("t")
    names = set(spec.inputs)
    scaled = spec.expr.replace(lambda e: isinstance(e, sp.Indexed) and str(e.base) in names, lambda e: t * e)
    branching = scaled.atoms(sp.Piecewise, sp.Min, sp.Max, sp.Abs, sp.sign, sp.Heaviside)
    if any(f.has(t) for f in branching):   # piecewise in the input: each piece's t'' = 0 says nothing
        return False
    return sp.simplify(sp.diff(scaled, t, 2)) == 0


#: names the contraction kernels use for their own arrays
RESERVED_ARRAYS = frozenset({"g", "H", "S", "w"})


def check_contraction(spec: ContractionSpec) -> None:
    """Refuse a spec whose arrays are read with indices other than declared (a read past the end
    of an array), reserved names, parameters indexed by the batch, or sums over ranges other than
    their index's extent — every error names the spec and the term."""
    from .elementwise import SpecError
    declared = spec.all_arrays
    out = spec.output
    names = list(declared) + [out]
    for nm in names:
        if nm in RESERVED_ARRAYS or nm.startswith("R") or nm.endswith("_sq") or \
                any(nm == p + q for p in ("g", "h", "s") for q in declared):
            raise SpecError(f"spec {spec.name!r}: the array name {nm!r} is reserved for the kernels' own arrays "
                            f"(g, H, S, w, R…, …_sq, g<array>, h<array>, s<param>); rename it")
    for idx in (spec.out_indices, *declared.values()):
        for i in idx:
            if i not in spec.extents:
                raise SpecError(f"spec {spec.name!r}: index {i} has no extent in extents={spec.extents}")
    batch = spec.out_indices[0]
    for p, idx in spec.params.items():
        if batch in idx:
            raise SpecError(f"spec {spec.name!r}: parameter {p}{list(idx)} is indexed by the batch index {batch}")
    for a in spec.expr.atoms(sp.Indexed):
        nm = str(a.base)
        if nm not in declared:
            raise SpecError(f"spec {spec.name!r}: {a} reads {nm!r}, which is not among its inputs or parameters "
                            f"{sorted(declared)}")
        want = declared[nm]
        if len(a.indices) != len(want):
            raise SpecError(f"spec {spec.name!r}: {a} has {len(a.indices)} indices, {nm} is declared with {len(want)}")
        for got, dim in zip(a.indices, want):
            if isinstance(got, sp.Symbol) and got in spec.extents and spec.extents[got] != spec.extents[dim]:
                raise SpecError(f"spec {spec.name!r}: {a} indexes axis {dim} of {nm} (extent {spec.extents[dim]}) "
                                f"with {got} (extent {spec.extents[got]}): a read past the end of {nm}")
    for s in spec.expr.atoms(sp.Sum):
        for v, lo, hi in s.limits:
            if v not in spec.extents or lo != 0 or sp.simplify(hi - (spec.extents[v] - 1)) != 0:
                raise SpecError(f"spec {spec.name!r}: the sum over {v} runs over [{lo}, {hi}], not over its extent "
                                f"[0, {spec.extents.get(v, '?')} - 1]")


def _strip_range_guards(expr: sp.Basic) -> sp.Basic:
    """``Piecewise((a, lo <= i <= hi), (0, True)) -> a``: indices we differentiate by are
    in range by construction."""
    def is_guard(e):
        return (isinstance(e, sp.Piecewise) and len(e.args) == 2 and e.args[1].expr == 0
                and e.args[1].cond == sp.true
                and all(s.is_integer for s in e.args[0].cond.free_symbols))
    return expr.replace(is_guard, lambda e: e.args[0].expr)


def _expand(e: sp.Basic) -> sp.Basic:
    """Distribute products over sums only (keep exp(a + b) and log(ab) intact)."""
    return sp.expand(e, power_exp=False, power_base=False, log=False)


def _flatten(term: sp.Basic, limits: list) -> sp.Basic:
    """a·Σ_j b  under Σ_i  ->  Σ_{i,j} a·b (bound names are distinct by construction)."""
    factors = sp.Mul.make_args(term)
    inner = [f for f in factors if isinstance(f, sp.Sum)]
    if not inner:
        return sp.Sum(term, *limits) if limits else term
    rest = sp.Mul(*[f for f in factors if not isinstance(f, sp.Sum)])
    body, lims = rest, list(limits)
    for s in inner:
        body, lims = body * s.function, lims + list(s.limits)
    return split_sums(sp.Sum(body, *lims))


def _split_piecewise(e: sp.Basic) -> sp.Basic:
    """``[c]·(a + b) -> [c]·a + [c]·b`` for guards ``Piecewise((·, c), (0, True))``."""
    def is_guard(p):
        return isinstance(p, sp.Piecewise) and len(p.args) == 2 and p.args[1] == (0, True)

    def split(p):
        (val, cond) = p.args[0]
        return sp.Add(*[sp.Piecewise((t, cond), (0, True)) for t in sp.Add.make_args(_expand(val))])
    return e.replace(is_guard, split)


def split_sums(expr: sp.Basic) -> sp.Basic:
    """Sums of products of indexed terms: Σ(a + b) -> Σa + Σb, nested sums flattened."""
    def split(e):
        body = _expand(_split_piecewise(_expand(e.function)))
        return sp.Add(*[_flatten(t, list(e.limits)) for t in sp.Add.make_args(body)])
    return _expand(expr.replace(lambda e: isinstance(e, sp.Sum), split))


def resolve_deltas(expr: sp.Basic, solve_for: set | None = None) -> sp.Basic:
    """Collapse ``Σ_k δ(k, j)·f(k) -> f(j)`` for summation variables k (dense index maps);
    affine deltas over an index in ``solve_for`` go through the adjoint-map rule."""
    expr = split_sums(_strip_range_guards(expr))

    def collapse(s: sp.Sum):
        body, limits = s.function, list(s.limits)
        changed = True
        while changed:
            changed = False
            for d in body.atoms(sp.KroneckerDelta):
                a, b = d.args
                for var, other in ((a, b), (b, a)):
                    lim = next((l for l in limits if l[0] == var), None)
                    if lim is not None and isinstance(var, sp.Symbol):
                        body = body.subs(d, 1).subs(var, other)
                        limits.remove(lim)
                        changed = True
                        break
                if changed:
                    break
        if solve_for and body.has(sp.KroneckerDelta):
            body, limits, conds = adjoint_delta(body, limits, solve_for)
            if conds:
                body = sp.Piecewise((body, sp.And(*conds)), (0, True))
        return sp.Sum(body, *limits) if limits else body

    out = _expand(expr.replace(lambda e: isinstance(e, sp.Sum), collapse))
    if out.has(sp.KroneckerDelta):
        raise NotImplementedError(
            f"cannot resolve {out.atoms(sp.KroneckerDelta)}: an affine index map needs "
            "the adjoint-map rule, not SymPy's delta substitution")
    return out


def _rename_bound(expr: sp.Basic, taken: set) -> sp.Basic:
    """Rename summation variables that clash with free indices (readability only)."""
    def fix(s):
        new_limits, body = [], s.function
        for lim in s.limits:
            v = lim[0]
            if v in taken:
                nv = sp.Symbol(str(v) + "'", integer=True)
                body = body.subs(v, nv)
                lim = (nv,) + tuple(lim[1:])
            new_limits.append(lim)
        return sp.Sum(body, *new_limits)
    return expr.replace(lambda e: isinstance(e, sp.Sum), fix)


def directional(expr: sp.Basic, names: list[str]) -> sp.Basic:
    """Directional derivative (R-operator) of ``expr`` w.r.t. the arrays ``names``."""
    def is_arr(e):
        return isinstance(e, sp.Indexed) and str(e.base) in names
    pert = expr.replace(is_arr, lambda e: e + EPS * sp.IndexedBase(R(str(e.base)))[e.indices])
    return split_sums(sp.diff(pert, EPS).subs(EPS, 0))


@dataclass
class ContractionKernel:
    """One kernel of a contraction layer: ``out[indices] = expr``."""
    name: str
    out: str
    out_indices: tuple
    expr: sp.Expr
    role: str = ""    # forward, vjp:<array>, jvp, rvjp:<array>, bl:<array>, sqvjp:<param>


@dataclass
class DerivedContraction:
    spec: ContractionSpec
    forward: ContractionKernel
    adjoint_maps: dict = field(default_factory=dict)  # wrt name -> AxisMaps its VJP inverts
    vjps: dict = field(default_factory=dict)     # wrt name -> kernel
    jvp: ContractionKernel | None = None
    rvjps: dict = field(default_factory=dict)    # wrt name -> kernel
    raw_vjps: dict = field(default_factory=dict)  # wrt name -> diff(Σ ḡ·y, X[idx]) before delta collapse
    bls: dict = field(default_factory=dict)      # wrt name -> Becker–LeCun kernel (squared Jacobian entries)
    sqvjps: dict = field(default_factory=dict)   # param -> SquaredPullback (how sqvjp:<param> is formed)
    #: why the Becker-LeCun roles (bl:) are absent, or None: they are optional, and a layer
    #: without them refuses only the Becker-LeCun diagonal
    no_curvature: str | None = None

    @property
    def kernels(self) -> list[ContractionKernel]:
        return [self.forward, *self.vjps.values(), self.jvp, *self.rvjps.values(), *self.bls.values()]


def derive_contraction(spec: ContractionSpec) -> DerivedContraction:
    """Derive the forward, pullbacks, pushforward and R-op pullbacks of ``spec``."""
    g = sp.IndexedBase("g")
    out_idx = spec.out_indices
    limits = [(i, 0, spec.extents[i] - 1) for i in out_idx]
    loss = sp.Sum(g[out_idx] * spec.expr, *limits)
    fresh_map = {}
    d = DerivedContraction(spec=spec, forward=ContractionKernel(
        f"{spec.name}_forward", spec.output, out_idx, split_sums(spec.expr), "forward"))
    for name, idx in spec.arrays.items():
        fresh = tuple(sp.Symbol(f"{i}_", integer=True) for i in idx)
        fresh_map[name] = fresh
        d.raw_vjps[name] = sp.diff(loss, sp.IndexedBase(name)[fresh])
        raw = resolve_deltas(d.raw_vjps[name], solve_for=set(out_idx))
        # back to the array's canonical index names
        raw = _rename_bound(raw, set(idx))
        expr = raw.xreplace(dict(zip(fresh, idx)))
        d.adjoint_maps[name] = tuple(m for m in spec.maps if m.inp in idx and expr.has(sp.Piecewise))
        d.vjps[name] = ContractionKernel(f"{spec.name}_vjp_{name}", "g" + name, idx, expr, f"vjp:{name}")
    differentiable = list(spec.arrays)
    d.jvp = ContractionKernel(f"{spec.name}_jvp", R(spec.output), out_idx,
                              directional(spec.expr, differentiable), "jvp")
    for name, k in d.vjps.items():
        d.rvjps[name] = ContractionKernel(f"{spec.name}_rvjp_{name}", R(k.out), k.out_indices,
                                          directional(k.expr, differentiable + ["g"]), f"rvjp:{name}")
    _curvature(d)
    return d


def _curvature(d: DerivedContraction):
    """Becker–LeCun and per-sample squared pullbacks, from the layer's own VJPs."""
    from .curvature import (SquaredPullback, check_single_terms, per_sample_squared, squared_jacobian,
                            squared_pullback_mode)
    from .curvature import CurvatureError
    spec = d.spec
    masks = tuple(spec.selects)
    try:   # Becker-LeCun needs every Jacobian entry as one term; absent (all arrays) otherwise
        for name, k in d.vjps.items():
            check_single_terms(k.expr, k.name)
            d.bls[name] = ContractionKernel(f"{spec.name}_bl_{name}", "h" + name, k.out_indices,
                                            squared_jacobian(k.expr, masks), f"bl:{name}")
    except CurvatureError as exc:
        d.bls, d.no_curvature = {}, str(exc)
    # the per-sample squared pullbacks square a whole per-sample pullback: always defined
    batch = spec.out_indices[0]
    kk, KK = sp.Symbol("k", integer=True), sp.Symbol("K", integer=True, positive=True)
    for name in spec.params:
        e = d.vjps[name].expr
        mode = squared_pullback_mode(e, batch) if d.bls else "per_sample"
        d.sqvjps[name] = SquaredPullback(name, mode, per_sample_squared(e, batch, (kk, KK)))
