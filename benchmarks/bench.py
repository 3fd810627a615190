"""Side-by-side timings against PyTorch (same process, same run, 2 threads).

float32, forward pass and one SGD train step (forward + backward + update) for
- MLP 784-256-128-10 (tanh), batch 128;
- LeNet-5 style, 1x28x28, batch 64;
- CIFAR-style CNN, 3x32x32 (conv 32 -> conv 64 -> fc 256 -> 10), batch 64.
 Prints a ratio table (symprop time / PyTorch time; below
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


def torch_twin(model):
    """The same network as a ``torch.nn.Sequential`` with the same weights."""
    import torch
    from symprop import layers as L

    nn = torch.nn
    acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus}
    mods = []
    for la in model.layers:
        if isinstance(la, L.Dense):
            mods.append(nn.Linear(la.in_features, la.out_features, bias=la.bias))
        elif isinstance(la, L.Conv2D):
            mods.append(nn.Conv2d(la.in_channels, la.out_channels, la.kernel_size, la.stride, la.padding,
                                  la.dilation, bias=la.bias))
        elif isinstance(la, L.MaxPool2D):
            mods.append(nn.MaxPool2d(la.kernel_size, la.stride, la.padding))
        elif isinstance(la, L.AvgPool2D):
            mods.append(nn.AvgPool2d(la.kernel_size, la.stride, la.padding))
        elif isinstance(la, L.Flatten):
            mods.append(nn.Flatten())
        else:
            mods.append(acts[la.kernel_name]())
    net = nn.Sequential(*mods)
    with torch.no_grad():
        for p, q in zip(net.parameters(), model.parameters()):
            p.copy_(torch.from_numpy(q))
    return net


def compare(name, model, X, y, repeat=15, number=20):
    """Forward and SGD train step, symprop vs PyTorch, interleaved in the same run."""
    import torch
    from symprop import optimizers as O

    opt = O.SGD(lr=0.01, momentum=0.9)
    params = model.parameters()
    tnet = torch_twin(model)
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


def mlp_case(batch=128, sizes=(784, 256, 128, 10)):
    from symprop import Sequential, layers as L

    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [L.Dense(a, b), L.Tanh()]
    model = Sequential(layers[:-1], dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, sizes[0])).astype(np.float32)
    return "mlp " + "-".join(map(str, sizes)) + f" b{batch}", model, X, rng.integers(0, sizes[-1], batch)


def lenet_case(batch=64):
    from symprop.runtime.models import lenet

    model = lenet((1, 28, 28), dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, 1, 28, 28)).astype(np.float32)
    return f"lenet-5 1x28x28 b{batch}", model, X, rng.integers(0, 10, batch)


def cifar_case(batch=64):
    from symprop.runtime.models import cifar_cnn

    model = cifar_cnn((3, 32, 32), dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
    return f"cifar cnn 3x32x32 b{batch}", model, X, rng.integers(0, 10, batch)


CASES = {"mlp": mlp_case, "lenet": lenet_case, "cifar": cifar_case}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {sorted(CASES)}")
    args = ap.parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        rows = []
        for c in args.cases.split(","):
            if c not in CASES:
                ap.error(f"unknown case {c!r}; choose from {sorted(CASES)}")
            rows += compare(*CASES[c]())
    if args.json:
        print(json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=2))
        return
    print(f"{'case':28s} {'what':12s} {'symprop ms':>11s} {'torch ms':>9s} {'ratio':>6s}")
    for r in rows:
        print(f"{r['case']:28s} {r['what']:12s} {r['symprop_ms']:11.3f} {r['torch_ms']:9.3f} {r['ratio']:6.2f}")
    print("ratio = symprop / PyTorch time (lower is better; < 1 means symprop is faster)")


if __name__ == "__main__":
    main()
