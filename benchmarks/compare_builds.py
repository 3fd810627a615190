"""Digests of every built-in kernel role, to show two builds compute bit-identical results.

Run it once per build, each in its own process and venv (two builds cannot share one), then
compare the two JSON files::

    /path/old-venv/bin/python benchmarks/compare_builds.py --out old.json
    /path/new-venv/bin/python benchmarks/compare_builds.py --out new.json
    python benchmarks/compare_builds.py --compare old.json new.json

It covers (a) every role of every elementwise spec and every optimizer update kernel, called
directly on random arrays with special values (NaN, ±inf, ±0, huge) at a size split over
threads and a small one, in float32 and float64; (b) every role the runtime composes, through
models: forward, gradients, HVP, all four Hessian diagonals and a few training steps of every
optimizer, for an MLP with each activation and a CNN with conv, pooling, batch norm, dropout,
learnable activations and softmax. Digests are SHA-256 of the output bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np


def _digest(*arrays) -> str:
    """``raw/canonical``: SHA-256 prefixes of the bytes, and of the bytes with every NaN
    replaced by one NaN (IEEE 754 leaves the sign and payload of a NaN result unspecified:
    a vectorized and a scalar loop may differ there and nowhere else)."""
    raw, canon = hashlib.sha256(), hashlib.sha256()
    for a in arrays:
        if a is None:
            raw.update(b"None")
            canon.update(b"None")
            continue
        a = np.ascontiguousarray(a)
        head = str(a.dtype).encode() + str(a.shape).encode()
        raw.update(head + a.tobytes())
        c = a.copy()
        if c.dtype.kind == "f":
            c[np.isnan(c)] = np.nan
        canon.update(head + c.tobytes())
    return raw.hexdigest()[:24] + "/" + canon.hexdigest()[:24]


def _arrays(seed: int, n: int, dtype, count: int, special: bool = True) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        a = (rng.standard_normal(n) * 3).astype(dtype)
        if special and n > 16:
            a[:8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 40.0]
        out.append(a)
    return out


def elementwise_roles(out: dict) -> None:
    import importlib.util
    from symprop.runtime.kernels import load
    # keyed by spec, not module: builds may group specs into modules differently
    for mod_name in ("activations", "masks", "penalties", "optimizers"):
        if importlib.util.find_spec(f"symprop.generated.{mod_name}") is None:
            continue
        mod = load(mod_name)
        for spec, entry in mod.MANIFEST.items():
            defaults = entry.get("defaults", {})
            for role, r in entry["roles"].items():
                fn = getattr(mod, r["kernel"])
                for dtype in (np.float32, np.float64):
                    for n in (100_003, 37):
                        seed = int(hashlib.sha256(f"{spec}|{role}|{n}".encode()).hexdigest()[:8], 16)
                        update = role == "update"      # an optimizer's in-place update
                        arrays = _arrays(seed, n, dtype, len(r["arrays"]), special=not update)
                        if update:    # state arrays (second moments) are >= 0
                            arrays = [np.abs(a) if name.startswith(("s", "v", "h")) else a
                                      for name, a in zip(r["arrays"], arrays)]
                        outs = [np.empty(n, dtype) for _ in r["outputs"]]
                        scalars = [defaults.get(s, 0.1 + 0.05 * i) for i, s in enumerate(r.get("scalars", ()))]
                        fn(*arrays, *outs, *scalars)
                        out[f"elementwise/{spec}/{role}/{np.dtype(dtype).name}/{n}"] = _digest(*arrays, *outs)


#: extents and geometry per indexed spec: every role is called directly on arrays of these shapes
_INDEXED = {
    ("dense", "dense"): ({"n": 7, "i": 5, "o": 4}, {}),
    ("window", "conv2d"): ({"n": 3, "c": 2, "u": 7, "v": 6, "o": 4, "i": 3, "j": 2, "h": 4, "w": 6},
                          {"s_h": 2, "s_w": 1, "p_h": 1, "p_w": 1, "d_h": 1, "d_w": 2}),
    ("window", "avgpool2d"): ({"n": 3, "c": 2, "u": 7, "v": 6, "h": 3, "w": 3},
                             {"s_h": 2, "s_w": 2, "p_h": 0, "p_w": 0, "K_h": 2, "K_w": 2}),
    ("window", "maxpool2d"): ({"n": 3, "c": 2, "u": 7, "v": 6, "h": 4, "w": 3},
                             {"s_h": 2, "s_w": 2, "p_h": 1, "p_w": 0, "K_h": 2, "K_w": 2}),
}


def indexed_roles(out: dict) -> None:
    """Every role of the dense, conv and pooling specs, called directly through the executor
    with every direction present, on random arrays (maxpool's mask from its forward)."""
    from symprop.runtime.kernels import SpecKernels, load
    for (mod_name, spec), (ext, scalars) in _INDEXED.items():
        mod = load(mod_name)
        entry = mod.MANIFEST[spec]
        kern = SpecKernels(mod, spec)
        shape = {a: tuple(ext[i] for i in idx) for a, idx in entry["arrays"].items()}
        out_shape = shape[entry["output"]]
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(11)
            env = {a: rng.standard_normal(shp).astype(dtype) for a, shp in shape.items()
                   if a in entry["inputs"] + entry["params"]}
            for a in list(env):
                env["R" + a] = rng.standard_normal(shape[a]).astype(dtype)
            for a in ("g", "H", "Rg"):
                env[a] = rng.standard_normal(out_shape).astype(dtype)
            env["S"] = rng.standard_normal((2, *out_shape)).astype(dtype)
            env["w"] = rng.choice([-1.0, 1.0], size=(2, out_shape[0])).astype(dtype)
            shapes = {entry["output"]: out_shape, **{a: shp for a, shp in shape.items()}}
            res = kern.run_named("forward", env, dtype, scalars, shapes)
            env.update({k: v for k, v in res.items() if k in ("M",)})
            for role in sorted(entry["roles"]):
                res = kern.run_named(role, env, dtype, scalars, shapes)
                out[f"indexed/{spec}/{role}/{np.dtype(dtype).name}"] = _digest(*[res[k] for k in sorted(res)])


def _models(dtype):
    from symprop import Sequential, layers as L
    from symprop.runtime.activation import names
    for act in names():
        yield f"mlp-{act}", Sequential([L.Dense(12, 16), L.Activation(act), L.Dense(16, 5)],
                                       loss="softmax_cross_entropy", dtype=dtype, seed=3), (12,)
    yield "cnn", Sequential([L.Conv2D(2, 4, 3, padding=1), L.BatchNorm2D(4), L.PReLU(4), L.MaxPool2D(2),
                             L.Conv2D(4, 6, 3, stride=2, padding=1), L.Swish(learnable=True), L.AvgPool2D(2),
                             L.Flatten(), L.Dropout(0.25), L.Dense(6, 7), L.Softmax(), L.Dense(7, 3)],
                            loss="softmax_cross_entropy", dtype=dtype, seed=4), (2, 8, 8)
    yield "mse-bn", Sequential([L.Dense(5, 9), L.BatchNorm1D(9), L.ELU(), L.Dense(9, 2)], loss="mse",
                               dtype=dtype, seed=5, l1=1e-3, l2=1e-2), (5,)


def model_roles(out: dict) -> None:
    from symprop import optimizers as O
    for dtype in ("float32", "float64"):
        for name, model, shape in _models(dtype):
            rng = np.random.default_rng(7)
            X = rng.standard_normal((10, *shape)).astype(dtype)
            y = rng.standard_normal((10, 2)).astype(dtype) if name == "mse-bn" else rng.integers(0, 3, 10)
            model.train()
            loss, grads = model.loss_and_grad(X, y)
            out[f"model/{name}/{dtype}/grad"] = _digest(np.array(loss), *grads)
            v = [rng.standard_normal(p.shape).astype(dtype) for p in model.parameters()]
            out[f"model/{name}/{dtype}/hvp"] = _digest(*model.hvp(X, y, v))
            for method in ("exact", "gauss_newton", "becker_lecun", "hutchinson"):
                if not name.startswith("mlp-") and method in ("exact", "becker_lecun"):
                    continue     # batch norm couples samples; softmax and batch norm have no BL rule
                d = model.hessian_diagonal(X, y, method=method, samples=3, seed=1)
                out[f"model/{name}/{dtype}/diag-{method}"] = _digest(*d)
            model.eval()
            out[f"model/{name}/{dtype}/predict"] = _digest(model.predict(X))
            if name.startswith("mlp-") and name != "mlp-tanh":
                continue
            saved = [p.copy() for p in model.parameters()]
            for opt in (O.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), O.AdaGrad(0.05),
                        O.RMSProp(0.01, momentum=0.5), O.Adam(1e-3), O.AdamW(1e-3), O.AdaHessian(0.05)):
                for p, s in zip(model.parameters(), saved):
                    p[...] = s
                model.fit(X, y, epochs=2, batch_size=5, optimizer=opt, verbose=0, seed=0)
                out[f"model/{name}/{dtype}/fit-{type(opt).__name__}"] = _digest(*model.parameters())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the digests here (JSON)")
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two digest files")
    args = ap.parse_args(argv)
    if args.compare:
        old, new = (json.load(open(p)) for p in args.compare)
        common = sorted(set(old) & set(new))
        nan_only = [k for k in common if old[k] != new[k] and old[k].split("/")[1] == new[k].split("/")[1]]
        differ = [k for k in common if old[k].split("/")[1] != new[k].split("/")[1]]
        only = sorted(set(old) ^ set(new))
        print(f"{len(common)} roles in both builds: {len(common) - len(differ) - len(nan_only)} bit-identical, "
              f"{len(nan_only)} identical but for the sign or payload of a NaN, {len(differ)} differ")
        for k in nan_only:
            print("  NaN bits only:", k)
        for k in differ:
            print("  differs:", k)
        for k in only:
            print("  only in", "old" if k in old else "new", k)
        return 1 if differ else 0
    out: dict = {}
    elementwise_roles(out)
    indexed_roles(out)
    model_roles(out)
    text = json.dumps(out, indent=1, sort_keys=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"{len(out)} digests written to {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
