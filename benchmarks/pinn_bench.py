"""PDE loss + parameter gradient through the derived Taylor-mode kernels against the peers, side by side in one run.

The 2-D (and d-D) Poisson case: MLP d-64-64-64-1 tanh, 4,096 collocation points, float32,
loss = mean((−Δu − f)²), f = dπ² Π sin πx_i (no hard factor: the same work for everyone):

- symprop: ``pinn.Problem.loss_and_grad`` (forward Laplacian through the derived Taylor-mode
  kernels, backward through their derived pullbacks);
- PyTorch nested autograd (what PINN libraries such as DeepXDE do): ∇u with create_graph,
  then one more grad per input dimension for the diagonal of the Hessian;
- PyTorch, forward Laplacian written by hand (value, Jacobian, Laplacian through the layers),
  then autograd for the parameter gradient;
- JAX (jit): the same hand-written forward Laplacian; ``jax.vmap(jax.hessian)`` (the trace of
  the full Hessian per point); folx's ``forward_laplacian`` (Microsoft's library) when installed;
- PyTorch plain forward pass, for scale.

and the fourth-order case: u_xxxx of a 1-64-64-64-1 tanh MLP and the gradient of
mean((u_xxxx − 1)²), symprop's order-4 Taylor jet (one pass) against four nested autograd calls.

Every thread count runs in a worker process of its own (XLA fixes its thread pool when JAX is
imported; the worker is pinned to that many CPUs and every library is told the count). Within
a worker the implementations are interleaved in every repeat (noise hits all alike); the best
and the median of ``--repeats`` are reported, wall and CPU time, with the ratios to symprop.
Missing optional peers (JAX, folx) are skipped with a line saying so.

    python benchmarks/pinn_bench.py [--dims 2,5,10] [--threads 1,2] [--repeats 10] [--points 4096]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

PEERS = ("symprop", "torch nested", "torch fwd-Laplacian", "JAX fwd-Laplacian", "JAX vmap(hessian)", "folx",
         "torch forward only")


# ---------------------------------------------------------------- where it ran

def cpu_line() -> str:
    """The CPU by name, family/model and vector ISA (``lscpu``; /proc/cpuinfo as a fallback)."""
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = set(info.get("Flags", "").split())
    if not flags:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile") if f in flags]
    return (f"CPU: {info.get('Model name', platform.processor() or '?')}, family {info.get('CPU family', '?')} "
            f"model {info.get('Model', '?')}, {info.get('CPU(s)', os.cpu_count())} CPU(s), "
            f"ISA {' '.join(isa) or '?'}; {platform.python_version()}, NumPy {np.__version__}")


# ---------------------------------------------------------------- the implementations

def poisson(d: int):
    import sympy as sp
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

    def forward_only(X):
        with torch.no_grad():
            return net(X)

    return nested, forward_laplacian, forward_only


def jax_versions(model, d):
    """The JAX peers as jitted ``fn(params, X) -> (loss, grads)``, or a reason they are missing."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        return {}, f"JAX not installed ({e}): JAX fwd-Laplacian and JAX vmap(hessian) skipped"
    from symprop.runtime.dense import Dense
    params = [(jnp.asarray(l.W), jnp.asarray(l.b)) for l in model.layers if isinstance(l, Dense)]

    def f_of(X):
        return d * jnp.pi ** 2 * jnp.prod(jnp.sin(jnp.pi * X), axis=1)

    def u(params, x):                       # one point x (d,) -> scalar
        h = x
        for i, (W, b) in enumerate(params):
            h = W @ h + b
            if i < len(params) - 1:
                h = jnp.tanh(h)
        return h[0]

    def fwdlap_loss(params, X):
        N = X.shape[0]
        h, J, L = X, jnp.broadcast_to(jnp.eye(d, dtype=X.dtype), (N, d, d)), jnp.zeros_like(X)
        for i, (W, b) in enumerate(params):
            h, J, L = h @ W.T + b, J @ W.T, L @ W.T
            if i < len(params) - 1:
                t = jnp.tanh(h)
                s1 = 1 - t * t
                s2 = -2 * t * s1
                L = s1 * L + s2 * (J * J).sum(1)
                J = s1[:, None, :] * J
                h = t
        return jnp.mean((-L[:, 0] - f_of(X)) ** 2)

    def hessian_loss(params, X):
        lap = jax.vmap(lambda x: jnp.trace(jax.hessian(u, argnums=1)(params, x)))(X)
        return jnp.mean((-lap - f_of(X)) ** 2)

    fns = {"JAX fwd-Laplacian": jax.jit(jax.value_and_grad(fwdlap_loss)),
           "JAX vmap(hessian)": jax.jit(jax.value_and_grad(hessian_loss))}
    note = None
    try:
        import folx

        def folx_loss(params, X):
            lap = jax.vmap(lambda x: folx.forward_laplacian(lambda y: u(params, y))(x).laplacian)(X)
            return jnp.mean((-lap - f_of(X)) ** 2)
        fns["folx"] = jax.jit(jax.value_and_grad(folx_loss))
    except ImportError as e:
        note = f"folx not installed ({e}): skipped"

    def bind(fn):
        def run(X):
            loss, grads = fn(params, X)
            jax.block_until_ready(grads)
            return loss, grads
        return run
    return {k: bind(v) for k, v in fns.items()}, note


def measure(impls: dict, repeats: int) -> tuple[dict, dict, dict]:
    """Best wall, median wall and best CPU time (ms) of each implementation, interleaved."""
    for fn in impls.values():      # warm-up (JIT compilation, first-touch allocations)
        fn()
        fn()
    wall = {k: [] for k in impls}
    cpu = {k: [] for k in impls}
    for _ in range(repeats):
        for k, fn in impls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(1e3 * (time.perf_counter() - t0))
            cpu[k].append(1e3 * (time.process_time() - c0))
    return ({k: min(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in wall.items()},
            {k: min(v) for k, v in cpu.items()})


def _loss(v) -> float:
    v = v[0] if isinstance(v, tuple) else v
    return float(v.detach()) if hasattr(v, "detach") else float(v)


def poisson_row(torch, args, d: int, notes: list) -> dict:
    from symprop import pinn
    problem = poisson(d)
    model = pinn.mlp(d, width=args.width, depth=3, dtype="float32", seed=0)
    X = np.random.default_rng(0).random((args.points, d)).astype(np.float32)
    TX = torch.tensor(X)
    nested, fwdlap, fwd_only = torch_versions(torch, model, d)
    impls = {"symprop": lambda: problem.loss_and_grad(model, X), "torch nested": lambda: nested(TX),
             "torch fwd-Laplacian": lambda: fwdlap(TX)}
    jx, note = jax_versions(model, d)
    if note and note not in notes:
        notes.append(note)
    for k, fn in jx.items():
        impls[k] = (lambda fn=fn: fn(X))
    impls["torch forward only"] = lambda: fwd_only(TX)
    ref = _loss(impls["torch nested"]())
    agree = {k: abs(_loss(impls[k]()) - ref) / abs(ref) for k in impls if k != "torch forward only"}
    best, med, cpu = measure(impls, args.repeats)
    return {"case": f"poisson d={d}", "d": d, "best": best, "median": med, "cpu": cpu, "agree": agree}


def fourth_order_row(torch, args) -> dict:
    """u_xxxx + parameter gradient of mean((u_xxxx − 1)²), MLP 1-64-64-64-1 tanh, float32."""
    import sympy as sp
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
    impls = {"symprop": lambda: problem.loss_and_grad(model, X), "torch nested": lambda: nested(TX)}
    ref = _loss(impls["torch nested"]())
    agree = {k: abs(_loss(impls[k]()) - ref) / abs(ref) for k in impls}
    best, med, cpu = measure(impls, args.repeats)
    return {"case": "u_xxxx 1-D", "d": 1, "best": best, "median": med, "cpu": cpu, "agree": agree}


# ---------------------------------------------------------------- worker and report

def worker(args):
    """One thread count: pinned to that many CPUs, every library told the count."""
    T = args.threads_one
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > T:
            os.sched_setaffinity(0, cpus[:T])
    except (AttributeError, OSError):
        pass
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(T)
    notes = []
    with threadpool_limits(T):
        for d in [int(v) for v in args.dims.split(",") if v]:
            row = poisson_row(torch, args, d, notes)
            print(json.dumps({"threads": T, **row}), flush=True)
        if args.fourth:
            print(json.dumps({"threads": T, **fourth_order_row(torch, args)}), flush=True)
    for n in notes:
        print(json.dumps({"note": n}), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", default="2,5,10")
    ap.add_argument("--threads", default="1,2", help="thread counts, one worker process each")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--no-fourth", dest="fourth", action="store_false", help="skip the u_xxxx case")
    ap.add_argument("--worker", dest="threads_one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads_one is not None:
        return worker(args)
    print(cpu_line(), flush=True)
    try:
        print(f"load average before: {os.getloadavg()[0]:.2f} (1 min)", flush=True)
    except OSError:
        pass
    rows, notes = [], []
    for T in [int(v) for v in args.threads.split(",") if v]:
        env = {**os.environ, "OMP_NUM_THREADS": str(T), "MKL_NUM_THREADS": str(T), "OPENBLAS_NUM_THREADS": str(T)}
        if T == 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                "intra_op_parallelism_threads=1").strip()
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(T), "--dims", args.dims,
               "--repeats", str(args.repeats), "--points", str(args.points), "--width", str(args.width)]
        if not args.fourth:
            cmd.append("--no-fourth")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            rec = json.loads(line)
            if "note" in rec:
                if rec["note"] not in notes:
                    notes.append(rec["note"])
                continue
            rows.append(rec)
            b, c = rec["best"], rec["cpu"]
            print(f"{T} thread(s) {rec['case']:>12}: " + ", ".join(
                f"{k} {b[k]:.2f} ms (CPU {c[k]:.2f})" for k in PEERS if k in b), flush=True)
        if proc.wait():
            raise SystemExit(f"worker for {T} thread(s) failed (exit {proc.returncode})")
    for n in notes:
        print(n)
    try:
        print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")
    except OSError:
        pass
    peers = [k for k in PEERS if any(k in r["best"] for r in rows)]
    print("\nbest wall time in ms (best CPU time in brackets), per loss + parameter gradient; "
          "ratio = symprop / peer (wall, CPU):\n")
    print("| threads | case | " + " | ".join(peers) + " | symprop / nested | symprop / torch fwd-Lap |")
    print("|---|---|" + "---|" * len(peers) + "---|---|")
    for r in rows:
        b, c = r["best"], r["cpu"]
        cells = [f"{b[k]:.1f} ({c[k]:.1f})" if k in b else "–" for k in peers]

        def ratio(k):
            return f"{b['symprop'] / b[k]:.2f}× ({c['symprop'] / c[k]:.2f}×)" if k in b else "–"
        print(f"| {r['threads']} | {r['case']} | " + " | ".join(cells) + f" | {ratio('torch nested')} | "
              f"{ratio('torch fwd-Laplacian')} |")
    worst = max((v for r in rows for k, v in r["agree"].items()), default=0.0)
    print(f"\nloss agreement with PyTorch nested autograd (float32): worst relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
