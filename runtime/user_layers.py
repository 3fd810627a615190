"""Layers from specs a user writes: ``L.from_spec(spec, init=..., axes=..., **sizes)``.

A spec is compiled on first use through the same derive → codegen path as the built-ins, into
the cache keyed by its hash (like :meth:`Activation.from_sympy`). The layer classes here hold
only what the spec cannot know: the sizes of its extents, the parameters' initial values and,
for a composite spec, which axes one reduction group spans. Every pass is a role of the spec.
"""
from __future__ import annotations

import numpy as np

from .kernels import register
from .layer_base import SpecLayer, check_float_input
from .normalization import CompositeLayer


def _compile(stem: str, spec, derive, render, verbose: bool):
    """The registered module of ``spec`` and its derivation (None after a cache hit)."""
    from ..codegen.build import compile_spec
    module, _, derived = compile_spec(stem, spec, derive, render, verbose)
    return register(module), derived


def _initial(layer: str, name: str, how, shape: tuple, fan_in: int, dtype, rng) -> np.ndarray:
    """A parameter's first value: a number, an array of its shape, ``f(shape, rng)``, or
    ``"uniform"`` (PyTorch's Linear default, U(±1/√fan_in))."""
    if isinstance(how, str):
        if how != "uniform":
            raise ValueError(f"{layer}: init for {name!r} must be a number, an array, a callable or "
                             f"'uniform', got {how!r}")
        bound = 1.0 / np.sqrt(max(fan_in, 1))
        return rng.uniform(-bound, bound, shape).astype(dtype)
    value = how(shape, rng) if callable(how) else how
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=np.float64), shape)
    except ValueError:
        raise ValueError(f"{layer}: init for {name!r} has shape {np.shape(value)}, the parameter {shape}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{layer}: init for {name!r} holds NaN or inf")
    return np.array(arr, dtype=dtype)


class ContractionLayer(SpecLayer):
    """A layer from a user's :class:`ContractionSpec` (indexed: GEMM, broadcast and elementwise
    products with parameters, reductions), or a window spec (affine index maps, ``maps=``:
    convolutions and pooling of any number of axes, depthwise ones included) compiled by the
    window family. The input's first index is the batch. A window spec's scalars (stride,
    padding, dilation, a pooling kernel size) are given by name; its output extents follow from
    the maps, ``(H + 2p − d(K − 1) − 1)//s + 1`` per axis."""

    def __init__(self, spec, init: dict | None = None, verbose: bool = False, **sizes):
        from ..derive.elementwise import SpecError
        from ..derive.indexed import check_contraction, derive_contraction
        if len(spec.inputs) != 1:
            raise SpecError(f"L.from_spec({spec.name!r}): a layer has exactly one input array, the spec has "
                            f"{sorted(spec.inputs)}")
        (self.input_name, self.in_idx), = spec.inputs.items()
        if spec.out_indices[0] != self.in_idx[0]:
            raise SpecError(f"L.from_spec({spec.name!r}): the output's first index {spec.out_indices[0]} must be "
                            f"the input's batch index {self.in_idx[0]}")
        check_contraction(spec)
        if spec.maps:
            _check_maps(spec)
        self.spec = spec
        names = {str(e) for e in spec.extents.values()}
        derived_extents = {m.out_extent.name for m in spec.maps}
        scalar_names = [str(q) for q in spec.scalars]
        unknown = sorted(set(sizes) - names - set(scalar_names))
        if unknown:
            raise TypeError(f"L.from_spec({spec.name!r}): unknown size(s) {unknown}; the spec's extents are "
                            f"{sorted(names)}" + (f" and its scalars {scalar_names}" if scalar_names else ""))
        given_out = sorted(set(sizes) & derived_extents - set(scalar_names))
        if given_out:
            raise TypeError(f"L.from_spec({spec.name!r}): {given_out} follow from the window's index maps and the "
                            f"input; give the kernel sizes and scalars instead")
        missing = [q for q in scalar_names if q not in sizes]
        if missing:
            raise TypeError(f"L.from_spec({spec.name!r}): give the spec's scalar(s) {missing} by name (e.g. "
                            f"{missing[0]}=1)")
        divisors = {q for m in spec.maps for q in (m.stride, m.dilation)}   # strides and dilations divide
        self._scalars = {str(q): _scalar(spec.name, q, sizes[str(q)], q in divisors) for q in spec.scalars}
        self.sizes = {}
        for k, v in sizes.items():
            if k in names:
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"L.from_spec({spec.name!r}): size {k} must be a positive integer, got {v!r}")
                if v <= 0:
                    raise ValueError(f"L.from_spec({spec.name!r}): size {k} must be a positive integer, got {v!r}")
                self.sizes[k] = int(v)
        self.init = dict(init or {})
        extra = sorted(set(self.init) - set(spec.params))
        if extra:
            raise TypeError(f"{self.name}: init for unknown parameter(s) {extra}; it has {sorted(spec.params)}")
        self.arrays = {p: None for p in spec.params}
        # per window axis: input, kernel and output extent names; stride, dilation, padding values
        self._windows = [(m.in_extent.name, m.kernel_extent.name, m.out_extent.name,
                          *(self._scalars[str(q)] if str(q) in self._scalars else int(q)
                            for q in (m.stride, m.dilation, m.padding))) for m in spec.maps]
        self.module, self._derived = _compile(f"user_{spec.name}", spec, derive_contraction, _renderer(spec), verbose)
        self._bind(self.module, spec.name)

    @property
    def name(self):
        given = {**self.sizes, **getattr(self, "_scalars", {})}
        return f"{self.spec.name}({', '.join(f'{k}={v}' for k, v in sorted(given.items()))})"

    def scalars(self):
        return self._scalars

    @property
    def derived(self):
        """The spec's derivation (derived on first access after a cache hit)."""
        if self._derived is None:
            from ..derive.indexed import derive_contraction
            self._derived = derive_contraction(self.spec)
        return self._derived

    def _extent(self, i):
        return self.spec.extents[i].name

    def _all_sizes(self) -> dict:
        """The sizes, with each window axis's output extent once its input extent is known."""
        sizes = dict(self.sizes)
        for n_in, n_k, n_out, s, d, p in self._windows:
            if n_in in sizes and n_k in sizes:
                sizes[n_out] = (sizes[n_in] + 2 * p - d * (sizes[n_k] - 1) - 1) // s + 1
        return sizes

    def _shape(self, idx) -> tuple | None:
        sizes = self._all_sizes()
        dims = [sizes.get(self._extent(i)) for i in idx]
        return None if None in dims else tuple(dims)

    def parameters_known(self):
        return all(self._shape(idx) is not None for idx in self.spec.params.values())

    def init_parameters(self, dtype, rng):
        dtype = np.dtype(dtype)
        if not self.parameters_known():
            return
        for p, idx in self.spec.params.items():
            if self.arrays[p] is not None:
                if self.arrays[p].dtype != dtype:
                    raise TypeError(f"{self.name}: already initialised as {self.arrays[p].dtype}, cannot join a "
                                    f"{dtype} model")
                continue
            shape = self._shape(idx)
            summed = [i for i in idx if i not in self.spec.out_indices]
            if p not in self.init and not summed:
                raise TypeError(f"{self.name}: give init={{{p!r}: ...}}: {p} is not summed over in the output, so "
                                f"there is no fan-in to scale a random initialisation by (e.g. 1.0 for a scale, "
                                f"0.0 for a shift)")
            fan_in = int(np.prod([self.sizes[self._extent(i)] for i in summed])) if summed else 1
            self.arrays[p] = _initial(self.name, p, self.init.get(p, "uniform"), shape, fan_in, dtype, rng)

    def build(self, input_shape, dtype, rng):
        input_shape = tuple(input_shape)
        if len(input_shape) != len(self.in_idx) - 1:
            raise ValueError(f"{self.name}: expects per-sample inputs of rank {len(self.in_idx) - 1} "
                             f"({', '.join(self._extent(i) for i in self.in_idx[1:])}), got {input_shape}")
        before = dict(self.sizes)
        for i, d in zip(self.in_idx[1:], input_shape):
            self.sizes.setdefault(self._extent(i), int(d))
        try:
            out = self.output_shape(input_shape)
        except ValueError:   # an input that does not fit leaves the layer as it was
            self.sizes = before
            raise
        self.init_parameters(dtype, rng)
        return out

    def output_shape(self, input_shape):
        want = tuple(self.sizes.get(self._extent(i)) for i in self.in_idx[1:])
        if tuple(input_shape) != want:
            raise ValueError(f"{self.name}: expects per-sample inputs of shape {want}, got {tuple(input_shape)}")
        out = self._shape(self.spec.out_indices[1:])
        if out is None:
            sizes = self._all_sizes()
            missing = [self._extent(i) for i in self.spec.out_indices[1:] if self._extent(i) not in sizes]
            raise ValueError(f"{self.name}: the output extent(s) {missing} are not fixed by the input; pass them "
                             f"to L.from_spec (e.g. {missing[0]}=16)")
        if any(d < 1 for d in out):
            raise ValueError(f"{self.name}: input of shape {tuple(input_shape)} is too small for its window "
                             f"(output would be {out})")
        return out

    def check_input(self, x):
        x = check_float_input(self, x)
        if self.arrays and next(iter(self.arrays.values())) is not None:
            dt = next(iter(self.arrays.values())).dtype
            if x.dtype != dt:
                raise TypeError(f"{self.name}: input dtype {x.dtype} does not match the layer's {dt}")
        if x.ndim != len(self.in_idx):
            raise ValueError(f"{self.name}: expected input of rank {len(self.in_idx)}, got shape {x.shape}")
        return x

    def spec_arrays(self):
        return dict(self.arrays)

    def trainable(self):
        return tuple(self.spec.params)

    def _nonlinear(self) -> list[str]:
        """Arrays the layer is not linear in (their pullback still reads them): the exact and
        Becker-LeCun diagonals would need its second derivative in them, which is not a role."""
        import sympy as sp
        return [a for a, k in self.derived.vjps.items() if k.expr.has(sp.IndexedBase(a))]

    def factor_backprop(self, rec, groups, g, exact, need_input=True):
        if exact and self._nonlinear():
            raise ValueError(f"hessian_diagonal: method='exact' is not available through {self.name}: it is not "
                             f"linear in {self._nonlinear()} and its second derivative is not a derived role; use "
                             f"method='gauss_newton' or 'hutchinson'")
        return super().factor_backprop(rec, groups, g, exact, need_input)

    def _no_curvature(self, method):
        if self._nonlinear():
            raise ValueError(f"hessian_diagonal: method={method!r} is not available through {self.name}: it is not "
                             f"linear in {self._nonlinear()}; use method='gauss_newton' or 'hutchinson'")
        if not self.kernels.has(f"bl:{self.input_name}"):
            raise ValueError(f"hessian_diagonal: method={method!r} is not available through {self.name}: its "
                             f"pullbacks have no squared form ({self.derived.no_curvature}); "
                             f"use method='hutchinson'")

    def bl(self, rec, h, g):
        self._no_curvature("becker_lecun")
        return super().bl(rec, h, g)

    def config(self):
        cfg = {"type": "Spec", "family": "contraction", "name": self.spec.name, "hash": self.spec.hash,
               "sizes": dict(self.sizes)}
        if self._scalars:
            cfg["scalars"] = dict(self._scalars)
        return cfg


def _renderer(spec):
    """The window family's renderer for a spec with affine index maps, else the contraction one's."""
    if spec.maps:
        from ..codegen.window import render_window_module
        return render_window_module
    from ..codegen.contraction import render_contraction_module
    return render_contraction_module


def _scalar(spec: str, sym, v, divisor: bool = False) -> int:
    """A window scalar's value: an integer, at least 1 for a stride or dilation (``divisor``) or a
    positive symbol, at least 0 otherwise (a padding)."""
    low = 1 if divisor or sym.is_positive else 0
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"L.from_spec({spec!r}): scalar {sym} must be an integer, got {v!r}")
    if v < low:
        raise ValueError(f"L.from_spec({spec!r}): scalar {sym} must be an integer >= {low}, got {v!r}")
    return int(v)


def _check_maps(spec) -> None:
    """Refuse a window spec whose index maps do not fit its arrays (each names the map)."""
    import sympy as sp
    from ..derive.elementwise import SpecError
    (_, in_idx), = spec.inputs.items()
    for m in spec.maps:
        where = f"spec {spec.name!r}: the index map {m.forward_index()} (output {m.out}, kernel {m.kernel}, input {m.inp})"
        if m.inp == in_idx[0]:
            raise SpecError(f"{where}: a window cannot run along the batch index {m.inp}")
        if m.inp not in in_idx or m.out not in spec.out_indices:
            raise SpecError(f"{where}: its input index must index the input {in_idx} and its output index the "
                            f"output {spec.out_indices}")
        for ix, ext in ((m.out, m.out_extent), (m.kernel, m.kernel_extent), (m.inp, m.in_extent)):
            if spec.extents.get(ix) != ext:
                raise SpecError(f"{where}: index {ix} has extent {spec.extents.get(ix)} in extents=, {ext} in the map")
        for q in (m.stride, m.dilation, m.padding):
            if not (isinstance(q, sp.Integer) or q in spec.scalars):
                raise SpecError(f"{where}: stride, dilation and padding must each be an integer or one of the spec's "
                                f"scalars {list(spec.scalars)}, got {q}")
        if any(m.out_extent == q for q in spec.scalars):
            raise SpecError(f"{where}: its output extent {m.out_extent} follows from the map; it cannot be a scalar")


def _per_row(a, n: int):
    """A group-level array as the kernels read it, one value per (sample, group) row: the
    per-sample groups tiled over the ``n`` samples (its adjoint is :meth:`GroupLayer._fold`)."""
    return a if a is None or n == 1 else np.tile(a, n)


class GroupLayer(CompositeLayer):
    """A layer from a user's :class:`CompositeSpec`: the input viewed as (A, C, B) where one
    reduction group is a row of B elements spanning ``axes``; group-level parameters (and the
    spec's scalars) one value per group index along the kept axes."""

    def __init__(self, spec, axes, init: dict | None = None, verbose: bool = False, **scalars):
        from ..codegen.composite import render_composite_module
        from ..derive.composite import derive_composite
        from ..derive.elementwise import SpecError
        if spec.constants or spec.stats:
            raise SpecError(f"L.from_spec({spec.name!r}): composite specs with constants or running statistics "
                            f"are not supported from user code yet")
        if axes is None:
            raise TypeError(f"L.from_spec({spec.name!r}): a composite spec needs axes=(...), the input axes one "
                            f"reduction group spans (LayerNorm on (N, F): axes=(1,))")
        axes = tuple(sorted({int(a) for a in np.atleast_1d(axes)}))
        if not axes or axes[0] < 0:
            raise ValueError(f"L.from_spec({spec.name!r}): axes must be non-negative input axes, got {axes}")
        self.spec, self.axes = spec, axes
        # without Taylor roles: a layer used for input derivatives compiles them on first use
        # (runtime/taylor.py), the others need not derive or compile them
        self.module, self._derived = _compile(f"user_{spec.name}", spec, derive_composite,
                                              lambda stem, ds: render_composite_module(stem, ds, taylor_order=0),
                                              verbose)
        defaults = dict(spec.scalars)
        unknown = sorted(set(scalars) - set(defaults))
        if unknown:
            raise TypeError(f"{self.name}: unknown scalar(s) {unknown}; the spec has {sorted(defaults) or 'none'}")
        self._scalars = {k: float(scalars.get(k, v)) for k, v in defaults.items()}
        self.init = dict(init or {})
        names = [p.name for p in spec.params]
        extra = sorted(set(self.init) - set(names))
        if extra:
            raise TypeError(f"{self.name}: init for unknown parameter(s) {extra}; it has {names}")
        self.arrays = {p: None for p in names}
        self.groups = None
        self._bind(self.module, spec.name)

    @property
    def name(self):
        return f"{self.spec.name}(axes={self.axes})"

    @property
    def derived(self):
        """The spec's derivation (derived on first access after a cache hit)."""
        if self._derived is None:
            from ..derive.composite import derive_composite
            self._derived = derive_composite(self.spec)
        return self._derived

    def scalars(self):
        return self._scalars

    def layout(self, shape):
        nd = len(shape)
        if self.axes[-1] >= nd:
            raise ValueError(f"{self.name}: axes {self.axes} do not exist in inputs of shape {shape}")
        kept = [a for a in range(nd) if a not in self.axes]
        if kept and kept != list(range(kept[0], kept[-1] + 1)):
            raise ValueError(f"{self.name}: the kept axes {kept} of inputs {shape} must be adjacent (one group "
                             f"index); reshape the input first")
        k0, k1 = (kept[0], kept[-1] + 1) if kept else (0, 0)
        prod = lambda s: int(np.prod(s, dtype=np.int64))   # noqa: E731
        return prod(shape[:k0]), prod(shape[k0:k1]), prod(shape[k1:])

    def parameters_known(self):
        return not self.arrays or all(a is not None for a in self.arrays.values())

    def build(self, input_shape, dtype, rng):
        if 0 in self.axes:
            raise ValueError(f"{self.name}: axis 0 is the batch; groups spanning samples (batch statistics) "
                             f"need running statistics, not supported from user code")
        # the batch axis is kept, so the layout is (1, N·groups, B): rows are (sample, group)
        per_sample = self.layout((1,) + tuple(input_shape))[1]
        if self.groups is not None and self.groups != per_sample:
            raise ValueError(f"{self.name}: already built for {self.groups} groups per sample; inputs "
                             f"{tuple(input_shape)} have {per_sample} (a shared layer keeps one size)")
        for p in self.arrays:
            if self.arrays[p] is None:
                self.arrays[p] = _initial(self.name, p, self.init.get(p, 1.0), (per_sample,), 1, dtype, rng)
        self.groups = per_sample
        return tuple(input_shape)

    def parameters(self):
        return [self.arrays[p] for p in self.arrays]

    def trainable(self):
        return tuple(self.arrays)

    def spec_arrays(self):
        return dict(self.arrays)

    def _tiled(self, n: int) -> dict:
        return {p: _per_row(a, n) for p, a in self.arrays.items()}

    def check_input(self, x):
        x = super().check_input(x)
        if self.arrays and self.layout(x.shape)[1] != self.groups * x.shape[0]:
            raise ValueError(f"{self.name}: built for {self.groups} groups per sample, got input {x.shape}")
        return x

    def _forward_env(self, x, arrays=None):
        x, shapes, env = super()._forward_env(x, arrays)
        env.update(self._tiled(x.shape[0]))
        return x, shapes, env

    def _env(self, rec, **arrays):
        env = super()._env(rec)
        env.update(self._tiled(rec["_shapes"]["x"][0]))
        env.update(arrays)
        return env

    @staticmethod
    def _fold(rec, grads):
        """Per-(sample, group) parameter pullbacks summed over the samples (tiling's adjoint)."""
        n = rec["_shapes"]["x"][0]
        return [None if g is None else g.reshape(n, -1).sum(axis=0) for g in grads]

    def vjp(self, rec, g, need_input=True):
        gx, grads = super().vjp(rec, g, need_input)
        return gx, self._fold(rec, grads)

    def jvp(self, rec, Rx, Rparams):
        n = rec["_shapes"]["x"][0]
        return super().jvp(rec, Rx, [_per_row(v, n) for v in Rparams])

    def rvjp(self, rec, g, Rg, Rx, Rparams, need_input=True):
        n = rec["_shapes"]["x"][0]
        Rgx, Rgrads = super().rvjp(rec, g, Rg, Rx, [_per_row(v, n) for v in Rparams], need_input)
        return Rgx, self._fold(rec, Rgrads)

    def bl(self, rec, h, g):
        raise ValueError(f"{self.name}: the Becker-LeCun diagonal is not available through a group reduction; "
                         f"use method='gauss_newton' or 'hutchinson'")

    def _nonlinear_params(self) -> list[str]:
        """Parameters the output is not linear in — a reduction reads something they shape, or a
        stage has a second derivative in what they shape: the exact diagonal would need that
        second-order term, which is not a role."""
        import sympy as sp
        out = []
        for p in self.spec.params:
            shaped = {p}
            for st in self.spec.stages:
                if st.expr.free_symbols & shaped:
                    reads = sorted(st.expr.free_symbols & shaped, key=str)
                    if st.kind != "map" or any(sp.diff(st.expr, a, b) != 0 for a in reads for b in reads):
                        out.append(p.name)
                        break
                    shaped.add(st.symbol)
        return out

    def sq_param_grads(self, rec, S, w):
        """Groups lie within one sample: a factor column's pullback per (sample, group) row is that
        sample's, so each row is squared and weighted by its sample's sign before the rows of a
        group are summed over the samples."""
        diag = [np.zeros_like(p) for p in self.parameters()]
        if not diag:
            return diag
        n = rec["_shapes"]["x"][0]
        for k in range(S.shape[0]):
            _, rows = CompositeLayer.vjp(self, rec, np.ascontiguousarray(S[k]), need_input=False)
            for d, r in zip(diag, rows):   # rows: (sample, group) in order
                d += (w[k][:, None] * r.reshape(n, -1) ** 2).sum(axis=0)
        return diag

    def factor_backprop(self, rec, groups, g, exact, need_input=True):
        if exact:
            own = self._nonlinear_params()
            if own:
                raise ValueError(f"hessian_diagonal: method='exact' is not available through {self.name}: it is not "
                                 f"linear in its parameter(s) {own}; use method='gauss_newton' or 'hutchinson'")
        if exact and need_input:
            raise ValueError(f"hessian_diagonal: method='exact' is not available below {self.name} (its second "
                             f"derivative couples the elements of a group); use method='gauss_newton' or "
                             f"'hutchinson'")
        return super().factor_backprop(rec, groups, g, False, need_input)

    def config(self):
        return {"type": "Spec", "family": "composite", "name": self.spec.name, "hash": self.spec.hash,
                "axes": list(self.axes), "scalars": dict(self._scalars)}


def _learnable(spec, verbose: bool, init=None, num_parameters=1, **fixed):
    """An elementwise spec with learnable parameters (each one value per channel on axis 1, or
    one shared), compiled like the built-in PReLU (the channelwise family); its other
    parameters are fixed numbers, given as keywords (default the spec's)."""
    from ..codegen.channelwise import render_channelwise_module
    from ..derive.elementwise import derive_elementwise
    from .activation import LearnableActivation, learnable_arguments
    # the arguments checked before compiling (a misspelt name should not wait for the compiler)
    learnable_arguments(f"L.from_spec({spec.name!r})", tuple(spec.learnable), {p: float(v) for p, v in spec.params},
                        num_parameters, init, fixed)
    module, _ = _compile(f"learn_{spec.name}", spec, derive_elementwise, render_channelwise_module, verbose)
    layer = LearnableActivation(spec.name, num_parameters, init, module=module, params=fixed)
    layer.spec = spec
    return layer


def from_spec(spec, init: dict | None = None, axes=None, verbose: bool = False, **sizes_and_scalars):
    """A layer from any spec a user writes (compiled once, cached by the spec's hash):

    - :class:`ElementwiseSpec` → an activation (``sizes_and_scalars``: parameter values);
      with ``learnable=(name, ...)`` learnable parameters, each shared or one per channel on
      axis 1 (``num_parameters=C``, or ``{name: C}``; ``init={name: value}``, default the
      spec's value, or one number for one parameter); the other parameters fixed, by keyword;
    - :class:`ContractionSpec` → :class:`ContractionLayer` (``sizes_and_scalars``: extents the
      input does not fix, e.g. ``O=16``; ``init``: per parameter a number, array, callable
      ``f(shape, rng)`` or ``"uniform"``, the default);
    - :class:`CompositeSpec` → :class:`GroupLayer` (``axes``: the input axes one reduction
      group spans; ``init``: group-level parameters' first value, default 1.0).
    """
    from ..derive.composite import CompositeSpec
    from ..derive.elementwise import ElementwiseSpec
    from ..derive.indexed import ContractionSpec
    from .activation import Activation
    if isinstance(spec, ElementwiseSpec):
        if spec.learnable:
            return _learnable(spec, verbose, init, **sizes_and_scalars)
        return Activation.from_sympy(spec.name, spec.expr, spec.var, spec.params, verbose=verbose,
                                     **sizes_and_scalars)
    if isinstance(spec, ContractionSpec):
        return ContractionLayer(spec, init, verbose, **sizes_and_scalars)
    if isinstance(spec, CompositeSpec):
        return GroupLayer(spec, axes, init, verbose, **sizes_and_scalars)
    raise TypeError(f"L.from_spec: expected an ElementwiseSpec, ContractionSpec or CompositeSpec, got "
                    f"{type(spec).__name__}")
