"""Side-by-side timings against PyTorch eager and JAX jit (same process, same run, 2 threads).

float32: forward pass, one SGD train step (forward + backward + update), gradient + exact
Hessian-vector product (PyTorch: double backward), an Adam step and an AdaHessian step
(PyTorch: Yao et al.'s reference update written here) for
- MLP 784-256-128-10 (tanh), batch 128;
- LeNet-5 style, 1x28x28, batch 64;
- LeNet-5 with BatchNorm (2-D after each conv, 1-D after fc 120), train mode, batch 64;
- CIFAR-style CNN, 3x32x32 (conv 32 -> conv 64 -> fc 256 -> 10), batch 64.

JAX (when it imports; otherwise its columns print '–') runs ``jax.jit`` of the same steps on
the same weights and batch: SGD with momentum and Adam (parameters donated), forward,
``jax.jvp`` of ``jax.value_and_grad`` for gradient + HVP, and AdaHessian with spatial
averaging. XLA is held to the same thread count through ``XLA_FLAGS`` (see ``_jax_twin``).

Each row also prints the fraction of the GEMM roofline each library reaches: the GEMM FLOPs
of the row counted per layer (dense and conv as im2col GEMMs, see :func:`gemm_flops`)
divided by time × the sgemm peak measured in the same run (``scipy.linalg.blas.sgemm``, a
large square product at the benchmark's thread count).

The ``digits`` case trains the MLP of ``symprop train`` (64-512-10 ReLU) on the bundled
digits split with Adam 1e-3, batch 200, for the same number of epochs as scikit-learn's
``MLPClassifier.fit`` (tol=0 and no early stopping, so both run every epoch) and prints the
ratio of the two fit times.

Prints a ratio table (symprop time / peer time; below 1.0 means symprop is faster);
``--json`` prints machine-readable results. Times are medians over rounds (see
:func:`median_time`), the three libraries interleaved round by round so they see the same
machine noise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

WHATS = ("forward", "sgd step", "grad+hvp", "adam step", "adahessian step")
DASH = "\u2013"


def median_time(fn, repeat: int = 7, min_round: float = 0.02) -> float:
    """Median over ``repeat`` rounds of the mean time of one call (seconds); each round runs
    enough calls to last about ``min_round`` seconds (calibrated once after a warm-up call)."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(min_round / one))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return float(np.median(times))


best_of = median_time   # the old name


def interleaved(fns: dict, rounds: int = 3, repeat: int = 5, contexts: dict | None = None) -> dict:
    """``{name: seconds}``: :func:`median_time` of each callable, ``rounds`` times, the
    callables taking turns each round; the minimum over rounds (the least disturbed).
    ``contexts``: per name a factory of a context entered around that callable's timing (the
    GEMM provider of a "symprop on SciPy's BLAS" baseline)."""
    import contextlib
    ts = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            if f is not None:
                with (contexts or {}).get(k, contextlib.nullcontext)():
                    ts[k].append(median_time(f, repeat))
    return {k: (min(v) if v else None) for k, v in ts.items()}


# ------------------------------------------------------------------ GEMM roofline
def layer_gemm_flops(model, batch: int) -> list[tuple[str, float]]:
    """Per layer use with a GEMM: ``(name, forward GEMM FLOPs)`` for a batch — a dense layer
    ``2·N·in·out``, a convolution its im2col GEMM ``2·N·Cout·Ho·Wo·Cin·kh·kw``."""
    from symprop import layers as L

    out, shape = [], model.input_shape
    for la in model.layers:
        nxt = la.output_shape(shape)
        if isinstance(la, L.Dense):
            out.append((la.name, 2.0 * batch * la.in_features * la.out_features))
        elif isinstance(la, L.Conv2D):
            kh, kw = la.kernel_size
            out.append((la.name, 2.0 * batch * la.out_channels * nxt[1] * nxt[2] * la.in_channels * kh * kw))
        shape = nxt
    return out


def gemm_flops(model, batch: int) -> dict:
    """GEMM FLOPs of each benchmark row. With F the forward FLOPs of a layer: forward F; the
    gradient pass F for ∂W plus F for ∂x (not for the first GEMM layer, whose input gradient is
    not needed); the JVP F for x·RWᵀ plus F for Rx·Wᵀ (Rx = 0 at the first layer); the R-op
    backward F + F for R∂W (Rg·x and g·Rx) and F + F for R∂x (Rg·W and g·RW), minus the Rx and
    ∂x terms at the first layer. So SGD/Adam step = 3F (first layer 2F) and grad+HVP = 9F
    (first layer 4F), i.e. ≈ 3× a step."""
    per = layer_gemm_flops(model, batch)
    f = [v for _, v in per]
    if not f:
        return {w: 0.0 for w in WHATS}
    F, F0 = sum(f), f[0]
    step = 3 * F - F0
    hvp = 9 * F - 5 * F0
    return {"forward": F, "sgd step": step, "adam step": step, "grad+hvp": hvp, "adahessian step": hvp}


def load_blas_libraries() -> None:
    """Load every BLAS and OpenMP runtime the run will use (SciPy's OpenBLAS through symprop's
    kernels and ``scipy.linalg.blas``, NumPy's, PyTorch's): ``threadpoolctl.threadpool_limits``
    only limits libraries already loaded when it is entered."""
    import scipy.linalg.blas  # noqa: F401
    import symprop.runtime.model  # noqa: F401
    from symprop.runtime import kernels
    for name in ("dense", "window", "activations", "composite", "losses", "optimizers"):
        kernels.load(name)
    import torch  # noqa: F401


def machine_info() -> dict:
    """Where the run happened: CPU model and ISA extensions, SciPy's BLAS, the GEMM providers
    loaded (versions), the one forced by ``SYMPROP_GEMM`` if any, and the tuner's choice and
    timings per shape class (``symprop.runtime.gemm_providers.report``)."""
    from symprop.runtime import gemm_providers
    gemm_providers.setup()
    rep = gemm_providers.report()
    import scipy
    return {"cpu": rep["cpu"], "scipy": scipy.__version__, "scipy_blas": rep["scipy_blas"],
            "gemm_providers": rep["providers"], "gemm_forced": rep["forced"], "gemm_classes": rep["classes"]}


def sgemm_peak(threads: int, n: int = 1024, repeat: int = 9) -> dict:
    """Measured sgemm GFLOP/s on an n×n·n×n product: SciPy's OpenBLAS (``scipy.linalg.blas.
    sgemm``, the BLAS the generated kernels call) and PyTorch's ``torch.mm`` (MKL), at the
    current thread limits; the fastest of ``repeat`` rounds (other processes only slow a round)."""
    from scipy.linalg.blas import sgemm
    import torch

    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.random((n, n), dtype=np.float32))
    c = np.zeros((n, n), np.float32, order="F")
    ta = torch.from_numpy(np.ascontiguousarray(a))
    tc = torch.empty((n, n))

    def best(fn):
        fn()
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(5):
                fn()
            ts.append((time.perf_counter() - t0) / 5)
        return min(ts)
    t_s = best(lambda: sgemm(1.0, a, a, c=c, overwrite_c=True))
    t_t = best(lambda: torch.mm(ta, ta, out=tc))
    return {"n": n, "threads": threads, "scipy_gflops": 2 * n ** 3 / t_s / 1e9, "torch_gflops": 2 * n ** 3 / t_t / 1e9}


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


def compare(name, model, X, y, peak_gflops: float, use_jax: bool, rounds: int = 3, repeat: int = 5,
            wait_quiet=None, gemm_baseline: bool = False):
    """Forward, SGD train step, gradient + exact HVP, Adam step and AdaHessian step: symprop,
    PyTorch and (``use_jax``) JAX, interleaved in the same run. ``wait_quiet()`` (if given) is
    called before each row and returns the other processes' CPU share it saw. With
    ``gemm_baseline`` symprop also runs with every GEMM on SciPy's BLAS (the default before
    GEMM providers), interleaved: ``symprop_scipy_ms`` and the time the chosen providers save."""
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
    jfns = {}
    if use_jax:
        from _jax_twin import JaxTwin
        jfns = JaxTwin(model).callables(X, y, v)

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

    flops = gemm_flops(model, len(X))
    pairs = {"forward": (sym_fwd, torch_fwd), "sgd step": (sym_step(sgd), torch_step(tsgd)),
             "grad+hvp": (sym_hvp, torch_hvp), "adam step": (sym_step(adam), torch_step(tadam)),
             "adahessian step": (sym_step(ada), lambda: torch_adahessian_step(tparams, tloss, tada_state))}
    rows = []
    for what in WHATS:
        s, t = pairs[what]
        busy = wait_quiet() if wait_quiet else None
        fns = {"symprop": s, "torch": t, "jax": jfns.get(what)}
        if gemm_baseline:
            from symprop.runtime import gemm_providers
            fns["symprop_scipy"] = s
        ts = interleaved(fns, rounds, repeat,
                         contexts={"symprop_scipy": lambda: gemm_providers.using("scipy")} if gemm_baseline else None)
        row = {"case": name, "what": what, "gemm_mflop": flops[what] / 1e6, "busy": busy}
        if gemm_baseline:
            row["symprop_scipy_ms"] = 1e3 * ts["symprop_scipy"]
            row["ratio_torch_scipy_gemm"] = ts["symprop_scipy"] / ts["torch"]
            row["gemm_saving"] = 1 - ts["symprop"] / ts["symprop_scipy"]
        for lib in ("symprop", "torch", "jax"):
            sec = ts[lib]
            row[f"{lib}_ms"] = None if sec is None else 1e3 * sec
            row[f"{lib}_roofline"] = None if sec is None else flops[what] / (sec * peak_gflops * 1e9)
        row["ratio_torch"] = ts["symprop"] / ts["torch"]
        row["ratio_jax"] = None if ts["jax"] is None else ts["symprop"] / ts["jax"]
        row["ratio"] = row["ratio_torch"]   # the old key
        rows.append(row)
    by = {r["what"]: r for r in rows}
    step_ratio = {f"{lib}_step_ratio": (None if by["adam step"][f"{lib}_ms"] is None else
                                        by["adahessian step"][f"{lib}_ms"] / by["adam step"][f"{lib}_ms"])
                  for lib in ("symprop", "torch", "jax")}
    rows.append({"case": name, "what": "adahessian/adam", **step_ratio})
    from symprop.runtime import gemm_providers
    rows.append({"case": name, "what": "gemm providers", "layers": gemm_providers.layer_report(model, len(X))})
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
    from symprop.runtime.named_models import lenet

    model = lenet((1, 28, 28), dtype="float32", seed=0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch, 1, 28, 28)).astype(np.float32)
    return f"lenet-5 1x28x28 b{batch}", model, X, rng.integers(0, 10, batch)


def cifar_case(batch=64):
    from symprop.runtime.named_models import cifar_cnn

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


def step_pairs(case: str):
    """``(name, model, batch size, {what: (symprop step, PyTorch step)})`` for case ``case``: the forward,
    an SGD step (momentum 0.9) and grad + HVP, the same weights and batch on both sides."""
    import torch
    from symprop import optimizers as O
    name, model, X, y = CASES[case]()
    params = model.parameters()
    rng = np.random.default_rng(1)
    v = [rng.choice(np.array([-1, 1], np.float32), size=p.shape) for p in params]
    sgd = O.SGD(lr=0.01, momentum=0.9)
    Xv, yv = model._check_X(X), model.loss.check_targets(y, len(X), (len(X),) + model.output_shape)
    tnet = torch_twin(model)
    tparams = list(tnet.parameters())
    tsgd = torch.optim.SGD(tparams, lr=0.01, momentum=0.9)
    Xt, yt, vt = torch.from_numpy(X), torch.from_numpy(y), [torch.from_numpy(a) for a in v]

    def step():
        _, g, _ = sgd.loss_and_grad(model, Xv, yv)
        sgd.step(params, g)

    def tstep():
        tsgd.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(tnet(Xt), yt).backward()
        tsgd.step()

    def thvp():
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(tnet(Xt), yt), tparams, create_graph=True)
        torch.autograd.grad(grads, tparams, vt)

    def tfwd():
        with torch.no_grad():
            tnet(Xt)
    return name, model, len(X), {"forward": (lambda: model.forward(X), tfwd), "sgd step": (step, tstep),
                                 "grad+hvp": (lambda: model.hvp(X, y, v, return_grad=True), thvp)}


# ------------------------------------------------------------------ digits vs scikit-learn
DIGITS_HIDDEN = 512    # the MLP of `symprop train` (runtime.named_models.mlp's default)
#: pause before each timed fit: the other library's idle BLAS workers (NumPy's OpenBLAS after
#: scikit-learn, SciPy's after the peak measurement) busy-wait for ~0.1 s after their last call
#: and would otherwise share the cores with the fit that follows (both libraries get the pause)
SETTLE_S = 0.3


def digits_compare(epochs: int = 40, runs: int = 3, batch: int = 200, lr: float = 1e-3,
                   gemm_baseline: bool = False) -> dict:
    """``symprop``'s ``fit`` vs scikit-learn's ``MLPClassifier.fit`` doing the same work: the
    digits training split (float32), 64-512-10 ReLU, Adam(lr) with batch ``batch``, ``epochs``
    shuffled epochs, no L2 (sklearn alpha=0), no early stopping, tol=0 with
    ``n_iter_no_change`` above ``epochs`` (so sklearn never stops early). Median of ``runs``
    interleaved fits each, from the same initial weights every run (fresh models). With
    ``gemm_baseline`` a third fit per run has every GEMM on SciPy's BLAS."""
    import warnings

    from symprop.runtime import gemm_providers

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from symprop import optimizers as O
    from symprop.runtime.data import load_digits
    from symprop.runtime.named_models import mlp

    (X, y), (Xt, yt) = load_digits()
    ts, tk, t0s, acc_s, acc_k = [], [], [], [], []
    for r in range(runs):
        if gemm_baseline:
            model = mlp(X.shape[1:], classes=10, hidden=DIGITS_HIDDEN, activation="relu", dtype="float32", seed=r)
            time.sleep(SETTLE_S)
            with gemm_providers.using("scipy"):
                t0 = time.perf_counter()
                model.fit(X, y, epochs=epochs, batch_size=batch, optimizer=O.Adam(lr=lr), verbose=0)
                t0s.append(time.perf_counter() - t0)
        model = mlp(X.shape[1:], classes=10, hidden=DIGITS_HIDDEN, activation="relu", dtype="float32", seed=r)
        time.sleep(SETTLE_S)
        t0 = time.perf_counter()
        model.fit(X, y, epochs=epochs, batch_size=batch, optimizer=O.Adam(lr=lr), verbose=0)
        ts.append(time.perf_counter() - t0)
        acc_s.append(model.evaluate(Xt, yt)["accuracy"])
        clf = MLPClassifier(hidden_layer_sizes=(DIGITS_HIDDEN,), activation="relu", solver="adam", alpha=0.0,
                            batch_size=batch, learning_rate_init=lr, max_iter=epochs, shuffle=True, tol=0.0,
                            n_iter_no_change=epochs + 1, early_stopping=False, random_state=r)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            clf.fit(X, y)
            tk.append(time.perf_counter() - t0)
        acc_k.append(float((clf.predict(Xt) == yt).mean()))
        if clf.n_iter_ != epochs:
            raise RuntimeError(f"MLPClassifier stopped after {clf.n_iter_} of {epochs} epochs; the comparison "
                               f"needs the same number of epochs")
    steps = epochs * -(-len(X) // batch)
    return {"case": f"digits mlp 64-{DIGITS_HIDDEN}-10 relu, {epochs} epochs b{batch} adam",
            "epochs": epochs, "steps": steps, "samples": len(X),
            "symprop_s": float(np.median(ts)), "sklearn_s": float(np.median(tk)),
            "symprop_runs_s": ts, "sklearn_runs_s": tk,
            "ratio_sklearn": float(np.median(ts) / np.median(tk)),
            "symprop_ms_per_step": 1e3 * float(np.median(ts)) / steps,
            "sklearn_ms_per_step": 1e3 * float(np.median(tk)) / steps,
            "symprop_test_acc": float(np.mean(acc_s)), "sklearn_test_acc": float(np.mean(acc_k)),
            "sklearn_dtype": str(clf.coefs_[0].dtype),
            "symprop_scipy_gemm_s": float(np.median(t0s)) if t0s else None,
            "ratio_sklearn_scipy_gemm": float(np.median(t0s) / np.median(tk)) if t0s else None,
            "gemm_providers": gemm_providers.layer_report(model, batch)}


def _fmt(v, spec):
    if v is not None:
        return format(v, spec)
    width = spec.split(".")[0]
    return DASH.rjust(int(width)) if width.isdigit() else DASH


def print_machine(m: dict) -> None:
    cpu = m["cpu"]
    print(f"CPU: {cpu['name']} (vendor {cpu['vendor']}, family {cpu['family']} model {cpu['model']}; "
          f"{' '.join(cpu['isa'])})")
    prov = ", ".join(f"{n} {p['version']}" for n, p in m["gemm_providers"].items()) or "none"
    print(f"BLAS: SciPy {m['scipy']} with {m['scipy_blas']}; GEMM providers: {prov}"
          + (f"; forced: {m['gemm_forced']}" if m.get("gemm_forced") else ""))
    chosen = [c for c in m.get("gemm_classes", []) if c["choice"] != "scipy" or c.get("overruled")]
    if chosen:
        print("GEMM tuner on this CPU (class: choice, time saved per product against SciPy's BLAS; "
              "'overruled': a whole step ran slower with the per-product choice): " + "; ".join(
                  f"{c['op']} {c['M']}x{c['N']}x{c['K']}{'' if c['split'] else ' per sample'}: "
                  + (f"scipy (overruled, per product {c['overruled'].get('tuned_chose')})" if c.get("overruled")
                     else f"{c['choice']} {100 * c['saved']:.0f}%") for c in chosen))
    for r in m.get("gemm_validated") or []:
        if r.get("ms"):
            print(f"whole-step check, {r['model']}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in r["ms"].items())
                  + f"; kept: {', '.join(r['kept']) or 'SciPy only'}")


def print_table(res: dict) -> None:
    if res.get("machine"):
        print_machine(res["machine"])
    pk = res["peak"]
    print(f"sgemm peak ({pk['n']}x{pk['n']} square, {pk['threads']} threads, measured before each case): SciPy "
          f"OpenBLAS " + ", ".join(f"{c} {p['scipy_gflops']:.0f}" for c, p in res.get("peak_by_case", {}).items())
          + f" GFLOP/s; the roofline below is the best, {pk['scipy_gflops']:.0f} (torch.mm best "
          f"{pk['torch_gflops']:.0f})")
    print(f"jax: {res['jax'] or 'not installed (' + DASH + ')'}   XLA_FLAGS={res.get('xla_flags') or ''}"
          f"   GOMP_SPINCOUNT: {res.get('gomp_spincount')}"
          + (f"   process pinned to cores {res['pinned_cores']}" if res.get("pinned_cores") else ""))
    print(f"{'case':26s} {'what':16s} {'GEMM MF':>7s} {'symprop':>8s} {'torch':>8s} {'jax':>8s} "
          f"{'s/torch':>7s} {'s/jax':>6s}   roofline % s/t/j")
    for r in res["rows"]:
        if r["what"] == "gemm providers":
            by = {}
            for e in r["layers"]:
                by.setdefault(e["provider"], []).append(f"{e['layer']} {e['role']} {e['op']} {e['shape']}")
            print(f"{r['case']:26s} GEMM providers: " + "; ".join(f"{p}: {', '.join(v)}" for p, v in by.items()))
            continue
        if r["what"] == "adahessian/adam":
            print(f"{r['case']:26s} {'adahessian/adam':16s} {'':7s} {_fmt(r['symprop_step_ratio'], '7.2f')}x "
                  f"{_fmt(r['torch_step_ratio'], '7.2f')}x {_fmt(r['jax_step_ratio'], '7.2f')}x   (step-time ratios)")
            continue
        roof = "/".join(_fmt(None if r[f"{k}_roofline"] is None else 100 * r[f"{k}_roofline"], ".0f")
                        for k in ("symprop", "torch", "jax"))
        print(f"{r['case']:26s} {r['what']:16s} {r['gemm_mflop']:7.1f} {_fmt(r['symprop_ms'], '8.3f')} "
              f"{_fmt(r['torch_ms'], '8.3f')} {_fmt(r['jax_ms'], '8.3f')} {_fmt(r['ratio_torch'], '7.2f')} "
              f"{_fmt(r['ratio_jax'], '6.2f')}   {roof}"
              + (f"   busy {100 * r['busy']:.0f}%" if r.get("busy") is not None and r["busy"] >= 0.2 else "")
              + (f"   on SciPy's BLAS {r['symprop_scipy_ms']:.3f} ms, s/torch {r['ratio_torch_scipy_gemm']:.2f}, "
                 f"providers saved {100 * r['gemm_saving']:.0f}%"
                 if r.get("symprop_scipy_ms") is not None else ""))
    d = res.get("digits")
    if d:
        print(f"{d['case']}: symprop fit {d['symprop_s']:.3f} s, sklearn MLPClassifier.fit {d['sklearn_s']:.3f} s "
              f"({d['sklearn_dtype']}) -> ratio {d['ratio_sklearn']:.2f}; per step {d['symprop_ms_per_step']:.3f} "
              f"vs {d['sklearn_ms_per_step']:.3f} ms; test acc {d['symprop_test_acc']:.3f} vs {d['sklearn_test_acc']:.3f}"
              + (f"; on SciPy's BLAS {d['symprop_scipy_gemm_s']:.3f} s, ratio {d['ratio_sklearn_scipy_gemm']:.2f}"
                 if d.get("symprop_scipy_gemm_s") else ""))
    if res.get("busy_before_case"):
        print("other processes' CPU use before each case: " + ", ".join(
            f"{c} {DASH if b is None else f'{100 * b:.0f}%'}" for c, b in res["busy_before_case"].items()))
    print("times in ms (median per call, best of 3 interleaved rounds); ratio = symprop / peer time "
          "(< 1: symprop faster); roofline % = GEMM FLOPs / (time x sgemm peak); 'busy N%': other processes "
          "used N% of the machine just before the row (2-thread rows are unreliable then)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--threads", type=int, default=2)
    names = list(CASES) + ["digits"]
    ap.add_argument("--cases", default=",".join(names), help=f"comma-separated subset of {names}")
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX baseline even if jax is installed")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row (default 3)")
    ap.add_argument("--wait-quiet", type=float, default=2.0,
                    help="seconds to wait, before each case, for other processes to use < 20%% of the machine "
                         "(the load seen is printed either way)")
    ap.add_argument("--gemm-baseline", action="store_true",
                    help="also time symprop with every GEMM on SciPy's BLAS, interleaved (what the GEMM "
                         "providers chosen by measurement save)")
    ap.add_argument("--validate", action="store_true",
                    help="before timing, check the GEMM tuner's choice on each case's whole step, as "
                         "`symprop tune` does (gemm_providers.validate): classes a step runs slower with go "
                         "back to SciPy's BLAS")
    ap.add_argument("--digits-epochs", type=int, default=40, help="epochs of the digits case (default 40, "
                    "the CLI's for the MLP)")
    args = ap.parse_args(argv)
    cases = args.cases.split(",")
    for c in cases:
        if c not in names:
            ap.error(f"unknown case {c!r}; choose from {names}")
    xla_flags = None
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _machine
    pinned = _machine.pin_cores(args.threads)
    if not args.no_jax:
        import _jax_twin
        xla_flags = _jax_twin.configure(args.threads)
        use_jax = _jax_twin.available()
    else:
        use_jax = False
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    jax_version = None
    if use_jax:
        import jax
        jax_version = f"{jax.__version__} ({jax.devices()[0].platform})"
    load_blas_libraries()   # before the limits: threadpoolctl limits only the libraries loaded
    with threadpool_limits(args.threads):
        rows, digits, busy, peaks, validated = [], None, {}, {}, []
        quiet = lambda: _machine.wait_quiet(timeout=args.wait_quiet)  # noqa: E731
        for c in cases:
            busy[c] = quiet()
            if c == "digits":
                digits = digits_compare(args.digits_epochs, gemm_baseline=args.gemm_baseline)
            else:
                if args.validate:
                    from symprop.runtime import gemm_providers
                    label, vmodel, vX, vy = CASES[c]()
                    validated.append(gemm_providers.validate(vmodel, vX, vy, label=label))
                # the roofline of this case: the peak measured just before it, under the same load
                peaks[c] = peak = sgemm_peak(args.threads)
                rows += compare(*CASES[c](), peak_gflops=peak["scipy_gflops"], use_jax=use_jax, rounds=args.rounds,
                                wait_quiet=quiet, gemm_baseline=args.gemm_baseline)
        # the roofline: the best peak seen in the run (other processes only ever lower a measurement)
        peak = max(peaks.values(), key=lambda p: p["scipy_gflops"]) if peaks else sgemm_peak(args.threads)
        peak = {**peak, "torch_gflops": max(p["torch_gflops"] for p in peaks.values()) if peaks else peak["torch_gflops"]}
        for r in rows:
            for lib in ("symprop", "torch", "jax"):
                if r.get(f"{lib}_ms") is not None and "gemm_mflop" in r:
                    r[f"{lib}_roofline"] = r["gemm_mflop"] * 1e6 / (r[f"{lib}_ms"] * 1e-3 * peak["scipy_gflops"] * 1e9)
    res = {"machine": {**machine_info(), "gemm_validated": validated}, "threads": args.threads, "pinned_cores": pinned, "torch": torch.__version__, "jax": jax_version, "xla_flags": xla_flags,
           "peak": peak, "peak_by_case": peaks, "rows": rows, "digits": digits, "busy_before_case": busy,
           # torch is imported first: its libgomp.so.1 is the one both libraries share, and it has
           # read its settings before symprop's runtime could bound the spin (runtime/openmp.py)
           "gomp_spincount": os.environ.get("GOMP_SPINCOUNT") or "libgomp default"}
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)


if __name__ == "__main__":
    main()
