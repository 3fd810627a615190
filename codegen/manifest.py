"""The manifest a generated module carries: for every spec and role, the kernel that serves it.

A role names a product of the spec: ``forward``, ``vjp:<array>`` (pullback to one array),
``jvp`` (pushforward of every direction), ``rvjp:<array>`` (R-op of a pullback),
``residual`` (f''·ḡ), ``bl:<array>`` (Becker–LeCun: squared Jacobian entries) and
``sqvjp:<param>`` (per-sample squared parameter pullbacks of Hessian factor columns). For each
the manifest records the kernel's name, its positional and keyword arguments, which array
arguments are optional directions (absent = zero), its outputs and, for every output, the
canonical array whose shape it has, so one generic executor in ``runtime/`` can allocate and
call any of them. The manifest is plain data built from the same kernel contexts the
templates print, so it cannot disagree with the kernels.
"""
from __future__ import annotations


def _like(shape: list, canonical: dict) -> str:
    """The canonical array (input, parameter, output or mask) with these index names."""
    for name, idx in canonical.items():
        if list(idx) == list(shape):
            return name
    raise ValueError(f"manifest: no array of the spec has indices {shape}")


def contraction_role(ctx: dict, canonical: dict, masks_in=(), masks_out=(), kwargs=()) -> dict:
    """A contraction or window kernel, single or fused: array arguments (by canonical name),
    outputs (a fused kernel's are every part's, and it names the roles it fuses)."""
    outs = [{"name": o, "like": _like(ctx["shapes"][o], canonical), "dtype": "float"} for o in ctx["outs"]]
    outs += [{"name": mk, "like": _like(ctx["shapes"][mk], canonical), "dtype": "int16"} for mk in masks_out]
    arrays = ctx.get("def_arrays", ctx["arrays"])
    role = {"kernel": ctx["name"],
            "call": list(arrays) + list(masks_in) + list(ctx["outs"]) + list(masks_out),
            "kwargs": list(kwargs), "arrays": list(arrays) + list(masks_in),
            "optional": list(ctx["optional"]), "outputs": outs}
    if "parts" in ctx:
        role["fuses"] = list(ctx["parts"])
    return role


def indexed_binding(ctx: dict) -> dict:
    """What the dispatcher needs to call an indexed kernel of the uniform signature: the
    arrays the kernel reads (squared ones included) and writes, in pointer order; every
    array's index names; the squared arrays it forms (``[square, base]``); the extents in the
    order the kernel takes them; whether it calls BLAS (then BLAS is held at one thread and
    the kernel gets OpenMP's thread count)."""
    names = list(ctx["arrays"]) + list(ctx["outs"])
    indices = {a: list(ctx["shapes"][a]) for a in names}
    for sq, base in ctx["squares"]:
        indices.setdefault(base, list(ctx["shapes"][sq]))
    return {"pointers": names, "indices": indices, "squares": [list(p) for p in ctx["squares"]],
            "extents": list(ctx["extents"]), "calls_blas": bool(ctx["calls_blas"])}


def elementwise_role(ctx: dict) -> dict:
    """An elementwise kernel: every array has the same shape; scalars follow positionally;
    ``written`` arrays are updated in place (optimizer state). ``doc`` is what it computes."""
    like = ctx["arrays"][0]
    return {"kernel": ctx["name"], "call": list(ctx["arrays"]) + list(ctx["outs"]) + list(ctx["scalars"]),
            "kwargs": [], "arrays": list(ctx["arrays"]), "optional": [],
            "outputs": [{"name": o, "like": like, "dtype": "float"} for o in ctx["outs"]],
            "scalars": list(ctx["scalars"]), "written": list(ctx["written"]), "doc": ctx["doc"]}


def spec_entry(family: str, name: str, hash_: str, inputs: list, params: list, output: str,
               scalars: list, roles: dict, arrays: dict | None = None) -> dict:
    """One spec's manifest entry. ``arrays`` maps array names to their index names (indexed
    specs); elementwise specs have ``x`` in and ``y`` out of one shape."""
    entry = {"family": family, "hash": hash_, "inputs": list(inputs), "params": list(params),
             "output": output, "scalars": list(scalars)}
    if arrays is not None:
        entry["arrays"] = {k: list(v) for k, v in arrays.items()}
    entry["roles"] = roles
    return entry


def canonical_arrays(spec) -> dict:
    """Index names of every array of an indexed spec: inputs, parameters, output, constants."""
    out = {k: [str(i) for i in v] for k, v in spec.arrays.items()}
    out[spec.output] = [str(i) for i in spec.out_indices]
    for k, v in spec.constants.items():
        out[k] = [str(i) for i in v[:len(spec.out_indices)]]   # masks are stored per output position
    return out
