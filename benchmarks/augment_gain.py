"""What augmentation buys on digits: test accuracy of ``symprop train --model <model>`` (its
defaults: SGD, the model's epochs and weight decay) with and without ``--augment``, over seeds.

    python benchmarks/augment_gain.py [--model cnn] [--seeds 5] [--augment none shift rotate shift,rotate]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def run(model_name: str, augment: str | None, seed: int) -> float:
    from symprop.cli import load_data
    from symprop.runtime.named_models import MODELS
    from symprop.runtime.optimizer_defaults import MODEL_RECIPES
    from symprop import optimizers as O

    (X, y), (Xt, yt) = load_data("digits", None, "float32", model=model_name)
    model = MODELS[model_name](X.shape[1:], classes=10, seed=seed)
    recipe = MODEL_RECIPES[model_name]
    model.fit(X, y, epochs=recipe["epochs"], batch_size=32, optimizer=O.SGD(weight_decay=recipe["weight_decay"]),
              augment=augment, seed=seed, verbose=0)
    return model.evaluate(Xt, yt)["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn", choices=["cnn", "lenet"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--augment", nargs="+", default=["none", "shift", "rotate", "shift,rotate"])
    args = p.parse_args()
    print(f"digits {args.model}, test accuracy (%) over seeds 0..{args.seeds - 1}")
    base = None
    for aug in args.augment:
        t0 = time.perf_counter()
        accs = [100 * run(args.model, None if aug == "none" else aug, s) for s in range(args.seeds)]
        mean = float(np.mean(accs))
        base = mean if base is None else base
        print(f"{aug:>14}: {mean:6.2f} ± {np.std(accs):.2f}  ({', '.join(f'{a:.2f}' for a in accs)})  "
              f"{mean - base:+.2f} vs {args.augment[0]}  [{time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
