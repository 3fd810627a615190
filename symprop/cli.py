"""The ``symprop`` command line: generate kernels, export derivations, train and evaluate models."""
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


DEFAULT_EPOCHS = {"mlp": 40, "cnn": 15, "lenet": 15, "cifar_cnn": 15}
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adahessian": 0.15, "newton": 1.0}
DEFAULT_WEIGHT_DECAY = {"mlp": 0.0, "cnn": 5e-4, "lenet": 5e-4, "cifar_cnn": 5e-4}


def load_data(dataset: str, data_dir, dtype: str, input_shape=None, model: str | None = None):
    """Train/test splits shaped for the model: flat vectors for the MLP on digits, NCHW images
    otherwise; LeNet gets the 8x8 digits upsampled to 32x32 (LeNet-5's input size)."""
    from .runtime.data import load_dataset, upsample

    flat = (model == "mlp" and dataset == "digits") or (input_shape is not None and len(input_shape) == 1)
    (X, y), (Xt, yt) = load_dataset(dataset, data_dir, dtype, image=not flat)
    factor = 1
    if dataset == "digits" and not flat:
        factor = 4 if model == "lenet" else (input_shape[-1] // 8 if input_shape else 1)
    return (upsample(X, factor), y), (upsample(Xt, factor), yt)


def _activation_names():
    """The activation registry (the compiled manifest); None when no kernels are compiled, so
    `symprop generate` and `symprop latex` still run."""
    try:
        from .runtime.activation import names
        return names()
    except ImportError:
        return None


def cmd_train(args) -> int:
    from .runtime import optimizers as O
    from .runtime.models import MODELS

    (X, y), (Xt, yt) = load_data(args.dataset, args.data_dir, args.dtype, model=args.model)
    builder = MODELS[args.model]
    kw = {"hidden": args.hidden, "activation": args.activation} if args.model == "mlp" else {}
    if args.model == "cnn":
        kw["activation"] = args.activation
    if args.dropout:
        if args.model not in ("mlp", "cnn"):
            raise ValueError(f"--dropout applies to --model mlp or cnn, not {args.model}")
        kw["dropout"] = args.dropout
    if args.batchnorm:
        if args.model not in ("mlp", "cnn"):
            raise ValueError(f"--batchnorm applies to --model mlp or cnn, not {args.model}")
        kw["batchnorm"] = True
    if args.l1 or args.l2:
        kw.update(l1=args.l1, l2=args.l2)
    model = builder(X.shape[1:], classes=int(max(y.max(), yt.max())) + 1, dtype=args.dtype, seed=args.seed, **kw)
    epochs = args.epochs or DEFAULT_EPOCHS[args.model]
    wd = DEFAULT_WEIGHT_DECAY[args.model] if args.weight_decay is None else args.weight_decay
    okw = {"lr": DEFAULT_LR[args.optimizer] if args.lr is None else args.lr}
    if args.optimizer == "sgd":
        okw["momentum"] = args.momentum
    if args.optimizer == "adahessian":
        okw.update(update_each=args.update_each, seed=args.seed)
    if args.optimizer == "newton":
        okw["damping"] = args.damping
    else:
        okw["weight_decay"] = wd
    opt = O.get_optimizer(args.optimizer, **okw)
    n_params = sum(p.size for p in model.parameters())
    print(f"symprop train: {args.model} ({len(model.layers)} layers, {n_params} parameters) on {args.dataset} "
          f"{'x'.join(map(str, X.shape[1:]))}: {len(X)} train / {len(Xt)} test, {args.optimizer}(lr={opt.lr}), "
          f"weight decay {wd}, batch {args.batch_size}, {epochs} epochs, {args.dtype}, seed {args.seed}")
    t0 = time.perf_counter()
    hist = model.fit(X, y, epochs=epochs, batch_size=args.batch_size, optimizer=opt,
                     validation_data=(Xt, yt), verbose=1, seed=args.seed)
    ev = model.evaluate(Xt, yt)
    print(f"final test accuracy {ev['accuracy']:.4f}  test loss {ev['loss']:.4f}  "
          f"({time.perf_counter() - t0:.1f} s)")
    if args.save:
        path = model.save(args.save)
        print(f"saved {path}")
    if args.plot:
        _plot(hist, args.plot, f"{args.model} on {args.dataset}")
        print(f"wrote {args.plot}")
    return 0


def _plot(hist: dict, path: str, title: str) -> None:
    try:
        import matplotlib
    except ImportError as exc:
        raise ValueError("--plot needs matplotlib: pip install 'symprop[plot]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = range(1, len(hist["loss"]) + 1)
    a.plot(ep, hist["loss"], label="train")
    if "val_loss" in hist:
        a.plot(ep, hist["val_loss"], label="test")
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    if "accuracy" in hist:
        b.plot(ep, hist["accuracy"], label="train")
        if "val_accuracy" in hist:
            b.plot(ep, hist["val_accuracy"], label="test")
        b.set_xlabel("epoch"), b.set_ylabel("accuracy"), b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _model_layers(name: str) -> list[str]:
    """Spec names of the layers of a named model (its kernels' specs), in forward order."""
    from .runtime.models import MODELS

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    shape = (64,) if name == "mlp" else (1, 32, 32) if name == "lenet" else \
        (3, 32, 32) if name == "cifar_cnn" else (1, 8, 8)
    model = MODELS[name](shape, classes=10)
    out = []
    for la in model.layers:
        kind = type(la).__name__
        out.append(la.kernel_name if kind == "Activation" else
                   {"Dense": "dense", "Conv2D": "conv2d", "MaxPool2D": "maxpool2d", "AvgPool2D": "avgpool2d"}
                   .get(kind, kind.lower()))
    return out


def _load_specs(path: str) -> list:
    """ElementwiseSpec/ContractionSpec objects defined at the top level of a user's Python file."""
    import runpy

    from .derive import ContractionSpec, ElementwiseSpec

    if not Path(path).is_file():
        raise FileNotFoundError(f"--spec: no such file {path}")
    found = [v for v in runpy.run_path(path).values() if isinstance(v, (ElementwiseSpec, ContractionSpec))]
    if not found:
        raise ValueError(f"--spec {path}: defines no ElementwiseSpec or ContractionSpec at top level")
    return found


def cmd_latex(args) -> int:
    from .derive import latex

    layers = [s for s in args.layers.split(",") if s] if args.layers else None
    model = None
    if args.model:
        chain = _model_layers(args.model)
        model = (args.model, chain)
        if layers is None:
            known = latex.builtin_layer_names()
            layers = list(dict.fromkeys(n for n in chain if n in known))
    extra = _load_specs(args.spec) if args.spec else []
    if args.spec and layers is None:
        layers = []
    t0 = time.perf_counter()
    text = latex.document(layers=layers, extra=extra, model=model)
    out = Path(args.output)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"wrote {out} ({len(text.splitlines())} lines, {time.perf_counter() - t0:.1f} s)")
    if args.pdf:
        pdf = latex.compile_pdf(text, out.with_suffix(".pdf"))
        print(f"wrote {pdf}")
    return 0


def cmd_evaluate(args) -> int:
    from . import Sequential

    model = Sequential.load(args.file)
    (_, _), (Xt, yt) = load_data(args.dataset, args.data_dir, model.dtype.name, input_shape=model.input_shape)
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

    t = sub.add_parser("train", help="train a model on digits (bundled), MNIST or CIFAR-10 (local files)")
    t.add_argument("--model", default="mlp", choices=["mlp", "cnn", "lenet", "cifar_cnn"])
    t.add_argument("--dataset", default="digits", choices=["digits", "mnist", "cifar10"])
    t.add_argument("--data-dir", help="folder with the MNIST IDX files or the CIFAR-10 binary batches")
    t.add_argument("--epochs", type=int, default=None,
                   help="default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()))
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--optimizer", default="sgd", choices=list(DEFAULT_LR))
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate; default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()))
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="L2 weight decay; default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_WEIGHT_DECAY.items()))
    t.add_argument("--update-each", type=int, default=1, help="AdaHessian: re-estimate the Hessian "
                   "diagonal every N steps")
    t.add_argument("--damping", type=float, default=0.1, help="Newton: damping added to |eigenvalues|")
    t.add_argument("--hidden", type=int, default=512)
    t.add_argument("--activation", default="relu", choices=_activation_names(),
                   help="any registered activation (derive/builtins.py)")
    t.add_argument("--dropout", type=float, default=0.0, help="dropout probability (mlp, cnn)")
    t.add_argument("--batchnorm", action="store_true",
                   help="batch normalization before each hidden activation (mlp, cnn)")
    t.add_argument("--l1", type=float, default=0.0, help="l1 penalty on Dense/Conv2D weights")
    t.add_argument("--l2", type=float, default=0.0, help="(l2/2)·ΣW² penalty on Dense/Conv2D weights")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--save", help="write the trained model to this .npz checkpoint")
    t.add_argument("--plot", help="write loss/accuracy curves to this image (matplotlib)")
    t.set_defaults(fn=cmd_train)

    x = sub.add_parser("latex", help="write the derivations (every built-in layer by default) as LaTeX")
    x.add_argument("--layers", help="comma-separated built-in layer names (default: all, or the model's)")
    x.add_argument("--spec", help="a Python file defining ElementwiseSpec/ContractionSpec objects")
    x.add_argument("--model", help="add the composed chain rule of a named model (mlp, cnn, lenet, cifar_cnn)")
    x.add_argument("-o", "--output", default="derivations.tex")
    x.add_argument("--pdf", action="store_true", help="also compile with pdflatex (no shell escape)")
    x.set_defaults(fn=cmd_latex)

    e = sub.add_parser("evaluate", help="evaluate a saved checkpoint on a test split")
    e.add_argument("file")
    e.add_argument("--dataset", default="digits", choices=["digits", "mnist", "cifar10"])
    e.add_argument("--data-dir")
    e.set_defaults(fn=cmd_evaluate)

    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"symprop {args.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
