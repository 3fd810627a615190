"""Poisson residual loss + parameter gradient (MLP d-64-64-64-1 tanh, 4,096 points), side by side in one run.

MLP d-64-64-64-1 tanh, 4,096 collocation points, float32, d = 2, 5, 10; loss = mean((−Δu − f)²),
f = dπ² Π sin πx_i (no hard factor, the same work for all three):

- symprop: ``pinn.Problem.loss_and_grad`` (forward Laplacian through the derived Taylor-mode
  kernels, backward through their derived pullbacks);
- PyTorch nested autograd (what PINN libraries such as DeepXDE do): ∇u with create_graph,
  then one more grad per input dimension for the diagonal of the Hessian;
- PyTorch forward Laplacian written by hand (value, Jacobian, Laplacian through the layers),
  then autograd for the parameter gradient.

The implementations are interleaved in every repeat (noise hits all of them alike); the
best and the median of ``--repeats`` are reported with the ratios symprop / PyTorch.

    python benchmarks/pinn_bench.py [--dims 2,5,10] [--threads 2] [--repeats 10] [--points 4096]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import sympy as sp


def poisson(d: int):
    from symprop import pinn
    xs = sp.symbols(f"x0:{d}")
    u = sp.Function("u")(*xs)
    f = d * sp.pi ** 2 * sp.Mul(*[sp.sin(sp.pi * x) for x in xs])
    return pinn.Problem(residual=-sum(u.diff(x, 2) for x in xs) - f, domain={x: (0, 1) for x in xs})


def torch_versions(torch, model, d):
    from symprop.interop import to_torch
    net = to_torch(model)
    lins = [m for m in net if isinstance(m, torch.nn.Linear)]
    params = list(net.parameters())

    def f_of(X):
        return d * np.pi ** 2 * torch.prod(torch.sin(np.pi * X), dim=1)

    def nested(X):
        X = X.clone().requires_grad_(True)
        u = net(X)[:, 0]
        g = torch.autograd.grad(u.sum(), X, create_graph=True)[0]
        lap = sum(torch.autograd.grad(g[:, i].sum(), X, create_graph=True)[0][:, i] for i in range(d))
        loss = ((-lap - f_of(X)) ** 2).mean()
        return loss, torch.autograd.grad(loss, params, allow_unused=True)

    def forward_laplacian(X):
        h = X
        J = torch.eye(d, dtype=X.dtype).unsqueeze(1).expand(d, X.shape[0], d)   # (d, N, d)
        L = torch.zeros_like(X)
        for i, lin in enumerate(lins):
            h, J, L = lin(h), J @ lin.weight.T, L @ lin.weight.T
            if i < len(lins) - 1:
                t = torch.tanh(h)
                s1 = 1 - t * t
                s2 = -2 * t * s1
                L = s1 * L + s2 * (J * J).sum(0)
                J = s1 * J
                h = t
        loss = ((-L[:, 0] - f_of(X)) ** 2).mean()
        return loss, torch.autograd.grad(loss, params, allow_unused=True)

    return nested, forward_laplacian


def fourth_order(torch, args):
    """u_xxxx + parameter gradient of mean((u_xxxx − 1)²), MLP 1-64-64-64-1 tanh, float32: the
    order-4 Taylor jet (one pass) against four nested autograd calls."""
    from symprop import pinn
    from symprop.interop import to_torch
    x = sp.Symbol("x")
    u = sp.Function("u")(x)
    problem = pinn.Problem(residual=u.diff(x, 4) - 1, domain={x: (0, 1)})
    model = pinn.mlp(1, width=args.width, depth=3, dtype="float32", seed=0)
    X = np.random.default_rng(0).random((args.points, 1)).astype(np.float32)
    net = to_torch(model)
    params = list(net.parameters())

    def nested(X):
        X = X.clone().requires_grad_(True)
        v = net(X)[:, 0]
        for _ in range(4):
            v = torch.autograd.grad(v.sum(), X, create_graph=True)[0][:, 0]
        loss = ((v - 1) ** 2).mean()
        return loss, torch.autograd.grad(loss, params, allow_unused=True)

    TX = torch.tensor(X)
    l0, _ = problem.loss_and_grad(model, X)
    l1, _ = nested(TX)
    impls = {"symprop": lambda: problem.loss_and_grad(model, X), "torch nested": lambda: nested(TX)}
    times = {k: [] for k in impls}
    cpu = {k: [] for k in impls}
    for fn in impls.values():
        fn()
    for _ in range(args.repeats):
        for k, fn in impls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[k].append(1e3 * (time.perf_counter() - t0))
            cpu[k].append(1e3 * (time.process_time() - c0))
    best = {k: min(v) for k, v in times.items()}
    bcpu = {k: min(v) for k, v in cpu.items()}
    print(f"u_xxxx (1-D): symprop {best['symprop']:.2f} ms (CPU {bcpu['symprop']:.2f}), torch nested "
          f"{best['torch nested']:.2f} ms (CPU {bcpu['torch nested']:.2f}), ratio {best['symprop'] / best['torch nested']:.2f}x "
          f"(CPU {bcpu['symprop'] / bcpu['torch nested']:.2f}x; loss agreement {abs(l0 - l1.item()) / abs(l1.item()):.1e})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="2,5,10")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--fourth", action="store_true", help="also the order-4 case (u_xxxx of a 1-D MLP)")
    args = ap.parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits
    from symprop import pinn
    torch.set_num_threads(args.threads)
    rows = []
    with threadpool_limits(args.threads):
        for d in [int(v) for v in args.dims.split(",")]:
            problem = poisson(d)
            model = pinn.mlp(d, width=args.width, depth=3, dtype="float32", seed=0)
            X = np.random.default_rng(0).random((args.points, d)).astype(np.float32)
            TX = torch.tensor(X)
            nested, fwdlap = torch_versions(torch, model, d)
            # agreement check (float32): the three losses and a gradient
            l0, g0 = problem.loss_and_grad(model, X)
            l1, g1 = nested(TX)
            l2, _ = fwdlap(TX)
            agree = max(abs(l0 - l1.item()), abs(l0 - l2.item())) / abs(l1.item())
            gerr = float(np.max(np.abs(g0[0] - g1[0].numpy())) / np.max(np.abs(g1[0].numpy())))
            impls = {"symprop": lambda: problem.loss_and_grad(model, X), "torch nested": lambda: nested(TX),
                     "torch fwd-Laplacian": lambda: fwdlap(TX)}
            times = {k: [] for k in impls}
            cpu = {k: [] for k in impls}
            for k, fn in impls.items():   # warm-up
                fn()
            for _ in range(args.repeats):
                for k, fn in impls.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    fn()
                    times[k].append(1e3 * (time.perf_counter() - t0))
                    cpu[k].append(1e3 * (time.process_time() - c0))
            best = {k: min(v) for k, v in times.items()}
            bcpu = {k: min(v) for k, v in cpu.items()}
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append((d, best, bcpu, agree, gerr))
            print(f"d={d:2d}  " + "  ".join(f"{k} {best[k]:7.2f} ms (median {med[k]:7.2f}, CPU {bcpu[k]:7.2f})"
                                          for k in impls)
                  + f"  | symprop/nested {best['symprop'] / best['torch nested']:.2f}x, symprop/fwd-lap "
                  f"{best['symprop'] / best['torch fwd-Laplacian']:.2f}x  (loss agreement {agree:.1e}, "
                  f"grad {gerr:.1e})", flush=True)
        if args.fourth:
            fourth_order(torch, args)
    print(f"\nbest wall time (CPU time), {args.threads} thread(s):\n")
    print("| d | symprop | PyTorch nested autograd | PyTorch forward Laplacian by hand | ratio vs nested | ratio vs fwd-Lap |")
    print("|---|---|---|---|---|---|")
    for d, best, bcpu, _, _ in rows:
        k = ("symprop", "torch nested", "torch fwd-Laplacian")
        print(f"| {d} | " + " | ".join(f"{best[n]:.1f} ms ({bcpu[n]:.1f})" for n in k) +
              f" | {best[k[0]] / best[k[1]]:.2f}× ({bcpu[k[0]] / bcpu[k[1]]:.2f}×) | "
              f"{best[k[0]] / best[k[2]]:.2f}× ({bcpu[k[0]] / bcpu[k[2]]:.2f}×) |")


if __name__ == "__main__":
    main()
