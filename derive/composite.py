"""Composite specs: a layer written as a short sequence of stages over groups of elements.

A *group* is the set of elements that share a kept index: for BatchNorm the samples and
pixels of one channel, for Softmax the classes of one sample. Each stage defines one symbol:

- ``map``: an elementwise expression of earlier symbols (element-level if it reads any
  element-level symbol, else group-level, e.g. ``rstd = 1/sqrt(var + eps)``);
- ``sum`` / ``mean``: a reduction over the group of an element-level expression;
- ``max``: a shift (softmax's row maximum) that the output must be invariant to: its
  adjoint is derived and checked to vanish, so it is treated as a constant.

The chain rule runs stage by stage: the backward sweep visits the stages in reverse (the
adjoint of a group-level symbol read by an element-level stage is a group sum — broadcast
and sum are each other's adjoints), the forward-mode tangent sweep (JVP) in order, and the
R-op of the pullback differentiates the pullback along those tangents. Every intermediate is
kept *canonical*: written with the saved element variables (``xhat``, ``y``), the saved group
values and opaque group sums ``GroupSum(monomial)`` with group-level factors pulled out, and
reduced by the identities the reduction stages imply (``mean(x) = μ`` gives
``Σ x̂ = 0``; ``s = Σ e`` with ``e = s·y`` gives ``Σ y = 1``). That is how BatchNorm's derived
pullback becomes ``γ·rstd·(ḡ − mean ḡ − x̂·mean(ḡ x̂))`` without a hand-written rule.

Lowering (``codegen/composite.py``): every role is one kernel per group — one pass that
accumulates all group sums the role reads, then group outputs, then one elementwise pass.
The forward pass runs the stages in order, one pass per reduction (two-pass variance).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import sympy as sp

from .elementwise import SpecError

G, RG = sp.Symbol("g"), sp.Symbol("Rg")
#: number of elements in one group
M = sp.Symbol("M", positive=True, integer=True)
KINDS = ("map", "sum", "mean", "max")
#: Taylor roles a composite module carries: orders 1-2 (the forward Laplacian, second-order PDEs);
#: a sweep of order 3-4 compiles the spec's module with them on first use (runtime/taylor.py), as
#: their pullbacks are long (order 4 alone would quadruple the module's C)
TAYLOR_ORDER = 2


class GroupSum(sp.Function):
    """Σ over the elements of one group of an element-level expression (opaque to SymPy;
    linear, split by :meth:`DerivedComposite.canon`)."""
    nargs = 1


@dataclass(frozen=True)
class Stage:
    symbol: sp.Symbol
    kind: str
    expr: sp.Basic

    def __post_init__(self):
        if self.kind not in KINDS:
            raise SpecError(f"stage {self.symbol}: kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class CompositeSpec:
    """``stages`` define symbols in order, the last one is the output. ``params``: learnable
    group-level arrays (``parameters()`` order); ``constants``: group-level arrays that are
    read, not trained (running statistics); ``scalars``: ``((name, default), ...)``;
    ``saved``: the element- and group-level symbols the forward pass keeps and every other
    role is written in; ``stats``: group-level symbols the forward pass also returns."""
    name: str
    input: sp.Symbol
    stages: tuple
    saved: tuple
    params: tuple = ()
    constants: tuple = ()
    scalars: tuple = ()
    stats: tuple = ()
    doc: str = ""
    groups: str = ""     # prose: what one group is (for docs and LaTeX)

    def __post_init__(self):
        known = {self.input, *self.params, *self.constants, *(sp.Symbol(s) for s, _ in self.scalars)}
        for st in self.stages:
            extra = {s for s in st.expr.free_symbols if s.name not in {k.name for k in known}}
            if extra:
                raise SpecError(f"composite {self.name!r}: stage {st.symbol} reads undefined "
                                f"{sorted(map(str, extra))}")
            known.add(st.symbol)

    @property
    def output(self) -> sp.Symbol:
        return self.stages[-1].symbol

    @property
    def hash(self) -> str:
        text = "|".join([self.name, sp.srepr(self.input)]
                        + [f"{st.symbol}:{st.kind}:{sp.srepr(st.expr)}" for st in self.stages]
                        + [repr(self.saved), repr(self.params), repr(self.constants),
                           repr(self.scalars), repr(self.stats)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class RoleKernel:
    """One role lowered: element arrays read, group arrays read, group sums accumulated in
    one pass, then group outputs, then element outputs (all SymPy)."""
    role: str
    elem_in: list
    group_in: list
    sums: list                  # [(symbol, element expression)] accumulated per group
    group_out: list             # [(name, expression of group values and sums)]
    elem_out: list              # [(name, expression per element)]
    directions: list = field(default_factory=list)


@dataclass
class ForwardKernel:
    """The forward pass: the stages in order, one pass per reduction."""
    elem_in: list
    group_in: list
    passes: list                # [(symbol, kind, element expression, [(group symbol, expr)] after)]
    before: list                # group maps computable before any pass
    elem_out: list              # [(name, expression of x and group values)]
    group_out: list             # [(name, symbol)]


def _sorted(syms):
    return sorted(syms, key=lambda s: s.name)


class DerivedComposite:
    """Stage-by-stage first- and second-order derivatives of a :class:`CompositeSpec`."""

    def __init__(self, spec: CompositeSpec):
        self.spec = spec
        self.x = spec.input
        self.params = list(spec.params)
        self.scalars = [sp.Symbol(s) for s, _ in spec.scalars]
        self.defs = {st.symbol: st for st in spec.stages}
        self.level = {self.x: "elem"}
        for p in (*spec.params, *spec.constants):
            self.level[p] = "group"
        for st in spec.stages:
            if st.kind == "map":
                reads = [self.level.get(s) for s in st.expr.free_symbols]
                self.level[st.symbol] = "elem" if "elem" in reads else "group"
            else:
                self.level[st.symbol] = "group"
        self.saved = list(spec.saved)
        self.saved_elem = [s for s in self.saved if self.level[s] == "elem"]
        self.saved_group = [s for s in self.saved if self.level[s] == "group"]
        if len(self.saved_elem) != 1:
            raise SpecError(f"composite {spec.name!r}: exactly one element-level saved symbol is "
                            f"supported, got {self.saved_elem}")
        self.tangent = {s: sp.Symbol("R" + s.name) for s in (self.x, *self.params)}
        self.elem_syms = {self.x, G, RG, *self.tangent.values(), *self.saved_elem,
                          *(s for s, lv in self.level.items() if lv == "elem")}
        self.elem_syms -= {self.tangent[p] for p in self.params}
        self._substitutions()
        self.atom_rules: dict = {}
        self._identities()

    # ------------------------------------------------------------ canonical forms
    def _full(self, s):
        """An element-level stage written with x and group-level symbols only."""
        st = self.defs.get(s)
        if st is None or self.level[s] != "elem":
            return s
        return st.expr.xreplace({d: self._full(d) for d in st.expr.free_symbols if d in self.defs})

    def _substitutions(self):
        sv = self.saved_elem[0]
        sols = sp.solve(sp.Eq(sv, self._full(sv)), self.x)
        if not sols:
            raise SpecError(f"composite {self.spec.name!r}: cannot write {self.x} with the saved {sv}")
        x_of_saved = sp.expand_log(sols[0], force=True)
        self.elem_subs = {self.x: x_of_saved}
        for s, lv in self.level.items():
            if lv == "elem" and s in self.defs and s != sv:
                self.elem_subs[s] = sp.simplify(self._full(s).xreplace({self.x: x_of_saved}))
        # group stages that are not saved, written with saved ones (var = rstd⁻² − ε)
        self.group_subs = {}
        for s in self.saved_group:
            st = self.defs[s]
            deps = [d for d in st.expr.free_symbols if d in self.defs and d not in self.saved_group]
            if st.kind == "map" and len(deps) == 1:
                sol = sp.solve(sp.Eq(s, st.expr), deps[0])
                if sol:
                    self.group_subs[deps[0]] = sol[0]

    def has_elem(self, e) -> bool:
        if isinstance(e, GroupSum):
            return False
        if isinstance(e, sp.Symbol):
            return e in self.elem_syms
        return any(self.has_elem(a) for a in e.args)

    def _split_sum(self, a):
        a = sp.expand(a, power_exp=False, power_base=False, log=False)
        out = sp.S.Zero
        for term in sp.Add.make_args(a):
            grp, el = sp.S.One, sp.S.One
            for f in sp.Mul.make_args(term):
                if self.has_elem(f):
                    el *= f
                else:
                    grp *= f
            out += grp * (M if el == 1 else GroupSum(el))
        return out.xreplace(self.atom_rules)

    def _sums(self, e):
        if not e.args:
            return e
        args = [self._sums(a) for a in e.args]
        if isinstance(e, GroupSum):
            return self._split_sum(args[0])
        return e.func(*args)

    def canon(self, e):
        """``e`` with element stages written in the saved variables, group sums split into
        group factor × Σ(monomial) and reduced by the stage identities."""
        e = sp.sympify(e).xreplace(self.elem_subs).xreplace(self.group_subs)
        e = self._sums(e)
        return sp.expand(e, power_exp=False, power_base=False, log=False)

    def _identities(self):
        """What each reduction stage says about the group sums of saved variables."""
        self.identities = []
        for st in self.spec.stages:
            if st.kind not in ("sum", "mean"):
                continue
            lhs = self.canon(GroupSum(st.expr))
            rhs = self.canon(st.symbol * (M if st.kind == "mean" else 1))
            eq = sp.expand(lhs - rhs)
            atoms = _sorted_atoms(eq)
            if len(atoms) != 1:
                continue
            val = sp.solve(eq, atoms[0])
            if val:
                v = sp.simplify(val[0])
                self.atom_rules[atoms[0]] = v
                self.identities.append((st.symbol, atoms[0], v))

    # ------------------------------------------------------------ sweeps
    def differentiable(self, e):
        return [s for s in _sorted(e.free_symbols) if s == self.x or s in self.defs or s in self.params]

    @cached_property
    def adjoints(self) -> dict:
        """Canonical adjoints of every symbol after the backward sweep, plus the per-stage
        record ``[(stage, adjoint of its symbol)]`` for the document."""
        adj = {self.spec.output: G}
        self.sweep = []
        for st in reversed(self.spec.stages):
            a = adj.get(st.symbol, sp.S.Zero)
            self.sweep.append((st, a))
            if st.kind == "max":
                if sp.simplify(a) != 0:
                    raise SpecError(f"composite {self.spec.name!r}: the output is not invariant to the "
                                    f"shift {st.symbol} (its adjoint is {a}); a max stage must be a shift")
                continue
            if a == 0:
                continue
            elem_stage = self.level[st.symbol] == "elem"
            scale = 1 / M if st.kind == "mean" else 1
            for dep in self.differentiable(st.expr):
                d = sp.diff(st.expr, dep)
                dep_elem = self.level[dep] == "elem"
                if st.kind == "map":
                    c = GroupSum(a * d) if elem_stage and not dep_elem else a * d
                else:
                    c = a * d * scale if dep_elem else a * GroupSum(d) * scale
                adj[dep] = self.canon(adj.get(dep, sp.S.Zero) + c)
        return adj

    @cached_property
    def tangents(self) -> dict:
        """Canonical forward-mode tangents of every stage (direction Rx and R<param>)."""
        tan = dict(self.tangent)
        for c in self.spec.constants:
            tan[c] = sp.S.Zero
        for st in self.spec.stages:
            if st.kind == "max":
                tan[st.symbol] = sp.S.Zero    # exact: the adjoint sweep proved invariance
                continue
            t = sum((sp.diff(st.expr, d) * tan[d] for d in self.differentiable(st.expr)), sp.S.Zero)
            if st.kind in ("sum", "mean"):
                t = GroupSum(t) / (M if st.kind == "mean" else 1)
            tan[st.symbol] = self.canon(t)
        return tan

    def rop(self, e):
        """The R-op (directional derivative along the tangents and Rg) of a canonical form."""
        tan = self.tangents
        return self.directional(e, lambda s: RG if s == G else tan.get(s))

    def directional(self, e, tangent_of):
        """The directional derivative of a canonical form, ``tangent_of(symbol)`` giving each
        symbol's tangent (None: constant); a group sum's tangent is the sum of its monomial's."""
        atoms = _sorted_atoms(e)
        dummies = {a: sp.Dummy(f"s{i}") for i, a in enumerate(atoms)}
        e2 = e.xreplace(dummies)
        back = {v: k for k, v in dummies.items()}
        total = self._along(e2, tangent_of).xreplace(back)
        for a, dmy in dummies.items():
            total += sp.diff(e2, dmy).xreplace(back) * GroupSum(self._along(a.args[0], tangent_of))
        return self.canon(total)

    @staticmethod
    def _along(e, tangent_of):
        out = sp.S.Zero
        for s in _sorted(e.free_symbols):
            t = tangent_of(s)
            if t is not None:
                out += sp.diff(e, s) * t
        return out

    # ------------------------------------------------------------ Taylor mode (input derivatives)
    @property
    def taylor_able(self) -> bool:
        """Taylor roles are derived for specs without constants or batch statistics: softmax,
        the per-sample normalisations, a user's group spec with or without group parameters
        (not train-mode batch normalisation, whose statistics couple the samples)."""
        return not self.spec.constants and not self.spec.stats

    def _path_renames(self, xs) -> dict:
        """The first-order tangents as the path's: Rx is x1, the parameters' directions zero
        (parameters do not move along an input path)."""
        return {self.tangent[self.x]: xs[0], **{self.tangent[p]: sp.S.Zero for p in self.params}}

    def _path(self, K: int):
        """The path x(t) = x + t·x1 + t²/2·x2 + …: its coefficient symbols x1…xK (x1 is the
        stages' tangent direction Rx) and the cotangent symbols g1…gK, all element-level."""
        names = {s.name for s in self.level} | {s.name for s in self.saved} | {s.name for s in self.scalars}
        xs = [sp.Symbol(f"x{k}") for k in range(1, K + 1)]
        gs = [sp.Symbol(f"g{k}") for k in range(1, K + 1)]
        reserved = {s.name for s in xs + gs} | {"gx"} | {f"gx{k}" for k in range(1, K + 1)} \
            | {f"y{k}" for k in range(1, K + 1)}
        clash = sorted(names & reserved)
        if clash:
            raise SpecError(f"composite {self.spec.name!r}: the names {clash} (of its input, stages or scalars) "
                            f"are the Taylor roles' arrays; rename them")
        self.elem_syms |= set(xs) | set(gs)
        return xs, gs

    def path_derivative(self, e, xs):
        """d/dt at t = 0 of a canonical form evaluated along the path (Rx = x1, x_k' = x_(k+1);
        ``g`` and every cotangent constant): a JVP of a role is a role."""
        tan = self.tangents
        ren = self._path_renames(xs)
        nxt = {x: (xs[k + 1] if k + 1 < len(xs) else None) for k, x in enumerate(xs)}
        fixed = {G, *self.params}

        def tangent_of(s):
            if s in nxt:
                return nxt[s]
            t = None if s in fixed else tan.get(s)
            return None if t is None else t.xreplace(ren)
        return self.directional(e, tangent_of)

    @cached_property
    def _taylor_series(self) -> dict:
        """The coefficients and path derivatives derived so far (:meth:`_series`)."""
        return {"ys": [], "P": {}}

    def _series(self, K: int):
        """(x1…xK, g1…gK, y1…yK, {array: [P_0 … P_K]}): the output's coefficients and the
        VJPs' path derivatives to order K, each derived once (extended on demand)."""
        xs, gs = self._path(K)
        ser = self._taylor_series
        ren = self._path_renames(xs)
        ys = ser["ys"]
        if not ys:
            ys.append(self.canon(self.jvp.xreplace(ren)))
        while len(ys) < K:
            ys.append(self.path_derivative(ys[-1], xs))
        for name in [self.x.name] + [p.name for p in self.params]:
            P = ser["P"].setdefault(name, [])
            if not P:
                P.append(self.canon(self.vjp[name].xreplace(ren)))
            while len(P) < K + 1:
                P.append(self.path_derivative(P[-1], xs))
        return xs, gs, ys[:K], {n: P[:K + 1] for n, P in ser["P"].items()}

    def taylor(self, K: int) -> tuple[dict, dict]:
        """``taylor:K``: the output's coefficients y1…yK along one direction (y_k the k-th
        derivative in t of y(x(t))), each the path derivative of the one before from y1 =
        the JVP; and its pullback: the cotangent of x_j is Σ_{k≥j} C(k, j)·P_(k−j)(g_k), P_m
        the m-th path derivative of the VJP with its cotangent held fixed (∂y_k/∂x_j is
        C(k, j) times the (k−j)-th derivative of the Jacobian along the path); x's own
        cotangent leaves out g (the ``vjp`` role's part). A group parameter's cotangent is
        Σ_k P_k(g_k) of its own VJP (∂y_k/∂p is the k-th path derivative of ∂y/∂p), named
        ``grad_<p>`` as the ``vjp`` role's. Written with x1 for Rx."""
        if not self.taylor_able:
            raise SpecError(f"composite {self.spec.name!r}: Taylor roles are not derived for specs with "
                            f"constants or batch statistics")
        xs, gs, ys, series = self._series(K)
        pull = {}
        for name, P in series.items():
            at = lambda m, k, P=P: P[m].xreplace({G: gs[k - 1]})  # noqa: E731
            if name != self.x.name:
                pull[f"grad_{name}"] = self.canon(sum((at(k, k) for k in range(1, K + 1)), sp.S.Zero))
                continue
            pull["gx"] = self.canon(sum((at(k, k) for k in range(1, K + 1)), sp.S.Zero))
            for j in range(1, K + 1):
                pull[f"gx{j}"] = self.canon(sum((sp.binomial(k, j) * at(k - j, k) for k in range(j, K + 1)),
                                                sp.S.Zero))
        return {f"y{k}": y for k, y in enumerate(ys, 1)}, pull

    # ------------------------------------------------------------ results
    @cached_property
    def vjp(self) -> dict:
        """``{array: canonical pullback}`` for the input and every parameter."""
        adj = self.adjoints
        out = {self.x.name: adj.get(self.x, sp.S.Zero)}
        for p in self.params:
            out[p.name] = adj.get(p, sp.S.Zero)
        return out

    @cached_property
    def jvp(self):
        return self.tangents[self.spec.output]

    @cached_property
    def rvjp(self) -> dict:
        return {k: self.rop(v) for k, v in self.vjp.items()}

    @staticmethod
    def pretty(e):
        """A readable form of a canonical expression (for the document and docstrings)."""
        return sp.factor_terms(sp.collect(e, _sorted_atoms(e)))

    # ------------------------------------------------------------ lowering
    def _role(self, role: str, outputs: dict, directions: list, elem: tuple = ()) -> RoleKernel:
        """``elem``: outputs written per element even when their expression is group-level
        (a Taylor coefficient that simplifies to 0 or a constant is still one per element)."""
        exprs = list(outputs.values())
        atoms = sorted({a for e in exprs for a in _sorted_atoms(e)}, key=sp.default_sort_key)
        sums = [(sp.Symbol(f"_sum{i}"), a.args[0]) for i, a in enumerate(atoms)]
        rep = {a: s for a, (s, _) in zip(atoms, sums)}
        elem_out, group_out = [], []
        for name, e in outputs.items():
            e = e.xreplace(rep)
            (elem_out if self.has_elem(e) or name in elem else group_out).append((name, e))
        reads = set().union(*(e.free_symbols for _, e in sums + elem_out + group_out)) if exprs else set()
        reads -= {s for s, _ in sums} | {M} | set(self.scalars)
        elem_in = [s.name for s in _sorted(reads) if s in self.elem_syms]
        group_in = [s.name for s in _sorted(reads) if s not in self.elem_syms]
        return RoleKernel(role, elem_in, group_in, sums, group_out, elem_out, directions)

    @cached_property
    def role_kernels(self) -> dict:
        dirs = [self.tangent[self.x].name] + [self.tangent[p].name for p in self.params]
        out = {"vjp": self._role("vjp", {f"grad_{k}": v for k, v in self.vjp.items()}, []),
               "jvp": self._role("jvp", {"Ry": self.jvp}, dirs),
               "rvjp": self._role("rvjp", {f"Rgrad_{k}": v for k, v in self.rvjp.items()}, ["Rg"] + dirs)}
        for rk in out.values():
            self._check_reads(rk, {c.name for c in self.spec.constants} | {"g", "Rg"} | set(rk.directions))
        return out

    def _check_reads(self, rk: RoleKernel, inputs: set):
        """A role may read the saved arrays, the parameters and its own ``inputs``, nothing else."""
        known = {s.name for s in self.saved} | {p.name for p in self.params} | inputs
        missing = [a for a in rk.elem_in + rk.group_in if a not in known]
        if missing:
            raise SpecError(f"composite {self.spec.name!r}: role {rk.role} reads {missing}, which "
                            f"the forward pass does not save; add them to saved")

    def taylor_kernels(self, max_order: int = 4) -> dict:
        """``taylor:K`` and ``vjp:taylor:K`` for K = 1 … max_order (:attr:`taylor_able` specs)."""
        out = {}
        for K in range(1, max_order + 1):
            fwd, pull = self.taylor(K)
            per_element = tuple(fwd) + tuple(n for n in pull if not n.startswith("grad_"))
            out[f"taylor:{K}"] = self._role(f"taylor:{K}", fwd, [], per_element)
            out[f"vjp:taylor:{K}"] = self._role(f"vjp:taylor:{K}", pull, [], per_element)
        coefficients = {f"{a}{k}" for a in "xg" for k in range(1, max_order + 1)}
        for rk in out.values():
            self._check_reads(rk, coefficients)
        return out

    @cached_property
    def forward(self) -> ForwardKernel:
        grp_known = set(self.params) | set(self.spec.constants)
        passes, before = [], []
        pending = [st for st in self.spec.stages if self.level[st.symbol] == "group" and st.kind == "map"]

        def ready():
            done = []
            for st in list(pending):
                if all(self.level.get(s) != "elem" and (s in grp_known or s not in self.level)
                       for s in st.expr.free_symbols):
                    done.append((st.symbol, st.expr))
                    grp_known.add(st.symbol)
                    pending.remove(st)
            return done
        before = ready()
        for st in self.spec.stages:
            if st.kind in ("sum", "mean", "max"):
                passes.append((st.symbol, st.kind, self._full_elem(st.expr), []))
                grp_known.add(st.symbol)
                passes[-1][3].extend(ready())
        elem_out = [(self.spec.output.name, self._full_elem(self.spec.output))]
        elem_out += [(s.name, self._full_elem(s)) for s in self.saved_elem if s != self.spec.output]
        group_out = [(s.name, s) for s in (*self.saved_group, *self.spec.stats)]
        return ForwardKernel([self.x.name], [s.name for s in (*self.params, *self.spec.constants)],
                             passes, before, elem_out, group_out)

    def _full_elem(self, e):
        return e.xreplace({d: self._full(d) for d in e.free_symbols if d in self.defs})


def _sorted_atoms(e) -> list:
    return sorted(e.atoms(GroupSum), key=sp.default_sort_key)


def derive_composite(spec: CompositeSpec) -> DerivedComposite:
    d = DerivedComposite(spec)
    d.role_kernels   # derive everything now (errors at derive time, not at first use)
    d.forward
    return d
