"""A new built-in layer is its definition and nothing else.

In a copy of the installed package, one ``LayerDef`` (with its spec) is added to the layer
registry in ``derive/builtins.py`` — no other file is touched. The module of its family is
regenerated and compiled, and the layer is then used as every built-in is: ``L.<Name>`` in a
model (gradient and Hessian-vector product against float64 finite differences), a checkpoint
round trip, ``summary()``, the document's model shapes and the LaTeX derivation.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow   # regenerates and compiles one kernel module (minutes on two cores)

# the new layer: a bias-free linear map y[n,o] = Σ_i x[n,i]·V[o,i], written exactly as the
# built-ins are (an item of the LAYERS tuple)
NEW_LAYER = '''
    LayerDef("Linear", ContractionSpec(
                 name="linear", output="y", out_indices=(n, o),
                 expr=sp.Sum(_x[n, i] * sp.IndexedBase("V")[o, i], (i, 0, I - 1)),
                 inputs={"x": (n, i)}, params={"V": (o, i)}, extents={n: N, o: O, i: I},
                 doc="linear map without bias y = x Vᵀ"), "dense",
             args=(Arg("in_features", "count", binds=("I",)), Arg("out_features", "count", binds=("O",))),
             params=(Param("V", penalized=True),), title="Linear({in_features} -> {out_features})",
             label="Linear map, {in_features}$\\\\to${out_features}"),
'''

USE = textwrap.dedent('''
    import numpy as np, symprop
    from pathlib import Path
    assert Path(symprop.__file__).resolve().is_relative_to(Path(ROOT).resolve()), symprop.__file__
    from symprop import Sequential, layers as L
    from symprop import document as latex

    rng = np.random.default_rng(3)
    model = Sequential([L.Linear(4, 6), L.Tanh(), L.Dense(6, 3)], dtype="float64", seed=1, l2=0.1)
    X, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    V = model.parameters()[0]
    assert V.shape == (6, 4) and len(model.parameters()) == 3 and model.layers[0].penalized()[0] is V

    # the gradient and the HVP against central differences in float64
    loss, grads = model.loss_and_grad(X, y)
    v = [rng.standard_normal(p.shape) for p in model.parameters()]
    hv = model.hvp(X, y, v)
    h = 1e-6
    fd_g = np.zeros_like(V)
    for k in np.ndindex(V.shape):
        V[k] += h; up = model.loss_and_grad(X, y)[0]
        V[k] -= 2 * h; down = model.loss_and_grad(X, y)[0]
        V[k] += h
        fd_g[k] = (up - down) / (2 * h)
    assert np.abs(grads[0] - fd_g).max() < 1e-7, np.abs(grads[0] - fd_g).max()
    def grad_at(t):
        for p, d in zip(model.parameters(), v):
            p += t * d
        g = model.loss_and_grad(X, y)[1]
        for p, d in zip(model.parameters(), v):
            p -= t * d
        return g
    up, down = grad_at(1e-5), grad_at(-1e-5)
    for a, u, d in zip(hv, up, down):
        assert np.abs(a - (u - d) / 2e-5).max() < 1e-6, np.abs(a - (u - d) / 2e-5).max()
    assert model.hessian_diagonal(X, y, method="exact")[0].shape == (6, 4)

    # a checkpoint round trip
    model.save(OUT + "/m.npz")
    back = Sequential.load(OUT + "/m.npz")
    assert back.layers[0].config() == {"type": "Linear", "in_features": 4, "out_features": 6}
    assert abs(back.loss_and_grad(X, y)[0] - loss) < 1e-12

    # summary(), the document's model shapes and the derivation
    lines = []
    model.summary(print_fn=lines.append)
    row = next(line for line in lines if "Linear(4 -> 6)" in line)
    assert "(N, 6)" in row and row.split()[-1] == "24", row
    info = latex.describe_model("m", (4,), [la.config() for la in model.layers])
    first = info.layers[0]
    assert first.spec == "linear" and first.out_shape == (6,) and first.params == [("V", (6, 4))]
    assert "Linear map, 4" in first.label and info.n_params == 24 + 18 + 3
    text = model.latex()
    assert "linear map without bias" in text.lower() and r"\\begin{document}" in text
    print("ok")
''')


def _run(code: str, root: Path, cwd: Path, timeout: int = 1200):
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_a_new_builtin_layer_is_its_definition_and_nothing_else(tmp_path):
    import symprop
    installed = Path(symprop.__file__).resolve().parent
    root = tmp_path / "site"
    pkg = root / "symprop"
    shutil.copytree(installed, pkg, ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    before = {p.relative_to(pkg): p.read_bytes() for p in pkg.rglob("*") if p.is_file()}

    # the one edit: a LayerDef item in the registry of derive/builtins.py
    builtins = pkg / "derive" / "builtins.py"
    text = builtins.read_text()
    anchor = '    _batchnorm("BatchNorm1D", (1, 2)),\n'
    assert text.count(anchor) == 1
    builtins.write_text(text.replace(anchor, NEW_LAYER.lstrip("\n") + anchor))

    # regenerate the family's module: only dense.pyx changes
    gen = pkg / "generated"
    drift = _run(f"from symprop.codegen.generate import generate\n"
                 f"print(generate({str(gen)!r}, only={{'dense.pyx'}}))", root, tmp_path)
    assert drift.strip() == "['dense.pyx']", drift
    # compile it in place of the installed module
    build = tmp_path / "build"
    build.mkdir()
    shutil.copy(gen / "dense.pyx", build / "dense.pyx")
    shutil.copy(gen / "symprop_math.h", build / "symprop_math.h")
    _run(f"from pathlib import Path\nfrom symprop.codegen.build import _compile\n"
         f"_compile('dense', Path({str(build / 'dense.pyx')!r}), Path({str(build)!r}), False)", root, tmp_path)
    (so,) = (build / "lib").rglob("dense*.so")
    (old,) = gen.glob("dense*.so")
    shutil.copy(so, old)

    changed = sorted(str(p) for p in (q.relative_to(pkg) for q in pkg.rglob("*") if q.is_file())
                     if p.suffix != ".pyc" and "__pycache__" not in p.parts and before.get(p) != (pkg / p).read_bytes())
    assert changed == sorted(["derive/builtins.py", "generated/dense.pyx", str(old.relative_to(pkg))]), changed

    out = tmp_path / "out"
    out.mkdir()
    assert _run(f"ROOT, OUT = {str(root)!r}, {str(out)!r}\n" + USE, root, tmp_path).strip().endswith("ok")
