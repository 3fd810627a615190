"""Side-by-side timings against PyTorch (same process, same run, 2 threads).

MLP 784-256-128-10 (tanh), batch 128, float32: forward pass and one SGD train step
(forward + backward + update). Prints a ratio table (symprop time / PyTorch time; below
1.0 means symprop is faster); ``--json`` prints machine-readable results.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def best_of(fn, repeat: int, number: int) -> float:
    """Median over ``repeat`` rounds of the mean time of ``number`` calls (seconds)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return float(np.median(times))


def mlp_cases(batch=128, sizes=(784, 256, 128, 10), repeat=15, number=20):
    import torch
    from symprop import Sequential, layers as L, optimizers as O

    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [L.Dense(a, b), L.Tanh()]
    model = Sequential(layers[:-1], dtype="float32", seed=0)
    opt = O.SGD(lr=0.01, momentum=0.9)
    params = model.parameters()

    tmods = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        tmods += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    tnet = torch.nn.Sequential(*tmods[:-1])
    with torch.no_grad():
        for p, q in zip(tnet.parameters(), params):
            p.copy_(torch.from_numpy(q))
    topt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def sym_fwd():
        model.forward(X)

    def torch_fwd():
        with torch.no_grad():
            tnet(Xt)

    def sym_step():
        _, grads = model.loss_and_grad(X, y)
        opt.step(params, grads)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(tnet(Xt), yt).backward()
        topt.step()

    name = "mlp " + "-".join(map(str, sizes)) + f" b{batch}"
    rows = []
    for what, s, t in (("forward", sym_fwd, torch_fwd), ("train step", sym_step, torch_step)):
        # interleave rounds so both see the same machine noise
        ts, tt = [], []
        for _ in range(3):
            ts.append(best_of(s, repeat, number))
            tt.append(best_of(t, repeat, number))
        rows.append({"case": name, "what": what, "symprop_ms": 1e3 * min(ts),
                     "torch_ms": 1e3 * min(tt), "ratio": min(ts) / min(tt)})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        rows = mlp_cases()
    if args.json:
        print(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=2))
        return
    print(f"{'case':28s} {'what':12s} {'symprop ms':>11s} {'torch ms':>9s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['case']:28s} {r['what']:12s} {r['symprop_ms']:11.3f} {r['torch_ms']:9.3f} {r['ratio']:6.2f}")
    print("ratio = symprop / PyTorch time (lower is better; < 1 means symprop is faster)")


if __name__ == "__main__":
    main()
