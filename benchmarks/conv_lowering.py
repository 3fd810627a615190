"""Convolution kernels per layer: symprop's direct lowering, its im2col + GEMM lowering and
PyTorch (``F.conv2d`` forward, and its input and weight gradients through ``torch.ops.aten.
convolution_backward``), interleaved round by round in one process; the least time over the
rounds (another process can only slow a round down). The layers are the LeNet-5 and CIFAR CNN
convolutions of ``bench.py`` at batch 64, float32, plus both steps of those models.

    python benchmarks/conv_lowering.py [--threads 2] [--rounds 12] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: (name, N, C, H, W, O, kernel, padding): the convolutions of bench.py's LeNet-5 and CIFAR CNN
LAYERS = [("lenet conv1", 64, 1, 28, 28, 6, 5, 2), ("lenet conv2", 64, 6, 14, 14, 16, 5, 0),
          ("cifar conv1", 64, 3, 32, 32, 32, 3, 1), ("cifar conv2", 64, 32, 16, 16, 64, 3, 1)]


def least(fn, number: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def layer_fns(N, C, H, W, O, k, p):
    """``{role: (symprop call, torch call)}`` for one layer."""
    import torch
    import torch.nn.functional as F
    from symprop.runtime.kernels import load
    K = load("window")
    rng = np.random.default_rng(0)
    HO, WO = H + 2 * p - k + 1, W + 2 * p - k + 1
    geo = dict(s_h=1, s_w=1, p_h=p, p_w=p, d_h=1, d_w=1)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((N, C, H, W), (O, C, k, k), (O,)))
    g = rng.normal(size=(N, O, HO, WO)).astype(np.float32)
    y, gx, gw = np.empty_like(g), np.empty_like(x), np.empty_like(w)
    xt, wt, bt, gt = (torch.from_numpy(a) for a in (x, w, b, g))

    def t_back(mask):
        return lambda: torch.ops.aten.convolution_backward(gt, xt, wt, [O], [1, 1], [p, p], [1, 1], False, [0, 0], 1,
                                                           mask)
    fns = {"forward": (lambda: K.conv2d_forward(x, w, b, y, **geo), lambda: F.conv2d(xt, wt, bt, padding=p)),
           "vjp W": (lambda: K.conv2d_vjp_W(x, g, gw, **geo), t_back([False, True, False]))}
    if C > 1:   # a first layer needs no input gradient
        fns["vjp x"] = (lambda: K.conv2d_vjp_x(w, g, gx, **geo), t_back([True, False, False]))
    return fns


def compare(label, sym, tor, rounds):
    from symprop.runtime import conv_lowering
    t0 = time.perf_counter()
    sym()
    number = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
    runs = {"direct": [], "im2col": [], "torch": []}
    for _ in range(rounds):
        for mode in conv_lowering.LOWERINGS:
            with conv_lowering.using(mode):
                runs[mode].append(least(sym, number))
        runs["torch"].append(least(tor, number))
    best = {k: 1e3 * min(v) for k, v in runs.items()}
    return {"what": label, **{f"{k}_ms": v for k, v in best.items()},
            "direct_vs_im2col": best["direct"] / best["im2col"], "direct_vs_torch": best["direct"] / best["torch"],
            "im2col_vs_torch": best["im2col"] / best["torch"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import _machine
    _machine.pin_cores(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    from threadpoolctl import threadpool_limits
    import bench
    torch.set_num_threads(args.threads)
    bench.load_blas_libraries()
    out = {"machine": bench.machine_info()["cpu"], "threads": args.threads, "rows": []}
    if not args.json:
        print(f"CPU: {out['machine']}; {args.threads} threads; float32, batch 64; least of {args.rounds} "
              "interleaved rounds", flush=True)

    def show(row):
        out["rows"].append(row)
        if not args.json:
            print(f"{row['what']:28s} direct {row['direct_ms']:7.3f} ms  im2col {row['im2col_ms']:7.3f}  torch "
                  f"{row['torch_ms']:7.3f}   direct/im2col {row['direct_vs_im2col']:.2f}  direct/torch "
                  f"{row['direct_vs_torch']:.2f}  (im2col/torch {row['im2col_vs_torch']:.2f})", flush=True)
    with threadpool_limits(args.threads):
        for name, *shape in LAYERS:
            for role, (sym, tor) in layer_fns(*shape).items():
                show(compare(f"{name} {role}", sym, tor, args.rounds))
        for case in ("lenet", "cifar"):
            label, _, _, fns = bench.step_pairs(case)
            sym, tor = fns["sgd step"]
            show(compare(f"{label.split(' b')[0]} SGD step", sym, tor, args.rounds))
    if args.json:
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
