"""The Taylor-mode part of the LaTeX document: each activation's Taylor rules printed from the
derivation the kernels are emitted from, a model's forward-Laplacian sweep, and a PDE problem's
residual with the derivatives it needs and their cotangents."""
import functools
import re
import shutil
import subprocess
import sys

import pytest
import sympy as sp

from symprop import document
from symprop.derive import builtins
from symprop.derive.taylor import derive_taylor, faa_di_bruno, laplacian_role, vjp_role
from symprop.document import pde, sweep, taylor
from symprop.document.printer import tex
from symprop.document.shapes import describe_model

HAS_TEX = shutil.which("pdflatex") is not None and bool(
    shutil.which("kpsewhich") and subprocess.run(["kpsewhich", "lmodern.sty"], capture_output=True, text=True).stdout)
needs_tex = pytest.mark.skipif(not HAS_TEX, reason="needs pdflatex and Latin Modern (.ci/run installs them)")

#: activations whose derivations take a second or two (the others are checked in the slow test)
QUICK = ["sigmoid", "relu", "elu"]


@functools.lru_cache(maxsize=None)
def _kernels_derivation(name):
    """What ``symprop generate`` emits the Taylor kernels from (every order)."""
    return derive_taylor(builtins.ACTIVATIONS[name])


def _compile(tmp, text) -> str:
    """``text`` compiled twice with pdflatex in ``tmp``; the log."""
    (tmp / "d.tex").write_text(text)
    for _ in range(2):
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", "d.tex"],
                           cwd=tmp, capture_output=True, text=True, timeout=300)
    log = (tmp / "d.log").read_text(errors="replace")
    assert r.returncode == 0 and (tmp / "d.pdf").stat().st_size > 10000, log[-2000:]
    return log


def _no_layout_problems(log: str):
    assert "Overfull \\hbox" not in log, [ln for ln in log.splitlines() if "Overfull" in ln][:5]
    assert "LaTeX Warning: Reference" not in log and "There were undefined references" not in log


def _check_taylor_sections(doc, names):
    """Each activation has its Taylor section, f''' and f'''' labelled, and its forward-Laplacian
    rule printed as the kernel's realized ``laplacian`` role (the same forms ``derive_taylor``
    gives the generated kernels; compared before display rewriting, and shown equal after)."""
    text = doc.text
    assert "\\section{Taylor mode: derivatives with respect to the input}" in text
    for k, e in enumerate(faa_di_bruno(4), 1):           # the general rules, from the derivation
        assert tex(e, taylor.TaylorPrinter()) in text, k
    for name in names:
        assert f"\\label{{sec:taylor:{name}}}" in text and f"\\label{{eq:{name}:d3}}" in text \
            and f"\\label{{eq:{name}:d4}}" in text, name
        kernel = f"{name}_laplacian"
        printed = {p.output: p for p in doc.printed if p.kernel == kernel}
        role = next(r for r in _kernels_derivation(name).roles if r.role == "laplacian")
        for out, expr in role.point_outputs + role.dir_outputs:
            if out == "y":
                continue
            assert printed[out].expr == expr, (name, out)
            assert sp.simplify(printed[out].shown - expr) == 0 or sp.expand(printed[out].shown - expr) == 0, (name, out)


def test_each_activation_has_its_taylor_rules():
    doc = document.build(layers=QUICK, losses=False, taylor=True)
    _check_taylor_sections(doc, QUICK)
    assert "sec:taylor:sweep" not in doc.text        # no model, no sweep
    assert "\\section{Losses}" not in doc.text


def test_forms_are_the_generated_kernels_forms():
    """f''' and f'''' the document prints are the forms ``derive_taylor`` chooses for the kernels."""
    spec = builtins.ACTIVATIONS["sigmoid"]
    mine, theirs = taylor.taylor_forms(spec), _kernels_derivation("sigmoid").derivatives
    assert len(mine) == 4 and len(theirs) == 5
    for mine, theirs in zip(mine, theirs):
        assert mine.chosen == theirs.chosen and mine.textbook == theirs.textbook


def _mlp(shape=(3,), act="tanh"):
    return describe_model("net", shape, [
        {"type": "Dense", "in_features": shape[0], "out_features": 5, "bias": True}, {"type": "Activation", "name": act},
        {"type": "Dense", "in_features": 5, "out_features": 1, "bias": False}], loss="mse")


def test_forward_laplacian_sweep_of_a_model():
    """Value, Jacobian columns and Laplacian through each layer, then the backward through them:
    the activation lines are the derived laplacian role and its pullback with the layer's arrays."""
    info = _mlp()
    text = sweep.laplacian_sweep_section(info)
    assert "$d = 3$" in text and "\\mathbb{R}^{N \\times 3}" in text
    assert "x_{1} &= x_{0} W_{1}^\\top + b_{1}" in text and "J_{1,i} &= J_{0,i} W_{1}^\\top" in text
    assert "x_{3} &= x_{2} W_{3}^\\top \\in" in text                            # no bias
    P = taylor.TaylorPrinter(names=sweep._names(2))
    for out, e in laplacian_role().point_outputs + laplacian_role().dir_outputs + vjp_role(laplacian_role()).point_outputs \
            + vjp_role(laplacian_role()).dir_outputs:
        if out != "y":
            assert tex(sp.Symbol(out), P) + " &= " + tex(e, P) in text, out
    assert "L_{2} &= f_{2}' L_{1} + f_{2}'' \\sum_{i} J_{1,i}^{2}" in text
    assert "\\partial \\mathcal{L}/\\partial W_{3} &= (\\bar g^{x}_{3})^\\top x_{2}" in text
    assert "\\partial \\mathcal{L}/\\partial b_{3}" not in text and "\\partial \\mathcal{L}/\\partial b_{1}" in text
    assert "\\bar g^{x}_{0}" not in text                                        # the first layer: no input cotangent
    # in the document, after the Taylor rules it cites
    doc = document.build(layers=["sigmoid"], losses=False, sweep=_mlp(act="sigmoid"))
    assert doc.text.index("\\label{eq:taylor:lap}") < doc.text.index("\\label{sec:taylor:sweep}")


def test_a_layer_without_taylor_rule_is_named():
    info = describe_model("p", (1, 4, 4), [
        {"type": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3], "stride": [1, 1],
         "padding": [1, 1], "dilation": [1, 1]},
        {"type": "MaxPool2D", "kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0]},
        {"type": "Flatten"}, {"type": "Dense", "in_features": 8, "out_features": 1}])
    with pytest.raises(ValueError, match=r"layer 2 \(max pooling"):
        sweep.laplacian_sweep_section(info)
    assert sweep.unswept(info) == ["layer 2 (max pooling, 2$\\times$2)"]


def _poisson():
    from symprop import pinn
    return pinn.poisson2d()


def test_poisson_residual_its_derivatives_and_cotangents():
    """The residual as written and in the network's derivatives (hard factor through the product
    rule), the quantities it needs (N, its gradient and ΔN: the forward Laplacian), and
    ∂(r²)/∂q = 2 r ∂r/∂q for each."""
    problem = _poisson()
    term = problem.interior
    text = pde.pde_section(problem)
    P = pde.PDEPrinter(term)
    assert "\\section{A PDE problem: poisson2d}" in text
    assert "\\frac{\\partial^{2} u}{\\partial x^{2}}" in text                 # as written, u's derivatives
    assert sp.expand(pde.collected(term.r, term.qsyms) - term.r) == 0
    assert {s.name for s in term.qsyms} == {"N_", "N_op2", "N_x", "N_y"} and term.mode == "laplacian"
    assert "forward Laplacian" in text and "$d + 2 = 4$ arrays" in text
    for s, dr in pde.cotangents(term):
        assert sp.expand(2 * term.r * dr - sp.diff(term.r ** 2, s)) == 0, s
        lhs = "\\partial " + (tex(s, P) if s.name != "N_op2" else "(\\Delta N)")
        assert lhs in text, s
    assert "N_{x}" in text and "\\Delta N" in text and "N_" + "}" not in text   # no raw SymPy names
    assert not re.search(r"N_\{?(op2|)\}?[^a-z{]", text.replace("N_{x}", "").replace("N_{y}", ""))


def test_a_jet_problem_names_its_sweep():
    from symprop import pinn
    text = pde.pde_section(pinn.heat1d())
    assert "Taylor jets of order 2" in text and "Condition 1." in text and "Condition 2." in text
    assert "N_{xx}" in text and "N_{t}" in text


def test_a_collapsed_jet_problem_names_its_sweep():
    import sympy as sp
    from symprop import pinn
    x, y = sp.symbols("x y")
    u = sp.Function("u")(x, y)
    problem = pinn.Problem(residual=u.diff(x, 4) + 2 * u.diff(x, 2, y, 2) + u.diff(y, 4) - 1, domain={x: (0, 1), y: (0, 1)})
    text = pde.pde_section(problem)
    assert "collapsed Taylor mode" in text and "$2 + 3 \\cdot 4 = 14$ arrays per layer instead of $17$" in text


def test_build_refuses_a_non_model_sweep():
    with pytest.raises(TypeError, match="sweep must be a ModelInfo"):
        document.build(layers=[], sweep="mlp")


@needs_tex
def test_problem_document_compiles(tmp_path):
    """``problem.latex(path, model=...)``: the Taylor rules of the model's activation, its sweep
    and the Poisson residual, compiled without overfull lines or broken references."""
    from symprop import pinn
    problem = _poisson()
    model = pinn.mlp(2, width=6, depth=2, activation="sigmoid", dtype="float64")
    text = problem.latex(tmp_path / "p.tex", model=model)
    assert (tmp_path / "p.tex").read_text() == text
    assert "\\label{sec:taylor:sigmoid}" in text and "\\label{sec:taylor:sweep}" in text and "\\label{sec:pde}" in text
    assert "\\mathbb{R}^{N \\times 6}" in text
    _no_layout_problems(_compile(tmp_path, text))


def test_cli_latex_taylor(tmp_path):
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "latex", "--taylor", "--layers", "relu",
                        "-o", str(tmp_path / "d.tex")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "d.tex").read_text()
    assert "\\label{sec:taylor:relu}" in text and "\\label{app:taylor:relu}" in text and "\\label{sec:relu}" in text


@pytest.mark.slow   # every activation's f''' and f'''' (Mish's alone take about 40 s)
@needs_tex
def test_every_activation_taylor_document_compiles(tmp_path):
    doc = document.build(layers=list(builtins.ACTIVATIONS), losses=False, taylor=True, sweep=_mlp())
    _check_taylor_sections(doc, list(builtins.ACTIVATIONS))
    _no_layout_problems(_compile(tmp_path, doc.text))


@pytest.mark.slow   # derives tanh's f''' and f'''' and trains one epoch
def test_cli_pinn_latex(tmp_path):
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "pinn", "--problem", "heat1d", "--epochs", "1",
                        "--width", "4", "--depth", "1", "--latex", str(tmp_path / "heat.tex")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "heat.tex").read_text()
    assert "\\section{A PDE problem: heat1d}" in text and "Taylor jets of order 2" in text
    assert "\\label{sec:taylor:tanh}" in text and "\\label{sec:taylor:sweep}" in text
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "pinn", "--epochs", "1", "--latex",
                        str(tmp_path / "nowhere" / "p.tex")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "--latex" in r.stderr
