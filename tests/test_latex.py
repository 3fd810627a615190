"""The LaTeX derivation export: the document prints the kernels' own expressions."""
import shutil
import subprocess
import sys

import pytest
import sympy as sp

from symprop.derive import ElementwiseSpec, builtins, derive_contraction, derive_elementwise, latex

HAS_TEX = shutil.which("pdflatex") is not None and shutil.which("pdftotext") is not None


@pytest.fixture(scope="module")
def full():
    return latex.document(model=("lenet", ["conv2d", "relu", "maxpool2d", "dense"]))


def test_every_builtin_layer_has_its_section(full):
    for name in latex.builtin_layer_names():
        assert f"\\texttt{{{latex.escape(name)}}}}}" in full, name
    assert "\\section{Losses}" in full and "composed chain rule" in full


def test_the_document_prints_the_emitted_expressions(full):
    """Each kernel's expression, printed by the document's printer, appears verbatim."""
    for spec in builtins.ACTIVATIONS.values():
        for k in derive_elementwise(spec).kernels:
            for o, e in k.outputs:
                assert latex._equation(latex.tex(sp.Symbol(o)), e, f"eq:{k.name}:{o}") in full, k.name
    for spec in {**builtins.CONTRACTIONS, **builtins.WINDOWS}.values():
        for k in derive_contraction(spec).kernels:
            assert latex._equation(latex._lhs(k.out, k.out_indices), k.expr) .split("\\label")[0] \
                .rsplit("\n\\end{align}", 1)[0] in full, k.name
            assert latex._kernel_ref(k.name) in full


def test_guarded_adjoint_prints_as_iverson_brackets(full):
    i = full.index("\\texttt{conv2d\\_vjp\\_x}")
    eq = full[i:full.index("\\end{align}", i)]
    assert "\\bmod s_{h} = 0\\right]" in eq and "\\begin{cases}" not in eq


def test_escape():
    assert latex.escape("my_act#1%&\\") == r"my\_act\#1\%\&\textbackslash{}"
    with pytest.raises(ValueError, match="unknown layer"):
        latex.document(layers=["nope"])


def user_spec():
    x = sp.Symbol("x")
    return ElementwiseSpec("my_act", x * sp.tanh(sp.log(1 + sp.exp(x))), x, doc="my_act#1% (Mish) & friends")


@pytest.mark.skipif(not HAS_TEX, reason="needs pdflatex and pdftotext (.ci/run installs them)")
def test_pdf_of_all_builtins_and_a_user_activation(tmp_path):
    text = latex.document(extra=[user_spec()], model=("mlp", ["dense", "relu", "dense"]))
    pdf = latex.compile_pdf(text, tmp_path / "d.pdf")
    out = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
    for name in latex.builtin_layer_names() + ["my_act"]:
        assert name in out, name
    assert "my_act#1% (Mish) & friends" in out
    # a page (at least) per section: every section heading starts a page
    pages = out.split("\f")
    sections = latex.builtin_layer_names() + ["my_act"]
    assert len(pages) >= len(sections) + 2          # + losses and the model
    for name in sections:
        starts = [p for p in pages if p.lstrip().split("\n")[0].strip().endswith(name)]
        assert starts, f"no page starts with the section of {name}"


@pytest.mark.skipif(not HAS_TEX, reason="needs pdflatex (.ci/run installs it)")
def test_cli_latex_with_spec_file_and_model(tmp_path):
    spec = tmp_path / "myspec.py"
    spec.write_text("import sympy as sp\nfrom symprop.derive import ElementwiseSpec\nx = sp.Symbol('x')\n"
                    "SWISH = ElementwiseSpec('swish_1', x / (1 + sp.exp(-x)), x, doc='swish #1 50%')\n")
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "latex", "--spec", str(spec), "--model", "lenet",
                        "-o", str(tmp_path / "d.tex"), "--pdf"], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tex = (tmp_path / "d.tex").read_text()
    assert "swish\\_1" in tex and "Model \\texttt{lenet}" in tex and "Layer \\texttt{conv2d}" in tex
    assert (tmp_path / "d.pdf").stat().st_size > 10000


def test_cli_latex_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "latex", "--layers", "tanh,bogus", "-o",
                        str(tmp_path / "d.tex")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "unknown layer(s) ['bogus']" in r.stderr
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "latex", "--spec", str(tmp_path / "none.py")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr


@pytest.mark.skipif(not HAS_TEX, reason="needs pdflatex (.ci/run installs it)")
def test_no_formula_runs_off_the_page(tmp_path):
    (tmp_path / "d.tex").write_text(latex.document(model=("lenet", ["conv2d", "relu", "maxpool2d", "dense"])))
    subprocess.run(["pdflatex", "-interaction=nonstopmode", "-no-shell-escape", "d.tex"], cwd=tmp_path,
                   capture_output=True, timeout=300)
    log = (tmp_path / "d.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log, [ln for ln in log.splitlines() if "Overfull" in ln][:5]
    assert "LaTeX Warning: Reference" not in log and "Missing character" not in log


def test_hessian_diagonal_rules_are_derived_from_the_pullbacks():
    """Becker-LeCun and Gauss-Newton rules printed for a layer follow from its own VJPs: for the
    dense layer they are the formulas the runtime evaluates with the pullback kernels on squared
    arrays (h_x = Σ_o W² h, diag W = Σ_n x² Σ_k S²)."""
    d = derive_contraction(builtins.DENSE)
    n, o, i = (sp.Symbol(s, integer=True) for s in "noi")
    N, O, I = (sp.Symbol(s, integer=True, positive=True) for s in "NOI")
    W, x, h, S = (sp.IndexedBase(s) for s in ("W", "x", "H", "S"))
    k, K = sp.Symbol("k", integer=True), sp.Symbol("K", integer=True, positive=True)
    bl_x = d.bls["x"].expr          # what the dense_bl_x kernel computes
    assert sp.simplify(bl_x.doit() - sp.Sum(W[o, i] ** 2 * h[n, o], (o, 0, O - 1)).doit()) == 0
    gn_W = d.sqvjps["W"].definition
    assert gn_W == sp.Sum(S[k, n, o] ** 2 * x[n, i] ** 2, (k, 0, K - 1), (n, 0, N - 1))
    assert d.sqvjps["W"].mode == "factorized"
    assert derive_contraction(builtins.CONV2D).sqvjps["W"].mode == "per_sample"
    conv = latex.contraction_section(derive_contraction(builtins.CONV2D))
    assert "eq:conv2d:bl:x" in conv and "eq:conv2d:gn:W" in conv and "eq:conv2d:gn:b" in conv
    assert "{W}_{o,c,i,j}^{2}" in conv


def test_composite_sections_print_the_stage_by_stage_chain_rule(full):
    from symprop.derive.composite import derive_composite
    d = derive_composite(builtins.BATCHNORM)
    i = full.index("Composite layer \\texttt{batchnorm}")
    sec = full[i:full.index("\\clearpage", i)]
    assert "Backward sweep, stage by stage" in sec
    for st, a in d.sweep:     # every stage's adjoint, as derived
        assert r"\bar{" + latex.tex(st.symbol) + "} &= " + latex.tex(d.pretty(a)) in sec
    assert latex._equation(r"\bar{g}^{x}", d.pretty(d.vjp["x"]), "eq:batchnorm:vjp:x") in sec
    assert r"\sum_{\mathcal{G}}\!\left(\hat{x}\right) &= 0" in sec     # the identity mean(x) = μ implies
    assert "\\texttt{batchnorm\\_rvjp}: one pass accumulating 7 group sums" in sec
    s = full[full.index("Composite layer \\texttt{softmax}"):]
    assert "The adjoint of the shift $m$ simplifies to zero" in s
