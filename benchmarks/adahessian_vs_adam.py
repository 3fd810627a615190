"""The thesis experiment: Adam vs AdaHessian on the bundled digits data.

The same models (the digits CNN of ``symprop train --model cnn`` and the MLP 64-512-10), the
same epochs, batch size and seeds; reports test accuracy (mean ± std over seeds) and wall time
per run, and writes a plot of the test-accuracy and training-loss curves (needs matplotlib:
``pip install 'symprop[plot]'``).

    python benchmarks/adahessian_vs_adam.py [--seeds 0,1,2] [--plot adahessian_vs_adam.png] [--json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

MODELS = {"cnn": {"epochs": 15, "weight_decay": 5e-4}, "mlp": {"epochs": 40, "weight_decay": 0.0}}
OPTIMIZERS = {"adam": {"lr": 1e-3}, "adahessian": {"lr": 0.15}}


def run(model_name: str, opt_name: str, seed: int, epochs: int, batch_size: int, threads: int) -> dict:
    from threadpoolctl import threadpool_limits

    from symprop.cli import load_data
    from symprop.runtime import optimizers as O
    from symprop.runtime.named_models import MODELS as BUILDERS

    (X, y), (Xt, yt) = load_data("digits", None, "float32", model=model_name)
    model = BUILDERS[model_name](X.shape[1:], classes=10, dtype="float32", seed=seed)
    kw = dict(OPTIMIZERS[opt_name], weight_decay=MODELS[model_name]["weight_decay"])
    if opt_name == "adahessian":
        kw["seed"] = seed
    opt = O.get_optimizer(opt_name, **kw)
    with threadpool_limits(threads):
        t0 = time.perf_counter()
        hist = model.fit(X, y, epochs=epochs, batch_size=batch_size, optimizer=opt, validation_data=(Xt, yt),
                         verbose=0, seed=seed)
        elapsed = time.perf_counter() - t0
    return {"model": model_name, "optimizer": opt_name, "seed": seed, "epochs": epochs,
            "test_accuracy": hist["val_accuracy"][-1], "time_s": elapsed,
            "val_accuracy": hist["val_accuracy"], "loss": hist["loss"]}


def plot(results: list[dict], path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot written (pip install 'symprop[plot]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(MODELS), figsize=(5 * len(MODELS), 7), squeeze=False)
    for col, m in enumerate(MODELS):
        for o in OPTIMIZERS:
            rs = [r for r in results if r["model"] == m and r["optimizer"] == o]
            if not rs:
                continue
            ep = np.arange(1, len(rs[0]["loss"]) + 1)
            for row, key in enumerate(("val_accuracy", "loss")):
                curves = np.array([r[key] for r in rs])
                mean = curves.mean(axis=0)
                ax = axes[row, col]
                ax.plot(ep, mean, label=f"{o} ({len(rs)} seeds)")
                ax.fill_between(ep, curves.min(axis=0), curves.max(axis=0), alpha=0.2)
                ax.set_xlabel("epoch")
                ax.set_ylabel("test accuracy" if key == "val_accuracy" else "training loss")
                if key == "loss":
                    ax.set_yscale("log")
                ax.set_title(f"digits {m}")
                ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--models", default=",".join(MODELS), help=f"subset of {list(MODELS)}")
    ap.add_argument("--epochs", type=int, default=None, help="override the per-model epochs "
                    + str({k: v['epochs'] for k, v in MODELS.items()}))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot", default="adahessian_vs_adam.png")
    ap.add_argument("--json", action="store_true", help="print all results as JSON")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    for m in models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}; choose from {list(MODELS)}")
    results = []
    for m in models:
        for o in OPTIMIZERS:
            for s in seeds:
                r = run(m, o, s, args.epochs or MODELS[m]["epochs"], args.batch_size, args.threads)
                results.append(r)
                print(f"  {m:4s} {o:10s} seed {s}: test accuracy {r['test_accuracy']:.4f} "
                      f"({r['time_s']:.1f} s)", flush=True)
    print(f"\n{'model':6s} {'optimizer':11s} {'epochs':>6s} {'test accuracy (mean ± std)':>28s} {'time/run':>9s}")
    for m in models:
        for o in OPTIMIZERS:
            rs = [r for r in results if r["model"] == m and r["optimizer"] == o]
            acc = np.array([r["test_accuracy"] for r in rs])
            t = np.mean([r["time_s"] for r in rs])
            print(f"{m:6s} {o:11s} {rs[0]['epochs']:6d} {100 * acc.mean():20.2f} ± {100 * acc.std():.2f} %"
                  f" {t:8.1f}s   (seeds {', '.join(f'{100 * a:.2f}' for a in acc)})")
    if args.plot:
        plot(results, args.plot)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
