"""Per-kernel profile of the benchmark cases: where a training step's time goes.

For each case of ``bench.py`` (mlp, lenet, lenet_bn, cifar) and each step (SGD step,
gradient + exact HVP, AdaHessian step, Adam step) this times, per layer and per role
(``forward``, ``vjp:<array>``, ``jvp``, ``rvjp:<array>``), the generated kernel itself, plus
the loss kernels, the optimizer update kernels and the Rademacher probes, and splits the rest
of the step into

- *executor*: time inside ``SpecKernels._call`` (behind ``run`` and ``run_named``) around the
  kernel (argument binding, output allocation), and
- *python*: everything else (the model's and layers' Python: input checks, records, tapes,
  list handling, NumPy glue) = step time − kernels − executor.

Nothing in ``symprop`` is edited: the script wraps each bound kernel (``Role.fn``) of every
layer's ``SpecKernels``, ``SpecKernels._call``, and the ``losses``/``optimizers`` kernel modules
at run time. For dense and conv roles it prints the kernel's GEMM FLOP rate (the GEMM FLOPs
the role performs, as counted in ``bench.gemm_flops``) next to the sgemm peak measured in the
same run.

It also measures the fixed cost per call and per step on tiny shapes (batch 1, 4 units), where
the arithmetic is negligible: a kernel called directly, the same kernel through the executor,
a layer's ``forward``/``vjp``, and a whole step of an L-layer tiny MLP for several L (the
slope is the fixed cost per layer per step, the intercept the fixed cost per step).

    python benchmarks/profile_cases.py [--cases mlp,lenet,lenet_bn,cifar] [--steps sgd,hvp,adahessian,adam]
                                       [--threads 2] [--seconds 1.5] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the cases, FLOP counts and timers)

DASH = bench.DASH
STEPS = ("sgd", "hvp", "adahessian", "adam")
STEP_TITLES = {"sgd": "SGD step", "hvp": "grad+HVP", "adahessian": "AdaHessian step", "adam": "Adam step"}


class Profiler:
    """Wraps kernels and the executor while installed; accumulates ``[calls, seconds]`` per key."""

    def __init__(self):
        self.acc = defaultdict(lambda: [0, 0.0])
        self._undo = []
        self.enabled = False

    # -------------------------------------------------------------- wrapping
    def _timed(self, fn, key):
        acc, clock = self.acc, time.perf_counter

        def wrapper(*a, **k):
            if not self.enabled:
                return fn(*a, **k)
            t0 = clock()
            try:
                return fn(*a, **k)
            finally:
                e = acc[key]
                e[0] += 1
                e[1] += clock() - t0
        return wrapper

    def install(self, model):
        from symprop.runtime import curvature, kernels, optimizers

        labels = {}
        for i, la in enumerate(model.layers):
            for v in vars(la).values():
                if isinstance(v, kernels.SpecKernels) and id(v) not in labels:
                    labels[id(v)] = f"{i}:{la.name}"
                    for rname, role in v.roles.items():
                        self._undo.append((role, "fn", role.fn))
                        role.fn = self._timed(role.fn, ("kernel", labels[id(v)], rname))
        self.labels = labels
        # every role, separate (run) or fused (run_named), goes through SpecKernels._call
        orig_run = kernels.SpecKernels._call
        prof = self

        def run(K, role, *a, **k):
            if not prof.enabled:
                return orig_run(K, role, *a, **k)
            t0 = time.perf_counter()
            try:
                return orig_run(K, role, *a, **k)
            finally:
                e = prof.acc[("run", labels.get(id(K), K.owner), role)]
                e[0] += 1
                e[1] += time.perf_counter() - t0
        self._undo.append((kernels.SpecKernels, "_call", orig_run))
        kernels.SpecKernels._call = run

        for mod, attr, kind in ((optimizers, "_opt", "optimizer"),):   # losses run through SpecKernels._call
            real = getattr(mod, attr)
            proxy = type("Timed", (), {})()
            for name in dir(real):
                f = getattr(real, name)
                if callable(f) and not name.startswith("_"):
                    setattr(proxy, name, self._timed(f, (kind, kind, name)))
            self._undo.append((mod, attr, real))
            setattr(mod, attr, proxy)
        self._undo.append((curvature, "rademacher", curvature.rademacher))
        curvature.rademacher = self._timed(curvature.rademacher, ("probe", "probe", "rademacher"))

    def uninstall(self):
        for obj, attr, v in reversed(self._undo):
            setattr(obj, attr, v)
        self._undo.clear()


def role_gemm_flops(model, batch: int) -> dict:
    """``{(label, role): GEMM FLOPs per call}`` for dense and conv roles (F = forward FLOPs;
    jvp and rvjp:W do two products, one at the first GEMM layer, whose input direction is 0)."""
    per = bench.layer_gemm_flops(model, batch)
    out, k = {}, 0
    from symprop import layers as L
    for i, la in enumerate(model.layers):
        if isinstance(la, (L.Dense, L.Conv2D)):
            F = per[k][1]
            two = 1 if k == 0 else 2
            k += 1
            lab = f"{i}:{la.name}"
            out.update({(lab, "forward"): F, (lab, "vjp:W"): F, (lab, "vjp:x"): F, (lab, "jvp"): two * F,
                        (lab, "rvjp:W"): two * F, (lab, "rvjp:x"): 2 * F})
    return out


def digits_case(batch: int = 200):
    """The digits case of bench.py: ``symprop train``'s MLP 64-512-10 ReLU on one batch of 200
    digits (what each of MLPClassifier-equivalent fit's steps does)."""
    from symprop.runtime.data import load_digits
    from symprop.runtime.named_models import mlp

    (X, y), _ = load_digits()
    model = mlp(X.shape[1:], classes=10, hidden=bench.DIGITS_HIDDEN, activation="relu", dtype="float32", seed=0)
    return f"digits mlp 64-{bench.DIGITS_HIDDEN}-10 b{batch}", model, X[:batch], y[:batch]


CASES = {**bench.CASES, "digits": digits_case}


def step_callables(model, X, y):
    from symprop import optimizers as O

    params = model.parameters()
    Xv, yv = model._check_X(X), model.loss.check_targets(y, len(X), (len(X),) + model.output_shape)
    rng = np.random.default_rng(1)
    v = [rng.choice(np.array([-1, 1], np.float32), size=p.shape) for p in params]
    opts = {"sgd": O.SGD(lr=0.01, momentum=0.9), "adam": O.Adam(lr=1e-4), "adahessian": O.AdaHessian(lr=1e-3)}

    def step(opt):
        def run():
            _, grads, _ = opt.loss_and_grad(model, Xv, yv)
            opt.step(params, grads)
        return run
    return {"sgd": step(opts["sgd"]), "adam": step(opts["adam"]), "adahessian": step(opts["adahessian"]),
            "hvp": lambda: model.hvp(X, y, v, return_grad=True)}


def role_group(kind: str, role: str) -> str:
    if kind != "kernel":
        return kind
    return role.split(":")[0] if role.split(":")[0] in ("vjp", "rvjp", "curv") else role


def profile_step(prof: Profiler, fn, seconds: float) -> tuple[float, int]:
    """Run ``fn`` instrumented for about ``seconds``; returns (instrumented s/step, steps)."""
    fn()
    prof.acc.clear()
    prof.enabled = True
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if time.perf_counter() - t0 >= seconds and n >= 5:
            break
    total = time.perf_counter() - t0
    prof.enabled = False
    return total / n, n


def analyse(prof: Profiler, model, batch, what, t_plain, t_instr, n, peak) -> dict:
    flops = role_gemm_flops(model, batch)
    kernels, runs = [], defaultdict(float)
    for (kind, label, role), (calls, sec) in prof.acc.items():
        if kind == "run":
            runs[(label, role)] += sec / n
            continue
        row = {"kind": kind, "layer": label, "role": role, "calls": calls / n, "us": 1e6 * sec / n}
        f = flops.get((label, role))
        if f is not None and kind == "kernel" and sec > 0:
            row["gflops"] = f * calls / sec / 1e9
        kernels.append(row)
    kern_total = sum(r["us"] for r in kernels) / 1e6
    k_in_run = sum(r["us"] for r in kernels if r["kind"] == "kernel") / 1e6
    executor = sum(runs.values()) - k_in_run
    groups = defaultdict(float)
    for r in kernels:
        groups[role_group(r["kind"], r["role"])] += r["us"]
    groups["executor"] = 1e6 * executor
    groups["python"] = 1e6 * (t_instr - kern_total - executor)
    return {"what": what, "step_ms": 1e3 * t_plain, "instrumented_ms": 1e3 * t_instr, "steps": n,
            "gemm_mflop": bench.gemm_flops(model, batch)[{"sgd": "sgd step", "hvp": "grad+hvp",
                                                            "adahessian": "adahessian step",
                                                            "adam": "adam step"}[what]] / 1e6,
            "kernels": sorted(kernels, key=lambda r: (int(r["layer"].split(":")[0]) if ":" in r["layer"] else 99,
                                                        r["role"])),
            "groups_us": dict(groups), "peak_gflops": peak}


def print_profile(case: str, p: dict) -> None:
    inst = p["instrumented_ms"]
    roof = p["gemm_mflop"] * 1e6 / (p["step_ms"] * 1e-3 * p["peak_gflops"] * 1e9)
    print(f"\n== {case} — {STEP_TITLES[p['what']]}: {p['step_ms']:.3f} ms/step ({inst:.3f} instrumented, "
          f"{p['steps']} steps); GEMM {p['gemm_mflop']:.1f} MFLOP = {100 * roof:.0f}% of the "
          f"{p['peak_gflops']:.0f} GFLOP/s roofline")
    print(f"  {'layer':28s} {'role':12s} {'calls':>5s} {'us/step':>8s} {'%':>5s} {'GFLOP/s':>8s}")
    for r in p["kernels"]:
        gf = f"{r['gflops']:8.0f}" if "gflops" in r else ""
        print(f"  {r['layer']:28s} {r['role']:12s} {r['calls']:5.1f} {r['us']:8.1f} {100 * r['us'] / 1e3 / inst:5.1f} {gf}")
    order = ["forward", "vjp", "jvp", "rvjp", "curv", "loss", "probe", "optimizer", "executor", "python"]
    g = p["groups_us"]
    parts = [f"{k} {g[k]:.0f} us ({100 * g[k] / 1e3 / inst:.0f}%)" for k in order if k in g]
    parts += [f"{k} {v:.0f} us" for k, v in g.items() if k not in order]
    print("  by role: " + ", ".join(parts))


# ------------------------------------------------------------------ fixed costs
def fixed_costs(repeat: int = 7) -> dict:
    """Fixed cost per kernel call, executor call, layer call and per step on tiny shapes."""
    from symprop import Sequential, layers as L, optimizers as O

    out = {}
    x = np.ones((1, 4), np.float32)
    dense = L.Dense(4, 4)
    m1 = Sequential([dense], input_shape=(4,))
    K = dense.kernels
    role = K.roles["forward"]
    y = np.empty((1, 4), np.float32)
    args = [{"x": x, "W": dense.W, "b": dense.b}.get(a, y) for a in role.call]
    out["kernel_direct_us"] = 1e6 * bench.median_time(lambda: role.fn(*args), repeat)
    env = {"x": x, "W": dense.W, "b": dense.b}
    shapes = {"x": (1, 4), "y": (1, 4)}
    out["executor_run_us"] = 1e6 * bench.median_time(lambda: K.run("forward", env, np.float32, {}, shapes), repeat)
    _, rec = dense.forward(x)
    out["dense_forward_us"] = 1e6 * bench.median_time(lambda: dense.forward(x), repeat)
    g = np.ones((1, 4), np.float32)
    out["dense_vjp_us"] = 1e6 * bench.median_time(lambda: dense.vjp(rec, g), repeat)
    act = L.Tanh()
    act.build((4,), np.float32, np.random.default_rng(0))
    _, arec = act.forward(x)
    out["tanh_forward_us"] = 1e6 * bench.median_time(lambda: act.forward(x), repeat)
    out["tanh_vjp_us"] = 1e6 * bench.median_time(lambda: act.vjp(arec, g), repeat)
    del m1
    # whole steps of tiny MLPs: L Dense(4,4)+Tanh pairs, batch 1
    yb = np.zeros(1, np.int64)
    depth = {}
    for n_layers in (1, 2, 4, 8):
        layers = []
        for _ in range(n_layers):
            layers += [L.Dense(4, 4), L.Tanh()]
        model = Sequential(layers[:-1], seed=0)
        params = model.parameters()
        v = [np.ones_like(p) for p in params]
        calls = step_callables(model, x, yb)
        opt = O.SGD(lr=0.01, momentum=0)
        Xv, yv = model._check_X(x), model.loss.check_targets(yb, 1, (1,) + model.output_shape)

        def sgd():
            _, grads, _ = opt.loss_and_grad(model, Xv, yv)
            opt.step(params, grads)
        depth[2 * n_layers - 1] = {
            "forward_us": 1e6 * bench.median_time(lambda: model.forward(x), repeat),
            "sgd_step_us": 1e6 * bench.median_time(sgd, repeat),
            "grad_hvp_us": 1e6 * bench.median_time(lambda: model.hvp(x, yb, v, return_grad=True), repeat),
            "adam_step_us": 1e6 * bench.median_time(calls["adam"], repeat),
            "adahessian_step_us": 1e6 * bench.median_time(calls["adahessian"], repeat)}
    out["tiny_mlp_by_layers"] = depth
    ls = np.array(sorted(depth))
    for key in ("forward_us", "sgd_step_us", "grad_hvp_us", "adam_step_us", "adahessian_step_us"):
        slope, icpt = np.polyfit(ls, [depth[k][key] for k in ls], 1)
        out[f"{key[:-3]}_per_layer_us"], out[f"{key[:-3]}_per_step_us"] = float(slope), float(icpt)
    return out


def print_fixed(fc: dict) -> None:
    print("\n== fixed costs (batch 1, 4 units: the arithmetic is negligible)")
    print(f"  dense forward kernel called directly  {fc['kernel_direct_us']:7.2f} us")
    print(f"  the same through SpecKernels.run      {fc['executor_run_us']:7.2f} us")
    print(f"  Dense.forward (checks + executor)     {fc['dense_forward_us']:7.2f} us;  Dense.vjp (W, b, x) "
          f"{fc['dense_vjp_us']:.2f} us")
    print(f"  Tanh.forward                          {fc['tanh_forward_us']:7.2f} us;  Tanh.vjp {fc['tanh_vjp_us']:.2f} us")
    print(f"  {'layers':>6s} {'forward':>8s} {'sgd step':>9s} {'grad+hvp':>9s} {'adam':>8s} {'adahess':>8s}  (us per call)")
    for n, d in sorted(fc["tiny_mlp_by_layers"].items()):
        print(f"  {n:6d} {d['forward_us']:8.1f} {d['sgd_step_us']:9.1f} {d['grad_hvp_us']:9.1f} "
              f"{d['adam_step_us']:8.1f} {d['adahessian_step_us']:8.1f}")
    for k in ("forward", "sgd_step", "grad_hvp", "adam_step", "adahessian_step"):
        print(f"  {k:16s} fixed cost per layer {fc[k + '_per_layer_us']:6.1f} us, per call (0 layers) "
              f"{fc[k + '_per_step_us']:6.1f} us")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.5, help="instrumented run time per case and step")
    ap.add_argument("--no-fixed", action="store_true", help="skip the fixed-cost measurements")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=2.0,
                    help="seconds to wait, before each case, for other processes to use < 20%% of the machine")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    import torch
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "cases": {}}
    bench.load_blas_libraries()   # before the limits: threadpoolctl limits only the libraries loaded
    with threadpool_limits(args.threads):
        peak = bench.sgemm_peak(args.threads)
        results["peak"] = peak
        if not args.json:
            print(f"sgemm peak {peak['scipy_gflops']:.0f} GFLOP/s (SciPy OpenBLAS, {peak['n']}^2, "
                  f"{args.threads} threads); torch.mm {peak['torch_gflops']:.0f}")
        import _machine
        for c in args.cases.split(","):
            busy = _machine.wait_quiet(timeout=args.wait_quiet)
            if not args.json:
                print(f"\n#### {c}: other processes busy {DASH if busy is None else f'{100 * busy:.0f}%'} of the machine before it")
            p2 = bench.sgemm_peak(args.threads)   # the best peak seen so far is the roofline
            if p2["scipy_gflops"] > peak["scipy_gflops"]:
                peak = results["peak"] = p2
            name, model, X, y = CASES[c]()
            calls = step_callables(model, X, y)
            prof = Profiler()
            prof.install(model)
            try:
                res = []
                for s in args.steps.split(","):
                    t_plain = bench.median_time(calls[s], 7)
                    t_instr, n = profile_step(prof, calls[s], args.seconds)
                    p = analyse(prof, model, len(X), s, t_plain, t_instr, n, peak["scipy_gflops"])
                    res.append(p)
                    if not args.json:
                        print_profile(name, p)
            finally:
                prof.uninstall()
            results["cases"][name] = res
        if not args.no_fixed:
            results["fixed"] = fixed_costs()
            if not args.json:
                print_fixed(results["fixed"])
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
