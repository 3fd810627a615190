"""Collapsed Taylor jets against plain jets for the biharmonic, side by side in one process.

The residual Δ²u − 1 of an MLP d-64-64-64-1 tanh at 4,096 points (float32), loss and parameter
gradient through ``pinn.Problem(..., propagation=...)``: ``"collapsed"`` carries the order-4
coefficient as one weighted sum over the m directions (2 + 3m blocks per layer), ``"jet"`` as m
blocks (1 + 4m). The two are interleaved in every repeat (the machine's noise hits both); the
median of the repeats and the ratio are printed, with the agreement of loss and gradient.

    python benchmarks/collapsed_jets.py [--dims 2,3] [--threads 1] [--repeats 7] [--points 4096]
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def one_case(d: int, points: int, repeats: int) -> str:
    import numpy as np
    import sympy as sp

    from symprop import pinn
    c = sp.symbols(f"x0:{d}")
    u = sp.Function("u")(*c)

    def lap(e):
        return sum(e.diff(v, 2) for v in c)
    problems = {p: pinn.Problem(residual=lap(lap(u)) - 1, domain={v: (0, 1) for v in c}, propagation=p)
                for p in ("collapsed", "jet")}
    model = pinn.mlp(d, width=64, depth=3, dtype="float32", seed=0)
    X = np.random.default_rng(0).random((points, d)).astype(np.float32)
    out = {p: pr.loss_and_grad(model, X) for p, pr in problems.items()}
    diff = max(float(np.abs(a - b).max() / (np.abs(b).max() + 1e-30)) for a, b in zip(out["collapsed"][1], out["jet"][1]))
    times = {p: [] for p in problems}
    for _ in range(repeats):
        for p, pr in problems.items():
            pr.loss_and_grad(model, X)
            t = time.perf_counter()
            for _ in range(3):
                pr.loss_and_grad(model, X)
            times[p].append((time.perf_counter() - t) / 3)
    a, b = np.median(times["collapsed"]), np.median(times["jet"])
    blocks = {p: pr.interior.cost for p, pr in problems.items()}
    return (f"biharmonic d={d}: collapsed ({blocks['collapsed']} blocks) {a * 1e3:.1f} ms, jets ({blocks['jet']} "
            f"blocks) {b * 1e3:.1f} ms, ratio {a / b:.2f} (blocks {blocks['collapsed'] / blocks['jet']:.2f}); "
            f"loss {out['collapsed'][0]:.6g} vs {out['jet'][0]:.6g}, gradient relative difference {diff:.1e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="2,3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--points", type=int, default=4096)
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):   # before any library loads
        os.environ[var] = str(args.threads)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from pinn_bench import cpu_line
    from threadpoolctl import threadpool_limits
    print(cpu_line(), flush=True)
    print(f"{args.threads} thread(s), {args.points} points, float32, median of {args.repeats} repeats", flush=True)
    with threadpool_limits(args.threads):
        for d in [int(v) for v in args.dims.split(",") if v]:
            print(one_case(d, args.points, args.repeats), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
