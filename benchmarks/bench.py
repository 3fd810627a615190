"""Side-by-side timings against PyTorch (same process, same run, 2 threads).

float32: forward pass, one SGD train step (forward + backward + update), gradient + exact
Hessian-vector product (PyTorch: double backward), an Adam step and an AdaHessian step
(PyTorch: Yao et al.'s reference update written here) for
- MLP 784-256-128-10 (tanh), batch 128;
- LeNet-5 style, 1x28x28, batch 64;
- LeNet-5 with BatchNorm (2-D after each conv, 1-D after fc 120), train mode, batch 64;
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
        elif isinstance(la, (L.BatchNorm1D, L.BatchNorm2D)):
            kind = nn.BatchNorm1d if isinstance(la, L.BatchNorm1D) else nn.BatchNorm2d
            mods.append(kind(la.num_features, eps=la.eps, momentum=la.momentum))
        else:
            mods.append(acts[la.kernel_name]())
    net = nn.Sequential(*mods)
    with torch.no_grad():
        for p, q in zip(net.parameters(), model.parameters()):
            p.copy_(torch.from_numpy(q))
    return net


def torch_adahessian_step(params, loss_fn, state, lr=0.15, betas=(0.9, 0.999), eps=1e-4):
    """One step of Yao et al.'s reference AdaHessian in PyTorch (Rademacher probe, double
    backward, spatial averaging over conv kernels, bias-corrected moments)."""
    import torch

    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randint_like(p, high=2) * 2 - 1 for p in params]
    hv = torch.autograd.grad(grads, params, v)
    state["t"] = t = state.get("t", 0) + 1
    with torch.no_grad():
        for i, (p, g, h) in enumerate(zip(params, grads, hv)):
            d = (h * v[i]).abs()
            if d.dim() == 4:
                d = d.mean(dim=[2, 3], keepdim=True).expand_as(d)
            m, s = state.setdefault(i, (torch.zeros_like(p), torch.zeros_like(p)))
            m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
            s.mul_(betas[1]).addcmul_(d, d, value=1 - betas[1])
            denom = (s / (1 - betas[1] ** t)).sqrt_().add_(eps)
            p.addcdiv_(m, denom, value=-lr / (1 - betas[0] ** t))


def compare(name, model, X, y, repeat=15, number=20):
    """Forward, SGD train step, gradient + exact HVP, Adam step and AdaHessian step, symprop vs
    PyTorch, interleaved in the same run."""
    import torch
    from symprop import optimizers as O

    params = model.parameters()
    tnet = torch_twin(model)
    tparams = list(tnet.parameters())
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    rng = np.random.default_rng(1)
    v = [rng.choice(np.array([-1, 1], np.float32), size=p.shape) for p in params]
    vt = [torch.from_numpy(a) for a in v]
    sgd, adam, ada = O.SGD(lr=0.01, momentum=0.9), O.Adam(lr=1e-4), O.AdaHessian(lr=1e-3)
    tsgd, tadam = torch.optim.SGD(tparams, lr=0.01, momentum=0.9), torch.optim.Adam(tparams, lr=1e-4)
    tada_state = {}
    Xv, yv = model._check_X(X), model.loss.check_targets(y, len(X), (len(X),) + model.output_shape)

    def tloss():
        return torch.nn.functional.cross_entropy(tnet(Xt), yt)

    def sym_fwd():
        model.forward(X)

    def torch_fwd():
        with torch.no_grad():
            tnet(Xt)

    def sym_step(opt):
        def run():
            _, grads, _ = opt.loss_and_grad(model, Xv, yv)
            opt.step(params, grads)
        return run

    def torch_step(opt):
        def run():
            opt.zero_grad(set_to_none=True)
            tloss().backward()
            opt.step()
        return run

    def sym_hvp():
        model.hvp(X, y, v, return_grad=True)

    def torch_hvp():
        grads = torch.autograd.grad(tloss(), tparams, create_graph=True)
        torch.autograd.grad(grads, tparams, vt)

    rows = []
    for what, s, t in (("forward", sym_fwd, torch_fwd), ("sgd step", sym_step(sgd), torch_step(tsgd)),
                       ("grad+hvp", sym_hvp, torch_hvp), ("adam step", sym_step(adam), torch_step(tadam)),
                       ("adahessian step", sym_step(ada), lambda: torch_adahessian_step(tparams, tloss, tada_state))):
        # interleave rounds so both see the same machine noise
        ts, tt = [], []
        for _ in range(3):
            ts.append(best_of(s, repeat, number))
            tt.append(best_of(t, repeat, number))
        rows.append({"case": name, "what": what, "symprop_ms": 1e3 * min(ts),
                     "torch_ms": 1e3 * min(tt), "ratio": min(ts) / min(tt)})
    by = {r["what"]: r for r in rows}
    rows.append({"case": name, "what": "adahessian/adam", "symprop_ms": by["adahessian step"]["symprop_ms"],
                 "torch_ms": by["adahessian step"]["torch_ms"],
                 "symprop_step_ratio": by["adahessian step"]["symprop_ms"] / by["adam step"]["symprop_ms"],
                 "torch_step_ratio": by["adahessian step"]["torch_ms"] / by["adam step"]["torch_ms"]})
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


def lenet_bn_case(batch=64):
    """LeNet-5 with BatchNorm2D after each convolution and BatchNorm1D after the first hidden
    layer, in train mode (batch statistics) on both sides."""
    from symprop import Sequential, layers as L

    model = Sequential([L.Conv2D(1, 6, 5, padding=2), L.BatchNorm2D(6), L.ReLU(), L.MaxPool2D(2),
                        L.Conv2D(6, 16, 5), L.BatchNorm2D(16), L.ReLU(), L.MaxPool2D(2), L.Flatten(),
                        L.Dense(400, 120), L.BatchNorm1D(120), L.ReLU(), L.Dense(120, 84), L.ReLU(),
                        L.Dense(84, 10)], dtype="float32", seed=0, input_shape=(1, 28, 28)).train()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, 1, 28, 28)).astype(np.float32)
    return f"lenet-5+batchnorm b{batch}", model, X, rng.integers(0, 10, batch)


CASES = {"mlp": mlp_case, "lenet": lenet_case, "lenet_bn": lenet_bn_case, "cifar": cifar_case}


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
    print(f"{'case':28s} {'what':16s} {'symprop ms':>11s} {'torch ms':>9s} {'ratio':>6s}")
    for r in rows:
        if "ratio" in r:
            print(f"{r['case']:28s} {r['what']:16s} {r['symprop_ms']:11.3f} {r['torch_ms']:9.3f} {r['ratio']:6.2f}")
        else:
            print(f"{r['case']:28s} {r['what']:16s} {'':11s} {'':9s}        AdaHessian step = "
                  f"{r['symprop_step_ratio']:.2f}x Adam step (PyTorch: {r['torch_step_ratio']:.2f}x)")
    print("ratio = symprop / PyTorch time (lower is better; < 1 means symprop is faster)")


if __name__ == "__main__":
    main()
