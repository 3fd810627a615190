"""The ``symprop`` command line: generate kernels, export derivations, train and evaluate models."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .runtime.optimizer_defaults import DEFAULTS, DIVERGENCE_FACTOR, MODEL_RECIPES   # kernel-free: parse without kernels


def _source_root() -> Path:
    """The checkout the user stands in (the folder holding pyproject.toml and generated/)."""
    here = Path.cwd()
    for p in [here, *here.parents]:
        if (p / "pyproject.toml").exists() and (p / "codegen").is_dir():
            return p
    raise ValueError(f"no symprop checkout at or above {here}: `symprop generate` writes the checkout's "
                     f"generated/ folder; run it inside the source tree or pass --out DIR")


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
    print(f"wrote or removed {len(drift)} changed file(s) in {out}" + (f": {', '.join(drift)}" if drift else "")
          + f" ({time.perf_counter() - t0:.1f} s); reinstall (pip install .) to compile them")
    return 0


DEFAULT_EPOCHS = {k: v["epochs"] for k, v in MODEL_RECIPES.items()}
#: Newton's recipe: the full Hessian of a small MLP, large batches (a Newton step on 32
#: samples overfits the batch), strong damping
NEWTON_HIDDEN, NEWTON_BATCH, NEWTON_EPOCHS = 16, 256, 10
SCHEDULE_NAMES = ("constant", "step", "exponential", "cosine", "cosine_restarts", "linear", "warmup",
                  "warmup_cosine")


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


def _writable(path: str, flag: str) -> None:
    """Refuse, before any training, an output path that cannot be written."""
    import os
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir() or path.endswith(("/", os.sep)) or not p.name:
        raise ValueError(f"{flag} {path}: is a directory")
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(f"{flag} {path}: not writable")
    import tempfile   # a real write in the folder (as root, os.access says yes to /proc and read-only mounts)
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".symprop-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write in {parent} ({exc.strerror or exc})") from None


def _save_or_recover(model, path: str):
    """Save the trained model; if that fails, save it to a recovery file (current folder, else
    the temporary folder) and raise an error naming both, so training is never lost."""
    import os
    import tempfile
    try:
        return model.save(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        for folder in (Path.cwd(), Path(tempfile.gettempdir())):
            recovery = folder / f"symprop-recovered-{os.getpid()}.npz"
            try:
                model.save(recovery)
            except OSError:
                continue
            raise ValueError(f"--save {path}: could not write it ({reason}); the trained model is in {recovery}") \
                from exc
        raise ValueError(f"--save {path}: could not write it ({reason}), nor a recovery file in "
                         f"{Path.cwd()} or {tempfile.gettempdir()}") from exc


def build_model(args, X, y, yt):
    from .runtime.named_models import MODELS

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
    return MODELS[args.model](X.shape[1:], classes=int(max(y.max(), yt.max())) + 1, dtype=args.dtype,
                              seed=args.seed, **kw)


def _newton_defaults(args) -> None:
    """Newton's recipe, applied to what the user left unset (see NEWTON_*)."""
    if args.optimizer != "newton":
        return
    if args.hidden is None and args.model == "mlp":
        args.hidden = NEWTON_HIDDEN
    if args.batch_size is None:
        args.batch_size = NEWTON_BATCH
    if args.epochs is None:
        args.epochs = NEWTON_EPOCHS


def _factor(text: str):
    """``--divergence-factor``: a number, or none for no bound."""
    if text.strip().lower() == "none":
        return None
    return float(text)


def optimizer_kwargs(args) -> dict:
    """The optimizer's keyword arguments from the flags: what the user gave, the model's weight
    decay (MODEL_RECIPES) when not, and the table's defaults (DEFAULTS, as in Python) for the rest."""
    given = {"lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
             "update_each": args.update_each, "damping": args.damping, "reuse_trust": args.reuse_trust}
    okw = {k: v for k, v in given.items() if v is not None}
    for k in okw:
        if k not in DEFAULTS[args.optimizer]:
            raise ValueError(f"--{k.replace('_', '-')} does not apply to --optimizer {args.optimizer}")
    if args.weight_decay is None and args.optimizer not in ("adamw", "newton"):
        okw["weight_decay"] = MODEL_RECIPES[args.model]["weight_decay"]
    if args.optimizer == "adahessian":
        okw["seed"] = args.seed
    return okw


def cmd_train(args) -> int:
    from .runtime import optimizers as O
    from .runtime.curvature import MAX_FULL_HESSIAN_PARAMS
    from .runtime.schedules import get_schedule

    _newton_defaults(args)
    if args.hidden is None:
        args.hidden = 512
    if args.batch_size is None:
        args.batch_size = 32
    for flag, v in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--hidden", args.hidden),
                    ("--early-stopping", args.early_stopping), ("--update-each", args.update_each)):
        if v is not None and v < 1:
            raise ValueError(f"{flag} must be a positive integer, got {v}")
    if args.save:
        if args.save.endswith(("/", "\\")) or Path(args.save).name in ("", ".", ".."):
            raise ValueError(f"--save {args.save}: is a directory; name a file in it (e.g. "
                             f"{Path(args.save) / 'model.npz'})")
        _writable(args.save if args.save.endswith(".npz") else args.save + ".npz", "--save")
    if args.plot:
        from . import plot
        _writable(args.plot, "--plot")
        plot.check_path(args.plot)
    augment = None
    if args.augment is not None:
        from .runtime.augment import get_transform
        augment = get_transform(args.augment)
    okw = optimizer_kwargs(args)
    if args.early_stopping and not args.validation_split:
        raise ValueError("--early-stopping watches the validation loss: give --validation-split too (e.g. 0.1)")
    (X, y), (Xt, yt) = load_data(args.dataset, args.data_dir, args.dtype, model=args.model)
    model = build_model(args, X, y, yt)
    n_params = sum(p.size for p in model.parameters())
    if args.optimizer == "newton" and n_params > MAX_FULL_HESSIAN_PARAMS:
        raise ValueError(f"--optimizer newton forms the full {n_params:,} x {n_params:,} Hessian; the limit is "
                         f"{MAX_FULL_HESSIAN_PARAMS:,} parameters. Use the MLP with a small hidden layer "
                         f"(`--model mlp --hidden {NEWTON_HIDDEN}`, the default for newton) or a first-order optimizer")
    epochs = args.epochs or DEFAULT_EPOCHS[args.model]
    opt = O.get_optimizer(args.optimizer, **okw)
    sched = get_schedule(args.schedule, epochs) if args.schedule else None
    if args.summary:
        model.summary()
    extra = "".join([f", schedule {args.schedule}" if sched else "",
                     f", clip norm {args.clip_norm}" if args.clip_norm else "",
                     f", clip value {args.clip_value}" if args.clip_value else "",
                     f", validation split {args.validation_split}" if args.validation_split else "",
                     f", early stopping {args.early_stopping}" if args.early_stopping else "",
                     f", augment {args.augment}" if augment is not None else ""])
    dist = None
    if args.distributed:
        from .runtime.distributed import Distributed
        dist = Distributed()
        extra += f", distributed over {dist.size} MPI ranks"
    lead = dist is None or dist.rank == 0     # only rank 0 prints, saves and plots
    if lead:
        print(f"symprop train: {args.model} ({len(model.layers)} layers, {n_params:,} parameters) on {args.dataset} "
              f"{'x'.join(map(str, X.shape[1:]))}: {len(X)} train / {len(Xt)} test, {opt!r}, "
              f"batch {args.batch_size}, {epochs} epochs{extra}, {args.dtype}, seed {args.seed}", flush=True)
    t0 = time.perf_counter()
    hist = model.fit(X, y, epochs=epochs, batch_size=args.batch_size, optimizer=opt, schedule=sched,
                     clip_norm=args.clip_norm, clip_value=args.clip_value,
                     validation_split=args.validation_split or 0.0, early_stopping=args.early_stopping,
                     verbose=1, seed=args.seed, distributed=dist if dist is not None else False, augment=augment,
                     divergence_factor=args.divergence_factor)
    train_time = time.perf_counter() - t0
    if not lead:
        return 0
    ev = model.evaluate(Xt, yt)
    print(f"final test accuracy {ev['accuracy']:.4f}  test loss {ev['loss']:.4f}  "
          f"({train_time:.1f} s)")
    if args.save:
        print(f"saved {_save_or_recover(model, args.save)}")
    if args.plot:
        from . import plot
        plot.history(hist, args.plot, f"{args.model} on {args.dataset}, {args.optimizer}"
                     + (f", {args.schedule}" if sched else "") + f": test accuracy {ev['accuracy']:.4f}")
        print(f"wrote {args.plot}")
    return 0


MODEL_INPUTS = {"mlp": (64,), "cnn": (1, 8, 8), "lenet": (1, 32, 32), "cifar_cnn": (3, 32, 32)}


def cmd_summary(args) -> int:
    from .runtime.named_models import MODELS

    if args.model not in MODELS:
        raise ValueError(f"unknown model {args.model!r}; choose from {sorted(MODELS)}")
    kw = {"hidden": args.hidden} if args.model == "mlp" else {}
    MODELS[args.model](MODEL_INPUTS[args.model], classes=10, **kw).summary()
    return 0


def _model_info(name: str):
    """A named model, as ``symprop train`` builds it, described for the document (configs,
    shapes, parameter counts). The builders of ``runtime/named_models.py`` run on the real layers:
    kernels bind at first use, so building a model needs none compiled."""
    from . import document as latex
    from .runtime.named_models import MODELS

    if name not in MODEL_INPUTS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODEL_INPUTS)}")
    shape = MODEL_INPUTS[name]
    model = MODELS[name](shape, classes=10)
    info = latex.describe_model(name, shape, [la.config() for la in model.layers], loss=model.loss.name,
                                origin=f" that {latex.command_tex('symprop train --model ' + name)} builds")
    info.schedule = _recorded_schedule(name, model)
    return info


def _recorded_schedule(name: str, model):
    """The kernels each call of the named model runs, recorded by the sweep engine on a tiny
    batch (``runtime/sweep.py``); without compiled kernels, a clear error before any deriving."""
    from .runtime.sweep import record_schedule
    try:
        return record_schedule(model)
    except ImportError as exc:
        raise ValueError(f"latex --model {name}: the document's kernel schedule is recorded by running the "
                         f"model, which needs the compiled kernels ({exc}); run `pip install .` first, or "
                         f"leave out --model") from exc


def _load_specs(path: str) -> list:
    """ElementwiseSpec/ContractionSpec/CompositeSpec/PointwiseLossSpec objects defined at the top
    level of a user's Python file (a loss from ``losses.from_sympy`` counts by its spec)."""
    import runpy

    from .derive import ContractionSpec, ElementwiseSpec
    from .derive.composite import CompositeSpec
    from .derive.losses import PointwiseLossSpec

    if not Path(path).is_file():
        raise FileNotFoundError(f"--spec: no such file {path}")
    kinds = (ElementwiseSpec, ContractionSpec, CompositeSpec, PointwiseLossSpec)
    values = runpy.run_path(path).values()
    found = [v for v in values if isinstance(v, kinds)]
    found += [v.spec for v in values if isinstance(getattr(v, "spec", None), PointwiseLossSpec) and v.spec not in found
              and not getattr(v, "builtin", False)]   # a built-in loss (Huber) is in the losses section
    if not found:
        raise ValueError(f"--spec {path}: defines no ElementwiseSpec, ContractionSpec, CompositeSpec or loss "
                         f"spec at top level")
    return found


def cmd_latex(args) -> int:
    from . import document as latex

    layers = None
    if args.layers is not None:
        layers = [s.strip() for s in args.layers.split(",") if s.strip()]
        if not layers:
            raise ValueError(f"--layers {args.layers!r}: names no layer; built-ins are "
                             f"{', '.join(latex.builtin_layer_names())}")
    model = None
    if args.model:
        model = _model_info(args.model)
        if layers is None:
            known = latex.builtin_layer_names()
            layers = list(dict.fromkeys(la.spec for la in model.layers if la.spec in known))
    extra = _load_specs(args.spec) if args.spec else []
    if args.spec and layers is None:
        layers = []
    t0 = time.perf_counter()
    out = Path(args.output)
    if out.suffix.lower() == ".pdf":
        raise ValueError(f"-o {out}: give the .tex file; --pdf writes the PDF beside it")
    if out.is_dir():
        raise ValueError(f"-o {out}: is a directory")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise ValueError(f"-o {out}: folder {out.parent} does not exist")
    n = len(latex.builtin_layer_names() if layers is None else layers) + len(extra)
    print(f"deriving {n} layer{'s' if n != 1 else ''} and the losses"
          + (", the Taylor-mode rules" if args.taylor else "")
          + (f", and the model {args.model}" if model else "") + " ...", flush=True)
    text = latex.document(layers=layers, extra=extra, model=model, taylor=args.taylor)
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

    if Path(args.file).is_dir():
        raise ValueError(f"{args.file}: is a directory, not a checkpoint")
    if not Path(args.file).is_file():
        raise ValueError(f"{args.file}: no such file")
    try:
        model = Sequential.load(args.file)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{args.file}: not a readable symprop checkpoint ({' '.join(str(exc).split())})") from exc
    (_, _), (Xt, yt) = load_data(args.dataset, args.data_dir, model.dtype.name, input_shape=model.input_shape)
    if not model.loss.classification:
        ev = model.evaluate(Xt, yt, metrics=["mae", "rmse", "r2"])
        print(f"test loss {ev['loss']:.4f}  MAE {ev['mae']:.4f}  RMSE {ev['rmse']:.4f}  R² {ev['r2']:.4f}  "
              f"({len(Xt)} {args.dataset} test samples)")
        return 0
    ev = model.evaluate(Xt, yt, metrics=["f1", "f1_micro", "confusion_matrix"])
    print(f"test accuracy {ev['accuracy']:.4f}  test loss {ev['loss']:.4f}  macro F1 {ev['f1']:.4f}  "
          f"({len(Xt)} {args.dataset} test samples)")
    print()
    for line in class_report(ev["confusion_matrix"]):
        print(line)
    return 0


def class_report(C) -> list[str]:
    """Per-class precision, recall, F1 and support, then the confusion matrix (rows: true
    class, columns: predicted), as text lines."""
    import numpy as np

    from .runtime.metrics import per_class
    true = C.sum(axis=1)
    p, r, f = per_class(np.diag(C), C.sum(axis=0), true)
    lines = [f"{'class':>5}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"]
    lines += [f"{k:>5}  {p[k]:>9.4f}  {r[k]:>6.4f}  {f[k]:>6.4f}  {true[k]:>7}" for k in range(len(C))]
    w = max(4, len(str(int(C.max()))) + 1)
    lines += ["", "confusion matrix (rows: true class, columns: predicted)",
              " " * 6 + "".join(f"{k:>{w}}" for k in range(len(C)))]
    lines += [f"{k:>5} " + "".join(f"{v:>{w}}" for v in row) for k, row in enumerate(C)]
    return lines


def cmd_pinn(args) -> int:
    """Train a named PDE problem (symprop.pinn.PROBLEMS) and report the error per epoch."""
    import time

    from . import pinn
    from .runtime.optimizers import Adam
    factory, width, depth, kw = pinn.PROBLEMS[args.problem]
    problem = factory()
    epochs = args.epochs if args.epochs is not None else kw["epochs"]
    lbfgs = args.lbfgs if args.lbfgs is not None else kw.get("lbfgs", 0)
    if epochs < 0 or lbfgs < 0 or epochs + lbfgs < 1:
        raise ValueError(f"--epochs must be at least 1 (or --lbfgs at least 1), got {epochs} and {lbfgs}")
    model = pinn.mlp(len(problem.coords), width=args.width or width, depth=args.depth or depth,
                     dtype=args.dtype, seed=args.seed)
    term = problem.interior
    form = "u = " + " + ".join(([f"{problem.lift}"] if problem.lift is not None else []) +
                               [f"({problem.hard})·N" if problem.hard is not None else "N"])
    print(f"{args.problem}: {term.expr} = 0 on {dict(zip(map(str, problem.coords), problem.box.tolist()))}")
    print(f"  with {form}: needs {', '.join(term.needs)} ({term.describe()}); network {len(problem.coords)}-"
          f"{'-'.join([str(args.width or width)] * (args.depth or depth))}-1 tanh, "
          f"{sum(p.size for p in model.parameters())} parameters, {args.dtype}")
    if args.latex:
        out = Path(args.latex)
        if not (out.parent if str(out.parent) else Path(".")).is_dir() or out.is_dir():
            raise ValueError(f"--latex {out}: not a file in an existing folder")
        problem.latex(out, model=model)
        print(f"wrote {out} (the residual, its derivatives and the network's Taylor-mode sweep)")
    t0 = time.perf_counter()
    fit = {**pinn.fit_arguments(problem, kw), "epochs": epochs, "lbfgs": lbfgs, "points": args.points or kw["points"]}
    if "point_weights" in fit:
        print(f"  causal weights along {kw['causal'][0]} (eps {kw['causal'][1]:g}) in the Adam steps")
    hist = problem.fit(model, optimizer=Adam(lr=args.lr if args.lr is not None else kw["lr"]),
                       seed=args.seed, log_every=args.log_every, **fit)
    print(f"{args.problem}: relative L2 error {hist.error[-1]:.3e} after {epochs} epochs"
          + (f" and {hist.epoch[-1] - epochs} L-BFGS iterations" if lbfgs else "")
          + f", {time.perf_counter() - t0:.1f} s")
    if args.plot:
        problem.plot(model, args.plot)
        print(f"wrote {args.plot}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``symprop`` argument parser (every subcommand and flag)."""
    p = _Parser(prog="symprop", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="regenerate the Cython kernels under generated/")
    g.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file differs")
    g.add_argument("--out", help="output folder (default: ./generated of the checkout)")
    g.set_defaults(fn=cmd_generate)

    t = sub.add_parser("train", help="train a model on digits (bundled), MNIST or CIFAR-10 (local files)")
    t.add_argument("--model", default="mlp", choices=["mlp", "cnn", "lenet", "cifar_cnn"])
    t.add_argument("--dataset", default="digits", choices=["digits", "mnist", "cifar10"])
    t.add_argument("--data-dir", help="folder with the MNIST IDX files or the CIFAR-10 binary batches")
    t.add_argument("--epochs", type=int, default=None,
                   help="default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items())
                   + f"; newton {NEWTON_EPOCHS}")
    t.add_argument("--batch-size", type=int, default=None, help=f"default 32; newton {NEWTON_BATCH}")
    t.add_argument("--optimizer", default="sgd", choices=list(DEFAULTS),
                   help="nesterov is SGD with Nesterov momentum; newton needs a model of at most 5000 "
                        f"parameters (default for it: --model mlp --hidden {NEWTON_HIDDEN})")
    t.add_argument("--lr", type=float, default=None,
                   help="initial learning rate; default: " + ", ".join(f"{k} {v['lr']}" for k, v in DEFAULTS.items()))
    t.add_argument("--schedule", choices=SCHEDULE_NAMES,
                   help="per-epoch learning-rate schedule (torch.optim.lr_scheduler values), sized to --epochs")
    t.add_argument("--momentum", type=float, default=None,
                   help="momentum of sgd, nesterov, rmsprop; default: " + ", ".join(
                       f"{k} {v['momentum']}" for k, v in DEFAULTS.items() if "momentum" in v))
    t.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay; default: the model's (" + ", ".join(
                       f"{k} {v['weight_decay']}" for k, v in MODEL_RECIPES.items()) + "); adamw (decoupled) "
                   f"{DEFAULTS['adamw']['weight_decay']}")
    t.add_argument("--clip-norm", type=float, help="clip gradients to this global L2 norm")
    t.add_argument("--clip-value", type=float, help="clip gradients elementwise to [-X, X]")
    t.add_argument("--validation-split", type=float, default=0.0,
                   help="hold out this fraction of the training data for the val_* columns (never the test set)")
    t.add_argument("--early-stopping", type=int, metavar="N",
                   help="stop after N epochs without a lower validation loss; keep the best epoch's weights")
    t.add_argument("--update-each", type=int, default=None, help="AdaHessian: re-estimate the Hessian "
                   "diagonal every N steps (default 1)")
    t.add_argument("--reuse-trust", type=float, default=None, help="AdaHessian with --update-each > 1: "
                   "re-estimate instead of reusing when a step would exceed this many times the last fresh "
                   "step's largest (default 2)")
    t.add_argument("--damping", type=float, default=None, help="Newton: damping added to |eigenvalues| "
                   f"(default {DEFAULTS['newton']['damping']})")
    t.add_argument("--hidden", type=int, default=None, help=f"MLP hidden units (default 512; newton {NEWTON_HIDDEN})")
    t.add_argument("--activation", default="relu", choices=_activation_names(),
                   help="any registered activation (derive/builtins.py)")
    t.add_argument("--dropout", type=float, default=0.0, help="dropout probability (mlp, cnn)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: run as mpiexec -n P symprop train --distributed ...")
    t.add_argument("--batchnorm", action="store_true",
                   help="batch normalization before each hidden activation (mlp, cnn)")
    t.add_argument("--l1", type=float, default=0.0, help="l1 penalty on Dense/Conv2D weights")
    t.add_argument("--l2", type=float, default=0.0, help="(l2/2)·ΣW² penalty on Dense/Conv2D weights")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--summary", action="store_true", help="print the model summary before training")
    t.add_argument("--save", help="write the trained model to this .npz checkpoint")
    t.add_argument("--plot", help="write loss/accuracy/learning-rate curves to this image (matplotlib; "
                   "symprop.plot.history draws the same from Python)")
    t.add_argument("--divergence-factor", type=_factor, default=DIVERGENCE_FACTOR, metavar="X|none",
                   help="stop when a batch loss exceeds X times the first batch's (or an uninformed "
                        f"predictor's) loss; none turns the check off (default {DIVERGENCE_FACTOR:g})")
    t.add_argument("--augment", metavar="NAMES",
                   help="augment every training batch (image models): comma-separated shift, rotate, flip, "
                        "noise, e.g. shift,rotate")
    t.set_defaults(fn=cmd_train)

    m = sub.add_parser("summary", help="print a named model's layers, output shapes and parameter counts")
    m.add_argument("--model", default="mlp", choices=["mlp", "cnn", "lenet", "cifar_cnn"])
    m.add_argument("--hidden", type=int, default=512, help="MLP hidden units")
    m.set_defaults(fn=cmd_summary)

    x = sub.add_parser("latex", help="write the derivations (every built-in layer by default) as LaTeX")
    x.add_argument("--layers", help="comma-separated built-in layer names, e.g. tanh,conv2d,batchnorm "
                   "(default: all, or the model's; an unknown name lists them)")
    x.add_argument("--spec", help="a Python file defining ElementwiseSpec/ContractionSpec/CompositeSpec objects")
    x.add_argument("--model", choices=sorted(MODEL_INPUTS),
                   help="add the composed chain rule of a named model (its layers, shapes and kernels)")
    x.add_argument("-o", "--output", default="derivations.tex", help="the .tex file to write (default: %(default)s)")
    x.add_argument("--pdf", action="store_true",
                   help="also compile with pdflatex (no shell escape) into the same name with .pdf")
    x.add_argument("--taylor", action="store_true",
                   help="add the Taylor-mode part: each activation's Taylor rules and, with --model, its "
                        "forward-Laplacian sweep")
    x.set_defaults(fn=cmd_latex)

    e = sub.add_parser("evaluate", help="evaluate a saved checkpoint on a test split")
    e.add_argument("file")
    e.add_argument("--dataset", default="digits", choices=["digits", "mnist", "cifar10"])
    e.add_argument("--data-dir")
    e.set_defaults(fn=cmd_evaluate)

    u = sub.add_parser("tune", help="measure the GEMM providers (SciPy's BLAS, [openblas], [mkl]) per shape class "
                       "on this CPU and cache the fastest (docs/performance.md)")
    u.add_argument("--keep", action="store_true", help="measure only classes not measured yet on this CPU")
    u.add_argument("--json", action="store_true", help="print the report as JSON")
    u.add_argument("--no-validate", action="store_true",
                   help="skip timing the built-in models' whole steps (a class a step runs slower with is "
                        "kept on SciPy's BLAS)")
    u.set_defaults(fn=cmd_tune)

    q = sub.add_parser("pinn", help="train a physics-informed network on a PDE written in SymPy (symprop.pinn)")
    q.add_argument("--problem", default="poisson2d",
                   choices=["poisson2d", "heat1d", "burgers1d", "allen_cahn1d", "helmholtz2d"])
    q.add_argument("--epochs", type=int, default=None, help="Adam steps; default: the problem's (poisson2d 1000)")
    q.add_argument("--lbfgs", type=int, default=None,
                   help="L-BFGS iterations after the Adam steps (default: the problem's; poisson2d 0)")
    q.add_argument("--points", type=int, default=None, help="collocation points (default: the problem's)")
    q.add_argument("--lr", type=float, default=None, help="Adam's learning rate (default: the problem's)")
    q.add_argument("--width", type=int, default=None, help="hidden units per layer")
    q.add_argument("--depth", type=int, default=None, help="hidden layers")
    q.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--log-every", type=int, default=100, help="print loss and error every N epochs")
    q.add_argument("--plot", help="write solution, reference and error to this image")
    q.add_argument("--latex", metavar="FILE.tex", help="write the problem's derivation as LaTeX before training")
    q.set_defaults(fn=cmd_pinn)

    return p


def cmd_tune(args) -> int:
    """Time every installed GEMM provider on the built-in and seen shape classes; print the choice."""
    import json
    import os

    from .runtime import gemm_providers as G
    if os.environ.get("SYMPROP_GEMM"):
        raise ValueError(f"SYMPROP_GEMM={os.environ['SYMPROP_GEMM']} forces a provider; unset it to tune")
    os.environ["SYMPROP_GEMM_TUNE"] = "0"       # no start-up measuring before ours
    from .runtime.kernels import load
    load("dense")
    providers = G.available()
    G.tune(providers=providers, force=not args.keep)
    checked = [] if args.no_validate or not providers else G.validate_builtin()
    rep = G.report()
    if args.json:
        print(json.dumps({**rep, "validated": checked}, indent=1))
        return 0
    cpu = rep["cpu"]
    print(f"CPU: {cpu['name']} (family {cpu['family']} model {cpu['model']}); SciPy's BLAS: {rep['scipy_blas']}")
    if not providers:
        print("no other GEMM provider installed (pip install 'symprop[openblas]' or 'symprop[mkl]'): "
              "every product runs on SciPy's BLAS")
        return 0
    print("providers: " + ", ".join(f"{n} {p['version']}" for n, p in rep["providers"].items()))
    names = ["scipy"] + list(rep["providers"])
    print(f"{'dtype':8s} {'split':5s} {'op':3s} {'M':>5s} {'N':>5s} {'K':>5s}  "
          + " ".join(f"{n + ' us':>11s}" for n in names) + "  choice    saved")
    for c in rep["classes"]:
        print(f"{c['dtype']:8s} {'yes' if c['split'] else 'no':5s} {c['op']:3s} {c['M']:5d} {c['N']:5d} {c['K']:5d}  "
              + " ".join(f"{c['us'].get(n, float('nan')):11.1f}" for n in names)
              + f"  {c['choice']:8s} {100 * c['saved']:4.0f}%" + ("  (overruled by a whole step)" if c.get("overruled") else ""))
    for r in checked:
        ms = ", ".join(f"{k} {v:.3f}" for k, v in r["ms"].items())
        print(f"whole step, {r['model']}: " + (f"ms {ms}; kept: {', '.join(r['kept']) or 'SciPy only'}"
                                                if r["ms"] else "every product on SciPy's BLAS already"))
    print(f"cached in {G.cache_path()}")
    return 0


def main(argv=None) -> int:
    try:
        p = parser()   # imports the runtime: a forced GEMM provider that is absent fails here
    except Exception as exc:  # noqa: BLE001 — one line, never a traceback
        print(f"symprop: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 2
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print(f"symprop {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:   # a user-facing tool: one line, never a traceback
        kind = "" if isinstance(exc, (ValueError, TypeError, FileNotFoundError)) else f"{type(exc).__name__}: "
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"symprop {args.cmd}: error: {kind}{msg}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2), the usage left to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


if __name__ == "__main__":
    sys.exit(main())
