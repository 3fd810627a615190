"""Every accuracy the README quotes from `symprop train`, run at 1 and at 2 OpenMP threads in
fresh processes: prints each run's test accuracy and whether the two agree exactly (a seeded
run is bitwise identical at any thread count). Takes about 10 minutes on 2 cores.

    python benchmarks/readme_accuracies.py [--threads 1 2] [--only cnn]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

#: (label, CLI arguments after `symprop train`) — the README's figures
RUNS = [
    ("quick start MLP", []),
    ("quick start CNN", ["--model", "cnn"]),
    ("CNN batchnorm dropout", ["--model", "cnn", "--batchnorm", "--dropout", "0.25"]),
    ("CNN batchnorm dropout adamw cosine", ["--model", "cnn", "--batchnorm", "--dropout", "0.25", "--optimizer",
                                           "adamw", "--schedule", "cosine", "--validation-split", "0.1",
                                           "--early-stopping", "5"]),
    ("CNN adahessian", ["--model", "cnn", "--optimizer", "adahessian"]),
    *[(f"CNN adahessian update-each {n}{' ' + ' '.join(extra) if extra else ''}",
       ["--model", "cnn", "--optimizer", "adahessian", "--update-each", str(n), *extra])
      for extra in ([], ["--schedule", "cosine"], ["--lr", "0.1"]) for n in (2, 5)],
    *[(f"CNN adahessian update-each 5 cosine seed {s}",
       ["--model", "cnn", "--optimizer", "adahessian", "--update-each", "5", "--schedule", "cosine", "--seed", str(s)])
      for s in range(1, 10)],
    ("CNN augment shift", ["--model", "cnn", "--augment", "shift"]),
    ("Newton MLP, 3 epochs", ["--optimizer", "newton", "--epochs", "3"]),
]


def run(args: list[str], threads: int) -> tuple[str, float]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "train", *args], capture_output=True, text=True,
                       env=env, timeout=3600)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        return f"error: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}", elapsed
    m = re.search(r"final test accuracy (\S+)\s+test loss (\S+)", r.stdout)
    return (f"{100 * float(m.group(1)):.2f} % (loss {m.group(2)})" if m else "no result line"), elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--only", help="run only the labels containing this text")
    args = p.parse_args()
    agree = 0
    runs = [r for r in RUNS if not args.only or args.only in r[0]]
    for label, cli in runs:
        results = [run(cli, t) for t in args.threads]
        same = len({r for r, _ in results}) == 1
        agree += same
        cells = "  ".join(f"{t} thr: {r} [{s:.0f} s]" for t, (r, s) in zip(args.threads, results))
        print(f"{label:<45} {cells}  {'same' if same else 'DIFFERENT'}", flush=True)
    print(f"{agree}/{len(runs)} identical across {args.threads} threads")


if __name__ == "__main__":
    main()
