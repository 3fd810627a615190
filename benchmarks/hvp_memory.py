"""Working memory of gradient + exact HVP: symprop's ``model.hvp`` against PyTorch's double
backward, side by side, on the benchmark's models (default: the CIFAR-style CNN at batch 256).

Each library runs in a fresh subprocess of its own (peak RSS is per process): it imports its
library (symprop: every kernel module loaded; both: a grad+HVP of a tiny network, so their
lazily loaded code, BLAS kernels included, is in), builds the model and the batch, then resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``) and records the resident set before and the peak
during ``--calls`` grad+HVPs. The *working memory* is that peak minus the resident set before:
what grad+HVP needs beyond the weights, the batch and the libraries. It has to include the
first call: both libraries keep freed memory for the next call (symprop raises glibc's trim
threshold, ``runtime/memory.py``; PyTorch's CPU allocator), so later calls add nothing. Both run float32 on the same weights and batch at
``--threads`` threads (2 by default; the per-thread im2col buffers grow with threads).

    python benchmarks/hvp_memory.py [--case cifar] [--batch 256] [--threads 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")       # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def child(lib: str, case: str, batch: int, calls: int, keep_tape: bool = False) -> dict:
    sys.path.insert(0, HERE)
    import numpy as np
    import bench
    name, model, X, y = bench.CASES[case](batch=batch)
    rng = np.random.default_rng(1)
    v = [rng.choice(np.array([-1, 1], np.float32), size=p.shape) for p in model.parameters()]
    if lib == "symprop":
        from symprop.runtime import kernels
        from symprop.runtime.named_models import cifar_cnn
        for m in ("dense", "window", "activations", "composite", "losses", "optimizers"):
            kernels.load(m)
        tiny = cifar_cnn((3, 8, 8), dtype="float32", seed=0)    # code paths (and BLAS kernels) paged in
        tiny.hvp(np.zeros((2, 3, 8, 8), np.float32), np.zeros(2, np.int64), [np.ones_like(p) for p in tiny.parameters()])

        def run():
            if keep_tape:    # the sweep that keeps its tape (what hvp() ran before it dropped it)
                Xv, yv = model._check_batch(X, y)
                model.forward_over_reverse(Xv, yv, model._check_direction(v), keep_tape=True)
            else:
                model.hvp(X, y, v, return_grad=True)
    else:
        import torch
        tnet = bench.torch_twin(model)
        tparams = list(tnet.parameters())
        Xt, yt, vt = torch.from_numpy(X), torch.from_numpy(y), [torch.from_numpy(a) for a in v]
        tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                                   torch.nn.Linear(2 * 6 * 6, 3))
        tl = torch.nn.functional.cross_entropy(tiny(torch.zeros(2, 3, 8, 8)), torch.zeros(2, dtype=torch.long))
        tg = torch.autograd.grad(tl, list(tiny.parameters()), create_graph=True)
        torch.autograd.grad(tg, list(tiny.parameters()), [torch.ones_like(g) for g in tg])

        def run():
            loss = torch.nn.functional.cross_entropy(tnet(Xt), yt)
            grads = torch.autograd.grad(loss, tparams, create_graph=True)
            torch.autograd.grad(grads, tparams, vt)
    before = _status("VmRSS")
    exact = _reset_peak()
    for _ in range(calls):
        run()
    peak = _status("VmHWM")
    return {"lib": lib, "case": name, "rss_before_mib": before / 2 ** 20, "peak_mib": peak / 2 ** 20,
            "working_mib": (peak - before) / 2 ** 20, "peak_reset": exact}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="cifar", choices=["mlp", "lenet", "lenet_bn", "cifar"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2, help="subprocess pairs, interleaved (default 2)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep-tape", action="store_true",
                    help="symprop keeps the whole tape (forward_over_reverse(keep_tape=True), as hvp() did before)")
    ap.add_argument("--child", choices=["symprop", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.case, args.batch, args.calls, args.keep_tape)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs = {"symprop": [], "torch": []}
    for _ in range(args.repeat):
        for lib in runs:
            out = subprocess.run([sys.executable, __file__, "--child", lib, "--case", args.case, "--batch",
                                  str(args.batch), "--calls", str(args.calls)] + ["--keep-tape"] * args.keep_tape, env=env, capture_output=True,
                                 text=True, check=True)
            runs[lib].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {lib: min(r, key=lambda e: e["working_mib"]) for lib, r in runs.items()}
    res = {"case": best["symprop"]["case"], "threads": args.threads, "runs": runs,
           "symprop_working_mib": best["symprop"]["working_mib"], "torch_working_mib": best["torch"]["working_mib"],
           "ratio_working": best["symprop"]["working_mib"] / best["torch"]["working_mib"],
           "symprop_peak_mib": best["symprop"]["peak_mib"], "torch_peak_mib": best["torch"]["peak_mib"]}
    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"{res['case']}, grad+HVP, {args.threads} threads, float32 (least of {args.repeat} processes each)")
    for lib in ("symprop", "torch"):
        b = best[lib]
        print(f"  {lib:8s} working memory {b['working_mib']:7.1f} MiB   (RSS before {b['rss_before_mib']:.1f}, "
              f"peak {b['peak_mib']:.1f} MiB)")
    print(f"  symprop / torch working memory: {res['ratio_working']:.2f}")


if __name__ == "__main__":
    main()
