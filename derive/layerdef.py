"""One definition per built-in layer: its spec, and what the spec cannot know.

A :class:`LayerDef` is plain data beside the spec in ``derive/builtins.py``: the constructor
arguments (their checks, defaults, and the spec symbols each fixes), the parameters (their
initialisation; shapes come from the spec's index extents), the curvature methods the layer
supports, its torch.nn counterpart and the words the document uses. The shape rule is derived
from the spec: a contraction's output extents, a window's output size from its affine index
maps. Everything else reads the definition — the runtime class (``runtime/defined.py``),
``from_config`` and checkpoints, ``summary()``, the document's model shapes, the CLI and
``interop`` — so a new built-in layer is its definition and nothing else.

SymPy and plain Python only (no NumPy): the document and the CLI describe models from these
definitions without compiled kernels.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import sympy as sp

REQUIRED = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()

#: every method of ``hessian_diagonal``
CURVATURE_METHODS = ("exact", "gauss_newton", "becker_lecun", "hutchinson")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or type(v).__name__ in ("int64", "int32", "int16", "int8",
                                                                                   "uint8", "uint16", "uint32", "uint64")


def _is_number(v) -> bool:
    return not isinstance(v, bool) and (isinstance(v, (int, float)) or _is_int(v) or
                                        type(v).__name__ in ("float64", "float32", "float16"))


def family(spec) -> str:
    """The generated module a spec's kernels go to: ``dense`` (a contraction), ``window`` (a
    contraction with affine index maps) or ``composite`` (stages over groups)."""
    if hasattr(spec, "stages"):
        return "composite"
    return "window" if getattr(spec, "maps", None) else "dense"


@dataclass(frozen=True)
class Arg:
    """A constructor argument. ``kind``: ``count`` (a positive integer), ``pair`` (an integer
    >= ``minimum`` or a pair of them, for the two spatial axes), ``flag`` (a bool), ``rate``
    (a probability in [0, 1)), ``positive`` (a finite number > 0), ``fraction`` (a finite
    number in [0, 1]), ``shape`` (a positive integer or a tuple of them: a normalized shape).
    A default of None stays None (the layer resolves it, e.g. RMSNorm's eps from the dtype).
    ``binds``: the spec symbols its value fixes (a pair binds two)."""
    name: str
    kind: str
    default: object = REQUIRED
    binds: tuple = ()
    minimum: int = 1
    default_from: str | None = None    # default: another argument's value (pooling stride = kernel size)
    omit_default: bool = False         # the config leaves it out at its default (old checkpoints match)

    def check(self, layer: str, v):
        """The normalised value, or a ValueError naming the layer and the argument."""
        if self.kind == "count":
            if not _is_int(v) or v <= 0:
                raise ValueError(f"{layer}: {self.name} must be a positive integer, got {v!r}")
            return int(v)
        if self.kind == "pair":
            vals = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
            if len(vals) != 2 or not all(_is_int(a) and a >= self.minimum for a in vals):
                raise ValueError(f"{layer}: {self.name} must be an integer >= {self.minimum} or a pair of them, "
                                 f"got {v!r}")
            return int(vals[0]), int(vals[1])
        if self.kind == "shape":
            vals = tuple(v) if isinstance(v, (tuple, list)) else (v,)
            if not vals or not all(_is_int(a) and a > 0 for a in vals):
                raise ValueError(f"{layer}: {self.name} must be a positive integer or a non-empty tuple of them, "
                                 f"got {v!r}")
            return tuple(int(a) for a in vals)
        if self.kind == "flag":
            return bool(v)
        if self.kind == "rate":
            if not _is_number(v) or not 0 <= v < 1:
                raise ValueError(f"{layer}: {self.name}: the drop probability must be a number in [0, 1), got {v!r}")
            return float(v)
        if self.kind in ("positive", "fraction"):
            ok = _is_number(v) and math.isfinite(v) and (v > 0 if self.kind == "positive" else 0 <= v <= 1)
            if not ok:
                raise ValueError(f"{layer}: {self.name} must be a finite number in "
                                 f"{'(0, inf)' if self.kind == 'positive' else '[0, 1]'}, got {v!r}")
            return float(v)
        raise ValueError(f"{layer}: argument kind {self.kind!r} of {self.name} is not one of the known kinds")

    def to_config(self, v):
        return list(v) if self.kind in ("pair", "shape") else v


@dataclass(frozen=True)
class Param:
    """A parameter (or buffer) array of the spec. ``init``: ``uniform`` (U(±1/√fan_in),
    PyTorch's default for Linear and Conv2d, the fan-in being the extents the spec sums
    over), ``ones`` or ``zeros``. ``shape``: for a composite spec, the arguments giving its
    group shape (an indexed spec's parameters take theirs from the spec's extents). ``when``:
    a flag argument (or a tuple of them, all must hold); while it is False the array is a
    constant zero, not trained. An argument in ``shape`` that is itself a shape counts its
    product (LayerNorm's γ over normalized_shape is stored flat)."""
    name: str
    init: str = "uniform"
    shape: tuple = ()
    when: str | tuple | None = None
    penalized: bool = False


@dataclass(frozen=True)
class TorchDef:
    """The torch.nn counterpart: ``module`` (class name in torch.nn); ``args``: our argument ->
    torch attribute (also its constructor keyword; a flag whose attribute is a tensor reads
    ``is not None``); ``arrays``: our parameter/buffer -> torch tensor attribute, in
    ``parameters() + buffers()`` order; ``requires``: torch attribute -> the values we can
    represent (others are refused by name); ``keywords``: fixed constructor keywords."""
    module: str
    args: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    requires: dict = field(default_factory=dict)
    keywords: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LayerDef:
    """A built-in layer. ``spec``: its ContractionSpec or CompositeSpec (None: a movement op
    with an explicit ``shape`` rule); ``module``: the generated module of its kernels (by
    default its spec's :func:`family`; another is refused);
    ``specs``: further specs it runs (BatchNorm's eval-mode spec); ``title``/``label``: its
    name in messages and its words in the document (``str.format`` over the arguments);
    ``ranks``/``channels``: for a composite spec, the per-sample input ranks it accepts and
    the argument per-sample axis 0 must equal; ``checks``: ``f(args) -> message or None``;
    ``parts``: specs of other families the layer composes after its own spec (LayerNorm's
    per-channel scale and shift), emitted into their family's module."""
    name: str
    spec: object = None
    module: str | None = None
    args: tuple = ()
    params: tuple = ()
    buffers: tuple = ()
    specs: tuple = ()
    curvature: tuple = CURVATURE_METHODS
    torch: TorchDef | None = None
    title: str = ""
    label: str = ""
    ranks: tuple = ()
    channels: str | None = None
    checks: tuple = ()
    shape: object = None
    doc: str = ""
    parts: tuple = ()

    def __post_init__(self):
        if self.spec is None:
            return
        if self.module is None:
            object.__setattr__(self, "module", family(self.spec))   # frozen: set once, here
        elif self.module != family(self.spec):
            raise ValueError(f"{self.name}: module {self.module!r} is not its spec's family {family(self.spec)!r}")

    # ------------------------------------------------------------ arguments and config
    def bind(self, *args, **kwargs) -> dict:
        """Constructor arguments (positional in declaration order, or by name), checked and
        normalised, defaults filled in: ``{name: value}``."""
        names = [a.name for a in self.args]
        if len(args) > len(names):
            raise TypeError(f"{self.name}() takes {len(names)} arguments ({', '.join(names)}), got {len(args)}")
        given = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"{self.name}() got an unexpected argument {k!r}; it takes {', '.join(names) or 'none'}")
            if k in given:
                raise TypeError(f"{self.name}() got two values for {k!r}")
            given[k] = v
        out = {}
        for a in self.args:
            v = given.get(a.name, a.default)
            if v is None and a.default_from is not None:
                out[a.name] = out[a.default_from]
                continue
            if v is None and a.default is None:
                out[a.name] = None
                continue
            if v is REQUIRED:
                raise TypeError(f"{self.name}() missing the argument {a.name!r}")
            out[a.name] = a.check(self.name, v)
        for check in self.checks:
            msg = check(out)
            if msg:
                raise ValueError(f"{self.name}: {msg}")
        return out

    def config(self, args: dict) -> dict:
        cfg = {"type": self.name}
        for a in self.args:
            if a.omit_default and args[a.name] == a.default:
                continue
            cfg[a.name] = a.to_config(args[a.name])
        return cfg

    def args_from_config(self, cfg: dict) -> dict:
        """The constructor arguments a checkpoint config holds (absent optional ones: defaults)."""
        missing = [a.name for a in self.args if a.default is REQUIRED and a.name not in cfg]
        if missing:
            raise KeyError(f"the config of {self.name} lacks {missing}")   # a malformed checkpoint
        return {a.name: cfg[a.name] for a in self.args if a.name in cfg}

    def format(self, text: str, args: dict) -> str:
        vals = {k: ("x".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in args.items()}
        return text.format(**vals)

    def layer_name(self, args: dict) -> str:
        return self.format(self.title, args) if self.title else self.name

    def words(self, args: dict) -> str:
        """The layer in the document's words (``label``: a format string or ``f(args)``)."""
        if callable(self.label):
            return self.label(args)
        return self.format(self.label or self.name, args)

    # ------------------------------------------------------------ spec symbols, parameters
    def symbols(self, args: dict) -> dict:
        """Spec symbol name -> value fixed by the arguments."""
        out = {}
        for a in self.args:
            if not a.binds:
                continue
            vals = args[a.name] if isinstance(args[a.name], tuple) else (args[a.name],)
            for sym, v in zip(a.binds, vals):
                out[sym] = int(v)
        return out

    def kernel_scalars(self, args: dict) -> dict:
        """The spec's kernel scalars (stride, padding, ...) from the arguments."""
        syms = self.symbols(args)
        return {str(s): syms[str(s)] for s in getattr(self.spec, "scalars", ()) if str(s) in syms}

    def trained(self, args: dict) -> tuple:
        """Names of the trainable parameters (``parameters()`` order)."""
        return tuple(p.name for p in self.params if self.active(p, args))

    @staticmethod
    def active(p: Param, args: dict) -> bool:
        """Whether ``p`` is trained with these arguments (its ``when`` flags all hold)."""
        if p.when is None:
            return True
        return all(args[w] for w in ((p.when,) if isinstance(p.when, str) else p.when))

    def param_shape(self, p: Param, args: dict) -> tuple:
        if p.shape or not hasattr(self.spec, "params"):
            return tuple(math.prod(args[a]) if isinstance(args[a], tuple) else args[a] for a in p.shape)
        syms = self.symbols(args)
        idx = self.spec.all_arrays[p.name] if p.name in self.spec.all_arrays else ()
        return tuple(syms[self.spec.extents[i].name] for i in idx)

    def fan_in(self, args: dict) -> int:
        """Product of the extents the spec sums over (the indices of its parameters that are not
        output indices): PyTorch's fan-in for Linear and Conv2d."""
        spec, syms = self.spec, self.symbols(args)
        summed = []
        for idx in getattr(spec, "params", {}).values():
            summed += [i for i in idx if i not in spec.out_indices and i not in summed]
        return math.prod(syms[spec.extents[i].name] for i in summed)

    # ------------------------------------------------------------ the shape rule
    @functools.cached_property
    def _window_rules(self) -> list:
        """Per affine index map: its output extent as a function of the input extent and the
        map's scalars. Derived from the map: the last output position is the last whose last
        kernel tap reads inside the input padded on both sides, ``h·s + (K−1)·d − p <= H − 1 + p``."""
        rules = []
        for m in getattr(self.spec, "maps", ()):
            last_tap = m.forward_index().subs({m.kernel: m.kernel_extent - 1}) - m.out * m.stride
            expr = sp.floor((m.in_extent - 1 + m.padding - last_tap) / m.stride) + 1
            free = sorted(expr.free_symbols, key=str)
            rules.append((m.out_extent.name, [s.name for s in free], sp.lambdify(free, expr, "math")))
        return rules

    def out_shape(self, args: dict, in_shape: tuple) -> tuple:
        """Per-sample output shape for per-sample inputs ``in_shape`` (a ValueError naming the
        layer and the shapes when they do not fit)."""
        in_shape = tuple(int(s) for s in in_shape)
        title = self.layer_name(args)
        if self.shape is not None:
            return tuple(self.shape(args, in_shape))
        if not hasattr(self.spec, "out_indices"):   # a composite spec: output shaped like its input
            ch = args[self.channels] if self.channels else None
            if (self.ranks and len(in_shape) not in self.ranks) or (ch is not None and in_shape[:1] != (ch,)):
                want = " or ".join("(N" + (f", {ch}" if ch is not None else ", K") + ", ..." * (k - 1) + ")"
                                   for k in self.ranks)
                raise ValueError(f"{title}: expected input of shape {want}, got per-sample shape {in_shape}")
            return in_shape
        spec, syms = self.spec, self.symbols(args)
        (_, idx), = spec.inputs.items()
        extents = [spec.extents[i].name for i in idx[1:]]
        want = [syms.get(e) for e in extents]
        if len(in_shape) != len(extents) or any(w is not None and w != s for w, s in zip(want, in_shape)):
            shown = [str(w) if w is not None else e.split("_")[0] for w, e in zip(want, extents)]   # H_in: H
            raise ValueError(f"{title}: expects per-sample inputs of shape ({', '.join(shown)}"
                             f"{',' if len(shown) == 1 else ''}), got {in_shape}")
        for e, s in zip(extents, in_shape):
            syms.setdefault(e, s)
        for out_extent, free, rule in self._window_rules:
            syms[out_extent] = int(rule(*(syms[s] for s in free)))
        out = tuple(syms[spec.extents[i].name] for i in spec.out_indices[1:])
        if any(s < 1 for s in out):
            geometry = ", ".join(f"{a.name} {args[a.name]}" for a in self.args if a.kind == "pair")
            raise ValueError(f"{title}: input of shape {in_shape} is too small for {geometry} "
                             f"(output would be {out})")
        return out
