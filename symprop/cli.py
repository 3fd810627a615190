"""The ``symprop`` command line: generate kernels, train and evaluate models."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _source_root() -> Path:
    """The checkout the user stands in (the folder holding pyproject.toml and generated/)."""
    here = Path.cwd()
    for p in [here, *here.parents]:
        if (p / "pyproject.toml").exists() and (p / "codegen").is_dir():
            return p
    return here


def cmd_generate(args) -> int:
    from .codegen.generate import generate

    out = Path(args.out) if args.out else _source_root() / "generated"
    t0 = time.perf_counter()
    drift = generate(out, check=args.check, progress=lambda m: print(f"  {m}", file=sys.stderr))
    if args.check:
        if drift:
            print(f"symprop generate --check: {len(drift)} file(s) in {out} differ from the specs: "
                  + ", ".join(drift), file=sys.stderr)
            print("run `symprop generate` to regenerate them", file=sys.stderr)
            return 1
        print(f"symprop generate --check: {out} is up to date ({time.perf_counter() - t0:.1f} s)")
        return 0
    print(f"wrote {len(drift)} changed file(s) to {out}" + (f": {', '.join(drift)}" if drift else "")
          + f" ({time.perf_counter() - t0:.1f} s); reinstall (pip install .) to compile them")
    return 0


def build_model(name: str, hidden: int, activation: str, dtype: str, seed: int, n_in: int, n_out: int):
    from . import Sequential
    from .runtime import layers as L

    act = L.BUILTIN_ACTIVATIONS[activation]
    if name == "mlp":
        return Sequential([L.Dense(n_in, hidden), act(), L.Dense(hidden, n_out)],
                          loss="softmax_cross_entropy", dtype=dtype, seed=seed)
    raise SystemExit(f"symprop train: model {name!r} is not available (choose from: mlp)")


def cmd_train(args) -> int:
    from .runtime import optimizers as O
    from .runtime.data import load_digits

    if args.dataset != "digits":
        raise SystemExit(f"symprop train: dataset {args.dataset!r} is not available yet (choose from: digits)")
    (X, y), (Xt, yt) = load_digits(dtype=args.dtype, seed=0)
    model = build_model(args.model, args.hidden, args.activation, args.dtype, args.seed, X.shape[1], 10)
    kw = {"lr": args.lr}
    if args.optimizer == "sgd":
        kw["momentum"] = args.momentum
    opt = O.get_optimizer(args.optimizer, **kw)
    print(f"symprop train: {args.model} {model.input_shape[0]}-{args.hidden}-10 ({args.activation}) on digits: "
          f"{len(X)} train / {len(Xt)} test, {args.optimizer}(lr={opt.lr}), batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.dtype}, seed {args.seed}")
    t0 = time.perf_counter()
    model.fit(X, y, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt,
              validation_data=(Xt, yt), verbose=1, seed=args.seed)
    ev = model.evaluate(Xt, yt)
    print(f"final test accuracy {ev['accuracy']:.4f}  test loss {ev['loss']:.4f}  "
          f"({time.perf_counter() - t0:.1f} s)")
    if args.save:
        path = model.save(args.save)
        print(f"saved {path}")
    return 0


def cmd_evaluate(args) -> int:
    from . import Sequential
    from .runtime.data import load_digits

    model = Sequential.load(args.file)
    (_, _), (Xt, yt) = load_digits(dtype=model.dtype.name, seed=0)
    ev = model.evaluate(Xt, yt)
    print(" ".join(f"{k} {v:.4f}" for k, v in ev.items()))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="symprop", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="regenerate the Cython kernels under generated/")
    g.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file differs")
    g.add_argument("--out", help="output folder (default: ./generated of the checkout)")
    g.set_defaults(fn=cmd_generate)

    t = sub.add_parser("train", help="train a model on a bundled data set")
    t.add_argument("--model", default="mlp", choices=["mlp"])
    t.add_argument("--dataset", default="digits")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument("--hidden", type=int, default=512)
    t.add_argument("--activation", default="relu", choices=["tanh", "sigmoid", "relu", "softplus"])
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save", help="write the trained model to this .npz checkpoint")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved checkpoint on the digits test split")
    e.add_argument("file")
    e.set_defaults(fn=cmd_evaluate)

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError) as exc:
        print(f"symprop {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
