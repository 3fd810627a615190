"""Fuzzing the public entry points: random architectures, shapes, dtypes, memory
layouts and values through predict/forward/loss_and_grad/hvp/hessian_diagonal/evaluate/fit and
the optimizers. Every case either returns what a float64 twin of the model returns (to float32
accuracy) or raises a ValueError/TypeError; anything else — another exception, a wrong or
non-finite result for valid input, a result for invalid input — is counted. The examples run in
a subprocess so that an interpreter crash or hang is counted too. ``SYMPROP_FUZZ_EXAMPLES``
raises the example count (the default keeps this under a minute)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

DRIVER = textwrap.dedent(r'''
    import json, sys, warnings
    import numpy as np
    from hypothesis import given, settings, strategies as st, HealthCheck
    from symprop import Sequential, layers as L, optimizers as O

    warnings.simplefilter("ignore")
    stats = {"cases": 0, "ok": 0, "refused": 0, "garbage": [], "bad_error": []}

    def build(arch, dtype):
        if arch == "mlp":
            layers = [L.Dense(4, 5), L.Tanh(), L.Dense(5, 3)]
        elif arch == "mlp_bn":
            layers = [L.Dense(4, 5), L.BatchNorm1D(5), L.ReLU(), L.Dropout(0.3), L.Dense(5, 3)]
        elif arch == "cnn":
            layers = [L.Conv2D(1, 2, 3, padding=1), L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(2 * 2 * 2, 3)]
        else:
            layers = [L.Conv2D(1, 2, 3, padding=1), L.BatchNorm2D(2), L.SiLU(), L.Flatten(), L.Dense(2 * 4 * 4, 3)]
        shape = (4,) if arch.startswith("mlp") else (1, 4, 4)
        return Sequential(layers, dtype=dtype, seed=0, input_shape=shape), shape

    def twins(arch):
        m32, shape = build(arch, "float32")
        m64, _ = build(arch, "float64")
        for a, b in zip(m32.parameters() + m32.buffers(), m64.parameters() + m64.buffers()):
            b[...] = a
        return m32, m64, shape

    def close(a, b, tol=2e-3):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if not np.isfinite(a).all():
            return False
        return np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b)))

    def cat(xs):
        return np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in xs])

    @st.composite
    def arrays(draw, shape):
        """An input: usually valid, sometimes perturbed in shape, dtype, layout or values."""
        n = draw(st.integers(1, 5))
        full = (n,) + shape
        valid = True
        what = draw(st.sampled_from(["ok"] * 6 + ["shape", "ndim", "dtype", "layout", "readonly",
                                                  "nan", "inf", "huge", "empty", "list"]))
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        X = rng.normal(size=full) * draw(st.sampled_from([1.0, 1e-3, 30.0]))
        if what == "shape":
            X = rng.normal(size=(n,) + tuple(s + 1 for s in shape)); valid = False
        elif what == "ndim":
            X = rng.normal(size=full + (1,)); valid = False
        elif what == "dtype":
            dt = draw(st.sampled_from([np.float16, np.int64, np.complex128, np.bool_, object]))
            X = X.astype(dt) if dt is not object else X.astype(object)
            valid = dt in (np.float16, np.int64)
        elif what == "layout":
            X = np.asfortranarray(X) if X.ndim > 1 and draw(st.booleans()) else \
                np.repeat(X, 2, axis=0)[::2]
        elif what == "readonly":
            X.setflags(write=False)
        elif what == "nan":
            X.reshape(-1)[rng.integers(X.size)] = np.nan; valid = False
        elif what == "inf":
            X.reshape(-1)[rng.integers(X.size)] = -np.inf; valid = False
        elif what == "huge":
            X.reshape(-1)[0] = 1e300; valid = False     # finite in float64, inf in the float32 model
        elif what == "empty":
            X = X[:0]; valid = False
        elif what == "list":
            X = X.tolist()
        return X, valid, what

    @st.composite
    def labels(draw, n):
        what = draw(st.sampled_from(["ok"] * 5 + ["range", "float", "length", "negative", "complex"]))
        y = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)))
        if what == "range":
            y[0] = 3
        elif what == "negative":
            y[0] = -1
        elif what == "float":
            y = y + 0.5
        elif what == "length":
            y = np.append(y, 0)
        elif what == "complex":
            y = y.astype(np.complex128)
        return y, what == "ok", what

    def run(arch, call, X, valid, y, yvalid, seed):
        m32, m64, shape = twins(arch)
        Xa = np.asarray(X, dtype=np.float64) if valid else None
        rng = np.random.default_rng(seed)
        v = [rng.normal(size=p.shape) for p in m32.parameters()]
        valid_all = valid and (yvalid or call in ("predict", "forward"))
        try:
            if call == "forward":
                got, want = m32.forward(X), m64.forward(Xa)
            elif call == "predict":
                got, want = m32.forward(X), (m64.forward(Xa) if valid else None)
                m32.predict(X)
            elif call == "loss_and_grad":
                l, g = m32.loss_and_grad(X, y)
                l64, g64 = m64.loss_and_grad(Xa, y) if valid_all else (None, None)
                got, want = (cat([[l]] + g), cat([[l64]] + g64)) if valid_all else (None, None)
            elif call == "hvp":
                got = cat(m32.hvp(X, y, v))
                want = cat(m64.hvp(Xa, y, v)) if valid_all else None
            elif call == "diag":
                got = cat(m32.hessian_diagonal(X, y, "gauss_newton"))
                want = cat(m64.hessian_diagonal(Xa, y, "gauss_newton")) if valid_all else None
            elif call == "evaluate":
                r, r64 = m32.evaluate(X, y), (m64.evaluate(Xa, y) if valid_all else None)
                got, want = [r["loss"]], ([r64["loss"]] if r64 else None)
            else:
                m32.fit(X, y, epochs=1, batch_size=2, optimizer=O.SGD(0.01), verbose=0)
                got = cat(m32.parameters())
                want = got if valid_all else None
        except (ValueError, TypeError) as exc:
            if valid_all:
                return ("garbage", f"{call}/{arch}: valid input refused: {exc}")
            return ("refused", None)
        except Exception as exc:  # noqa: BLE001
            return ("bad_error", f"{call}/{arch}: {type(exc).__name__}: {exc}")
        if not valid_all:
            return ("garbage", f"{call}/{arch}: invalid input accepted")
        if want is not None and not close(got, want):
            return ("garbage", f"{call}/{arch}: differs from the float64 twin")
        return ("ok", None)

    @settings(max_examples=int(sys.argv[1]), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data):
        arch = data.draw(st.sampled_from(["mlp", "mlp_bn", "cnn", "cnn_bn"]))
        call = data.draw(st.sampled_from(["forward", "predict", "loss_and_grad", "hvp", "diag", "evaluate", "fit"]))
        shape = (4,) if arch.startswith("mlp") else (1, 4, 4)
        X, valid, _ = data.draw(arrays(shape))
        n = len(X) if hasattr(X, "__len__") else 0
        y, yvalid, _ = data.draw(labels(max(n, 1)))
        if arch == "mlp_bn" and call == "fit" and n < 2:
            valid = False     # batch statistics need two values per channel: refused, as in torch
        kind, msg = run(arch, call, X, valid, y, yvalid, data.draw(st.integers(0, 1000)))
        stats["cases"] += 1
        if kind in ("garbage", "bad_error"):
            stats[kind].append(msg)
        else:
            stats[kind] += 1

    fuzz()
    # activation kernels, every role (fused ones included), with NaN, ±inf, the float32 and
    # float64 maxima, subnormals and ordinary values mixed in one array: a NaN
    # input gives NaN in every output; any other input never gives NaN (every built-in
    # activation has its limits at ±inf); float32 agrees with the float64 kernel wherever the
    # float64 value is within float32's range (same infinity beyond it); fused roles agree
    # with the separate ones. Learnable activations run with one channel per point, so their
    # parameter pullbacks (sums over the batch) are per point too.
    from symprop.runtime.kernels import SpecKernels, load
    ACT_MODULES = [(load("activations"), n) for n in L.activation_names()] + \
                  [(load("learnable"), n) for n in ("prelu", "swish_learnable")]
    SPECIAL = [np.nan, np.inf, -np.inf, 3.4028235e38, -3.4028235e38, 1.7e308, -1.7e308, 1e4, -1e4,
               88.7, -88.7, 709.0, -709.0, 0.0, -0.0, 1e-45, -1e-45, 1e-310]

    def act_run(K, learn, role, env, dt, scalars, P):
        shapes = {"x": env["x"].shape, "y": env["x"].shape}
        if learn:
            shapes[learn] = (P,)
        return {k: np.asarray(v, np.float64).reshape(-1) for k, v in K.run_named(role, env, dt, scalars, shapes).items()}

    def act_env(x, dt, learn, pvalue, rng_inputs):
        P = x.size
        arrays = {k: v.astype(dt) for k, v in rng_inputs.items()}
        if learn:
            env = {k: v.reshape(1, P, 1) for k, v in arrays.items() if k != "R" + learn}
            env.update({"x": x.astype(dt).reshape(1, P, 1), learn: np.full(P, pvalue, dt),
                        "R" + learn: arrays["R" + learn], "S": np.ones((1, 1, P, 1), dt), "w": np.ones((1, 1), dt)})
        else:
            env = dict(arrays, x=x.astype(dt))
        return env

    def act_case(module, name, x, dt, factor, seed):
        K = SpecKernels(module, name)
        defaults = K.entry["defaults"]
        learn = K.params[0] if K.params else None      # the learnable parameter (channelwise specs)
        scalars = {p: v * factor for p, v in defaults.items() if p != learn}
        pvalue = defaults[learn] * factor if learn else None
        P = x.size
        r = np.random.default_rng(seed)
        inputs = {k: r.choice([-1, 1], P) * r.uniform(0.5, 2, P) for k in ("g", "Rx", "Rg", "H")}
        if learn:
            inputs["R" + learn] = r.choice([-1, 1], P) * r.uniform(0.5, 2, P)
        xd = x.astype(dt)
        x64 = xd.astype(np.float64)
        out = {}
        for d in ((dt, np.float64) if dt == np.float32 else (np.float64,)):
            env = act_env(x64, d, learn, pvalue, inputs)
            env["y"] = next(iter(act_run(K, learn, "forward", env, d, scalars, P).values())).astype(d).reshape(env["x"].shape)
            out[d] = {(role, o): v for role in K.roles for o, v in act_run(K, learn, role, env, d, scalars, P).items()}
        msgs = []
        nan_in = np.isnan(x64)
        max32 = float(np.finfo(np.float32).max)
        for (role, o), v64 in out[np.float64].items():
            got = out[dt][(role, o)]
            what = f"{name}(x{factor}) {np.dtype(dt).name} {role}:{o}"
            if not np.isnan(got[nan_in]).all():
                msgs.append(f"{what}: NaN input gave a number")
            if np.isnan(v64[~nan_in]).any():
                msgs.append(f"{what}: NaN at x={x64[~nan_in & np.isnan(v64)][:3]}")
            if dt == np.float32:
                inr = ~nan_in & (np.abs(v64) <= max32 * (1 - 1e-6))
                err = np.abs(got[inr] - v64[inr]) / np.maximum(np.abs(v64[inr]), 1.0)
                if not (np.isfinite(got[inr]).all() and (err <= 1e-4).all()):
                    msgs.append(f"{what}: float32 off the float64 kernel at x={x64[inr][~(err <= 1e-4)][:3]}")
                beyond = ~nan_in & np.isinf(v64)
                if not np.array_equal(got[beyond], v64[beyond]):
                    msgs.append(f"{what}: float32 at ±inf differs from float64")
        for fused, parts in (("forward+jvp", ("forward", "jvp")), ("vjp+rvjp", ("vjp:x", "rvjp:x"))):
            for (role, o), v in out[dt].items():
                if role != fused:
                    continue
                sep = next(out[dt][(p, oo)] for p in parts for (pp, oo) in out[dt] if pp == p and oo == o)
                both_nan = np.isnan(v) & np.isnan(sep)
                close_ = both_nan | (v == sep) | (np.abs(v - sep) <= 1e-5 * np.maximum(np.abs(sep), 1.0))
                if not close_.all():
                    msgs.append(f"{name} {fused}:{o} differs from {parts} at x={x64[~close_][:3]}")
        return msgs

    @settings(max_examples=max(int(sys.argv[1]) // 2, 20), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz_activations(data):
        module, name = data.draw(st.sampled_from(ACT_MODULES))
        n = data.draw(st.integers(1, 24))
        values = data.draw(st.lists(st.one_of(st.sampled_from(SPECIAL),
                                              st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
                                              st.floats(allow_nan=False, allow_infinity=False)),
                                    min_size=n, max_size=n))
        dt = data.draw(st.sampled_from([np.float32, np.float64]))
        factor = data.draw(st.sampled_from([1.0, 2.0, 0.5, 10.0, 0.1, -1.0, -2.0]))
        with np.errstate(all="ignore"):
            msgs = act_case(module, name, np.array(values, np.float64), dt, factor, data.draw(st.integers(0, 1000)))
        stats["cases"] += 1
        if msgs:
            stats["garbage"].extend(msgs[:3])
        else:
            stats["ok"] += 1

    fuzz_activations()
    # optimizers: random hyperparameters are accepted only when they are valid
    rng = np.random.default_rng(1)
    for _ in range(200):
        name = ["SGD", "Adam", "AdamW", "RMSProp", "AdaGrad"][rng.integers(5)]
        lr = [0.1, -1.0, float("nan"), float("inf"), 0.0, True, np.float32(0.01)][rng.integers(7)]
        ok = not isinstance(lr, bool) and np.isfinite(lr) and lr >= 0
        stats["cases"] += 1
        try:
            getattr(O, name)(lr)
            if ok:
                stats["ok"] += 1
            else:
                stats["garbage"].append(f"{name}(lr={lr!r}) accepted")
        except (ValueError, TypeError):
            if ok:
                stats["garbage"].append(f"{name}(lr={lr!r}) refused")
            else:
                stats["refused"] += 1
    # checkpoints and IDX files with random damage: load correctly or raise ValueError
    import os, tempfile
    from symprop.runtime.data import read_idx
    tmp = tempfile.mkdtemp()
    m32, _, _ = twins("cnn_bn")
    good = m32.save(os.path.join(tmp, "good.npz"))
    raw = open(good, "rb").read()
    Xc = rng.normal(size=(3, 1, 4, 4)).astype(np.float32)
    want = m32.forward(Xc)
    idx = bytes([0, 0, 0x08, 2]) + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + bytes(range(12))
    for trial in range(int(sys.argv[1]) // 3):
        for kind, data in (("ckpt", raw), ("idx", idx)):
            b = bytearray(data)
            how = rng.integers(4)
            if how == 0:
                b = b[:rng.integers(len(b))]
            elif how == 1:
                for _ in range(rng.integers(1, 8)):
                    b[rng.integers(len(b))] = rng.integers(256)
            elif how == 2:
                b += bytes(rng.integers(0, 256, rng.integers(1, 64)).tolist())
            else:
                b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
            path = os.path.join(tmp, f"f{trial}.{kind}")
            open(path, "wb").write(bytes(b))
            stats["cases"] += 1
            try:
                if kind == "ckpt":
                    back = Sequential.load(path)
                    same = np.array_equal(back.forward(Xc), want)
                    # a flipped bit inside an array is undetectable without a checksum: it loads a
                    # different (finite) model; count only a wrong architecture as garbage
                    if back.input_shape != m32.input_shape or len(back.parameters()) != len(m32.parameters()):
                        stats["garbage"].append(f"{kind}: damaged file loaded as another architecture")
                    else:
                        stats["ok"] += 1
                else:
                    a = read_idx(path)
                    stats["ok"] += 1
            except ValueError:
                stats["refused"] += 1
            except Exception as exc:  # noqa: BLE001
                stats["bad_error"].append(f"{kind}: {type(exc).__name__}: {exc}")
    print(json.dumps(stats))
''')


def test_fuzz_public_entry_points(tmp_path):
    _fuzz(tmp_path, int(os.environ.get("SYMPROP_FUZZ_EXAMPLES", "600")))


@pytest.mark.fuzz_long
def test_fuzz_long_profile(tmp_path, request):
    """The long profile (4,000 examples, about 30 s idle): ``pytest -m fuzz_long``."""
    if "fuzz_long" not in (request.config.getoption("-m") or ""):
        pytest.skip("the long fuzz profile runs with: pytest -m fuzz_long")
    _fuzz(tmp_path, 4000)


def _fuzz(tmp_path, n):
    # from outside the checkout, so the installed package (not ./symprop) is imported
    r = subprocess.run([sys.executable, "-c", DRIVER, str(n)], capture_output=True, text=True, timeout=900,
                       cwd=tmp_path)
    assert r.returncode == 0, f"the fuzz process crashed (status {r.returncode}):\n{r.stderr[-3000:]}"
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"fuzz: {stats['cases']} cases, {stats['ok']} correct, {stats['refused']} refused, "
          f"{len(stats['garbage'])} garbage, {len(stats['bad_error'])} other errors")
    assert not stats["bad_error"], stats["bad_error"][:10]
    assert not stats["garbage"], stats["garbage"][:10]
    assert stats["refused"] > 0 and stats["ok"] > 0
