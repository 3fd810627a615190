"""What a :class:`Sequential` shows of itself: the layer table and ``summary()``, its ``repr``,
the specs it is made of and the LaTeX document of them."""
from __future__ import annotations

from .layer_base import Layer


def layer_table(model) -> list[tuple[str, tuple | None, int, str]]:
    """``(layer, per-sample output shape or None before building, parameter count, note)`` per
    layer use; a shared layer's parameters are counted at its first use."""
    shape, rows, seen = model.input_shape, [], {}
    for k, layer in enumerate(model.layers):
        shape = layer.output_shape(shape) if shape is not None else None
        if id(layer) in seen:
            rows.append((layer.name, shape, 0, f"shared with layer {seen[id(layer)]}"))
            continue
        seen[id(layer)] = k
        n = sum(p.size for p in layer.parameters()) if shape is not None or layer.parameters_known() else 0
        rows.append((layer.name, shape, n, ""))
    return rows


def specs(model) -> tuple[list[str], list]:
    """``(built-in spec names, user specs)`` of every layer and the loss, in model order
    (what :meth:`latex` documents)."""
    from .kernels import SpecKernels
    names, extra, seen = [], [], set()

    def visit(obj):
        if isinstance(obj, (list, tuple)):
            for o in obj:
                visit(o)
            return
        if not isinstance(obj, Layer) or id(obj) in seen:   # a part refers back to its layer
            return
        seen.add(id(obj))
        spec = getattr(obj, "spec", None)
        if spec is not None and hasattr(spec, "hash"):
            if all(spec is not e for e in extra):
                extra.append(spec)
            return
        for v in vars(obj).values():
            if isinstance(v, SpecKernels) and v.spec not in names:
                names.append(v.spec)
            elif isinstance(v, (Layer, list, tuple)):
                visit(v)
    visit(model.layers)
    if getattr(model.loss, "spec", None) is not None and not getattr(model.loss, "builtin", False):
        extra.append(model.loss.spec)   # a built-in written as a spec is in the losses section
    return names, extra


def latex(model, path=None) -> str:
    """A LaTeX document of this model's layers and loss — built-ins and user specs alike —
    with their derived chain rules and the forms the kernels compute (``path``: also write it)."""
    from .. import document as tex   # lazy: the runtime does not depend on the document backend
    names, extra = specs(model)
    known = set(tex.builtin_layer_names())
    text = tex.document([n for n in names if n in known], extra)
    if path is not None:   # atomically: a reader never sees half a document
        import os
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return text


def summary(model, print_fn=print) -> None:
    """Print the layers, their output shapes and parameter counts, and the total (as Keras's
    ``model.summary()``; pass ``print_fn`` to collect the lines instead)."""
    rows = layer_table(model)
    head = ("#", "layer", "output shape", "params")
    cells = [(str(k), name + (f"  ({note})" if note else ""),
              "(N, " + ", ".join(map(str, shape)) + ")" if shape is not None else "(not built)", f"{n:,}")
             for k, (name, shape, n, note) in enumerate(rows)]
    w = [max(len(r[i]) for r in cells + [head]) for i in range(4)]
    fmt = lambda r: f"{r[0]:>{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}"  # noqa: E731
    total = sum(r[2] for r in rows)
    inp = "(N, " + ", ".join(map(str, model.input_shape)) + ")" if model.input_shape else "(not built yet)"
    rule = "-" * len(fmt(head))
    scalars = getattr(model.loss, "scalars", None) or {}
    loss = model.loss.name + ("(" + ", ".join(f"{k}={v:g}" for k, v in scalars.items()) + ")" if scalars else "")
    lines = [f"Sequential: input {inp}, loss {loss}, {model.dtype.name}", rule, fmt(head), rule]
    lines += [fmt(r) for r in cells]
    lines += [rule, f"total parameters: {total:,} ({total * model.dtype.itemsize / 1024:,.1f} KiB)"]
    for line in lines:
        print_fn(line)


def describe(model) -> str:
    """The model's ``repr``: its layers, loss, dtype and input shape."""
    inner = "".join(f"\n    {la!r}," for la in model.layers)
    shape = f", input_shape={model.input_shape}" if model.input_shape is not None else ""
    loss = model.loss
    # a built-in with other arguments than its defaults shows them: loss=Huber(delta=2)
    shown = repr(loss) if getattr(loss, "builtin", False) and loss.scalars != loss.defaults else repr(loss.name)
    return f"Sequential([{inner}\n], loss={shown}, dtype={model.dtype.name!r}{shape})"
