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
