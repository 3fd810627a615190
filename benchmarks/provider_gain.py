"""What the GEMM providers chosen by measurement save, on a busy machine: symprop with the
tuner's choice, symprop with every GEMM on SciPy's BLAS (``gemm_providers.using("scipy")``) and
PyTorch, interleaved round by round in one process; the *least* time over many short rounds
(another process can only slow a round down, so the minimum is the least disturbed).

    OMP_NUM_THREADS=1 python benchmarks/provider_gain.py [--cases mlp,cifar] [--rounds 12]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def least(fn, ctx, number):
    with ctx():
        fn()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="mlp,cifar")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import bench
    import torch
    from symprop.runtime import gemm_providers as G
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    G.setup()
    out = {"cpu": G.cpu(), "threads": torch.get_num_threads(), "providers": G.report()["providers"], "rows": []}
    for case in args.cases.split(","):
        name, model, batch, fns = bench.step_pairs(case)
        for what, (s, t) in fns.items():
            t0 = time.perf_counter()
            s()
            number = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
            runs = {"chosen": [], "scipy": [], "torch": []}
            for _ in range(args.rounds):
                runs["chosen"].append(least(s, contextlib.nullcontext, number))
                runs["scipy"].append(least(s, lambda: G.using("scipy"), number))
                runs["torch"].append(least(t, contextlib.nullcontext, number))
            b = {k: min(v) for k, v in runs.items()}
            row = {"case": name, "what": what, **{f"{k}_ms": 1e3 * v for k, v in b.items()},
                   "ratio_torch": b["chosen"] / b["torch"], "ratio_torch_scipy_gemm": b["scipy"] / b["torch"],
                   "saved": 1 - b["chosen"] / b["scipy"]}
            out["rows"].append(row)
            if not args.json:
                print(f"{name:26s} {what:10s} chosen {row['chosen_ms']:8.3f} ms, SciPy's BLAS {row['scipy_ms']:8.3f}, "
                      f"torch {row['torch_ms']:8.3f}; s/torch {row['ratio_torch']:.2f} (SciPy's BLAS "
                      f"{row['ratio_torch_scipy_gemm']:.2f}); saved {100 * row['saved']:.0f} %", flush=True)
        out.setdefault("layers", {})[name] = G.layer_report(model, batch)
    if args.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
