"""The LaTeX derivation export: the document prints the kernels' own expressions, for a reader."""
import itertools
import re
import shutil
import subprocess
import sys

import pytest
import sympy as sp

from symprop.cli import _model_info
from symprop import document
from symprop.derive import ElementwiseSpec, builtins
from symprop.document import contraction, derived, printer, prose, schedule, shapes, simplify

HAS_TEX = shutil.which("pdflatex") is not None and shutil.which("pdftotext") is not None and bool(
    shutil.which("kpsewhich") and subprocess.run(["kpsewhich", "lmodern.sty"], capture_output=True, text=True).stdout)
needs_tex = pytest.mark.skipif(not HAS_TEX, reason="needs pdflatex, Latin Modern and pdftotext (.ci/run installs them)")


def user_spec():
    x = sp.Symbol("x")
    return ElementwiseSpec("my_act", x * sp.tanh(sp.log(1 + sp.exp(x))), x, doc="my_act#1% (Mish) & friends")


@pytest.fixture(scope="module")
def doc():
    return document.build(extra=[user_spec()], model=_model_info("lenet"))


@pytest.fixture(scope="module")
def full(doc):
    return doc.text


def _compile(tmp, text):
    """``text`` compiled with pdflatex in ``tmp``: (pdf path, log text)."""
    (tmp / "d.tex").write_text(text)
    for _ in range(2):
        subprocess.run(["pdflatex", "-interaction=nonstopmode", "-no-shell-escape", "d.tex"], cwd=tmp,
                       capture_output=True, timeout=300)
    return tmp / "d.pdf", (tmp / "d.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def pdf(tmp_path_factory, full):
    """The full document compiled once: (pdf path, log text)."""
    if not HAS_TEX:
        pytest.skip("needs pdflatex, Latin Modern and pdftotext (.ci/run installs them)")
    return _compile(tmp_path_factory.mktemp("latex"), full)


MODELS = ["mlp", "cnn", "lenet", "cifar_cnn"]


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory, pdf):
    """The full document and each ``--model`` document as the CLI writes it (the model's layers
    only), compiled once: {name: (pdf path, log text, tex)}."""
    out = {"full": (*pdf, None)}
    known = derived.builtin_layer_names()
    for name in MODELS:
        info = _model_info(name)
        text = document.document(layers=list(dict.fromkeys(la.spec for la in info.layers if la.spec in known)),
                              model=info)
        out[name] = (*_compile(tmp_path_factory.mktemp(name), text), text)
    return out


def _section(full, name):
    """The text of one layer's section (its subsection up to the next heading of its level)."""
    i = full.index(f"\\label{{sec:{name}}}")
    j = min(k for k in (full.find("\\subsection", i), full.find("\\section", i), len(full)) if k >= 0)
    return full[full.rindex("\\subsection", 0, i):j]


def test_every_builtin_layer_has_its_section(full):
    """Titles in words (no typewriter, no underscores); the spec name given once, in the text."""
    for name in derived.builtin_layer_names() + ["my_act"]:
        sec = _section(full, name)
        title = re.match(r"\\subsection\{([^}]*)\}", sec).group(1)
        assert name == "my_act" or re.fullmatch(r"[A-Z][A-Za-z ,()-]+", title), (name, title)
        assert sec.count(prose._kernel_ref(name)) == 1, name
        assert f"\\label{{app:{name}}}" in full, name         # its kernels' appendix table
    assert _section(full, "batchnorm_eval").startswith("\\subsection{Batch normalisation, evaluation mode}")
    assert _section(full, "tanh").startswith("\\subsection{Hyperbolic tangent}")
    assert _section(full, "my_act").startswith("\\subsection{my\\_act\\#1\\% (Mish) \\& friends}")
    for part in ("Elementwise layers: activations, masks, penalties", "Dense and window layers", "Normalisation and softmax: composite layers",
                 "Losses", "Model: LeNet-5"):
        assert f"\\section{{{part}}}" in full, part
    rows = re.findall(r"^\\texttt\{([^}]*)\} & ", full, re.M)      # kernel-table rows: one per kernel
    assert len(rows) > 100 and len(rows) == len(set(rows)), [r for r in rows if rows.count(r) > 1]
    for title in re.findall(r"\\(?:sub)*section\*?\{([^}]*)\}", full):
        assert "\\texttt" not in title and ("\\_" not in title or title.startswith("my")), title


def _displays(full):
    """The display-math environments of the text."""
    return re.findall(r"\\begin\{(equation|align)\*?\}(.*?)\\end\{\1\*?\}", full, re.S)


def test_mathematics_in_mathematical_notation_only(full):
    """No typewriter text or kernel name in display mathematics; elementary functions by their
    mathematical names; guarded limits as cases; multi-letter subscripts upright."""
    for _, body in _displays(full):
        body = re.sub(r"\\label\{[^}]*\}", "", body)          # labels are not printed
        assert "\\texttt" not in body and "\\operatorname{finite" not in body, body[:200]
        assert "_forward" not in body and "_vjp" not in body and "backprop" not in body, body[:200]
    for word in ("expm1", "expm_{1}", "log1p", "finite\\_or", "finite_or"):
        assert word not in full, word
    assert re.search(r"e\^\{[^}]*\} - 1", full)                # expm1 printed as e^u - 1
    assert "\\guarded{" in full and "\\newcommand{\\guarded}" in full
    assert not re.search(r"_\{(?:in|out)\}", full) and "H_{\\mathrm{out}}" in full
    assert not re.search(r"\\end\{cases\}\s*(\\left\(|[A-Za-z+-])", full), "what follows cases reads as part of them"
    assert not re.search(r"\\tau_\{\d+\} = \\sqrt\{2\}", full), "a constant pulled out as a temporary"
    assert "\\section*{Notation}\n\\begin{center}" in full          # the notation is a table
    table, rest = full.split("\\section{", 1)
    assert ("\\tau_1, \\tau_2" in table) == ("\\tau_{" in rest)   # it lists the symbols the document uses
    assert ("$\\guarded{e}{a}$" in table) == ("\\guarded{" in rest)
    body = full[full.index("\\begin{document}"):full.index("\\appendix")]
    specs = {printer.escape(n) for n in derived.builtin_layer_names() + ["my_act"]}
    for word in re.findall(r"\\texttt\{([^}]*)\}", body):   # before the appendix: spec names, files, commands only
        assert word in specs or word.endswith(".py") or word.startswith("symprop ") or "=" in word, word
    assert "\\texttt{symprop train -{}-{}model lenet}" in body     # a CLI flag set verbatim (no en dash)


def _equal(a, b) -> bool:
    """Symbolically equal, or (display rewriting inside finite_or's argument, which expand does
    not see through) equal at random points with finite_or(e, limit), nan_through(e, v) and
    at_infinity(e, v, s, a) read as e; a folded constant as its exact value."""
    from symprop.derive.rewrite import Folded
    a, b = (e.replace(lambda t: isinstance(t, Folded), lambda t: t.exact) for e in (a, b))
    if sp.expand(a - b) == 0:
        return True
    import random
    # the floating-point guards read as the function they guard
    plain = {"finite_or": lambda e, limit: e, "nan_through": lambda e, v: e, "at_infinity": lambda e, v, s, a: e}
    fa, fb = (sp.lambdify(sorted(a.free_symbols | b.free_symbols, key=str), e, modules=[plain, "mpmath"])
              for e in (a, b))
    rnd = random.Random(0)
    n = len(a.free_symbols | b.free_symbols)
    for _ in range(5):
        args = [rnd.uniform(-3, 3) for _ in range(n)]
        if abs(fa(*args) - fb(*args)) > 1e-12 * (1 + abs(fb(*args))):
            return False
    return True


def _flat(t: str) -> str:
    """LaTeX with the line breaks of long equations undone (the continuation markup the layout
    adds: a new aligned line and a leading ·) and without white space, for finding a formula."""
    t = re.sub(r"\\notag\\\\\s*&\\quad", " ", t).replace("\\cdot", " ")
    return re.sub(r"\s+", "", t)


def test_the_document_prints_the_emitted_expressions(doc):
    """Every kernel's expression is printed, compared before any display rewriting: the recorded
    expression is the kernel's own, and what was shown (CSE temporaries substituted back, display
    rewriting undone by algebra) equals it."""
    printed, text = {}, _flat(doc.text)
    for p in doc.printed:
        printed.setdefault(p.kernel, []).append(p)
    for spec in derived._elementwise_builtins().values():   # the derivations the kernels are emitted from
        for k in derived._derive(spec).kernels:
            for o, e in k.outputs:
                (p,) = [p for p in printed[k.name] if p.output == o]
                assert p.expr == e, k.name
                shown = p.shown
                for t, v in reversed(p.temps):
                    shown = shown.subs(t, v)
                assert _equal(shown, e), k.name
                assert _flat(printer.tex(p.shown)) in text, k.name
    for spec in {**builtins.CONTRACTIONS, **builtins.WINDOWS}.values():
        for k in derived._derive(spec).kernels:
            assert any(p.expr == k.expr for p in printed[k.name]), k.name
            assert prose._kernel_ref(k.name) in doc.text and f"\\label{{eq:{k.name}}}" in doc.text \
                or k.role == "forward", k.name


def test_no_raw_temporaries_or_unit_factors(full):
    assert "$_t" not in full and "_t0" not in full and "{t}_{0}" not in full
    for tau in set(re.findall(r"\\tau_\{\d+\}", full)):     # every temporary shown is defined where used
        assert re.search(re.escape(tau) + r" = ", full), tau
    math = re.findall(r"\$[^$]*\$|\\begin\{(?:equation|align)\}.*?\\end\{(?:equation|align)\}", full, re.S)
    # (a pullback's count after collapsing its deltas may be one multiply-add: "C N P \to 1")
    body = " ".join(math).replace("\\times 1", "").replace("\\begin{cases} 1", "").replace("\\to 1$", "$")
    assert not re.search(r"\]\s*(\\,)?\s*1(?![0-9])", body), "Iverson bracket times 1"
    assert not re.search(r"[A-Za-z}] 1(?![0-9])", body), "a factor 1 (e.g. dilation 1)"
    assert "\\bmod" not in full and "\\frac{p_{h}}{s_{h}}" not in full   # guards are compact


def test_display_forms_keep_indices_and_read_well(full):
    assert r"p_{j} \left(v_{j} - \langle p, v\rangle\right)" in full.replace("{p}_{j}", "p_{j}").replace(
        "{v}_{j}", "v_{j}")
    assert "2 \\left(a - t\\right)" in full and "- a + t" not in full
    assert "\\bar{g} y \\left(1 - y\\right)" in full          # sigmoid: σ' = y(1 − y), not −y(y − 1)
    x = sp.Symbol("x")
    for e in (-2 * (-x + 1), -x * (x - 1), 2 * x * (x - 1) * (x + 1)):
        assert sp.expand(simplify.display_form(e) - e) == 0


def _grid_values(m, s, d, p, H_out):
    return {m.stride: s, m.dilation: d, m.padding: p, m.out_extent: H_out}


@pytest.mark.parametrize("layer", ["conv2d", "maxpool2d"])
def test_compact_guards_equal_the_normalised_ones(layer):
    """[s | û + p − k d]·[0 ≤ h < H_out] is the derivation's guard: symbolically (the same
    relations in canonical form), as the conditions in the derived pullback, and numerically on a
    grid of strides, dilations and paddings against a brute-force search for the output position."""
    spec = builtins.WINDOWS[layer]
    d = derived._derive(spec)
    (pw,) = d.vjps["x"].expr.atoms(sp.Piecewise)
    conds = {printer.canonical(c) for c in sp.And.make_args(pw.args[0].cond)}
    for m in spec.maps:
        gd = printer.CompactGuard(m)
        normal = gd.normalised()
        assert {printer.canonical(c) for c in gd.conditions()} == {printer.canonical(c) for c in normal}
        assert {printer.canonical(c) for c in normal} <= conds
        for s, dil, p, H_out in itertools.product((1, 2, 3), (1, 2) if m.dilation != 1 else (1,), (0, 1, 2), (1, 4)):
            vals = _grid_values(m, s, dil, p, H_out)
            for u, k in itertools.product(range(-1, H_out * s + 4), range(4)):
                point = {**vals, m.inp: u, m.kernel: k}
                brute = any(h * s + k * dil - p == u for h in range(H_out))
                assert gd.holds(point) == brute, (layer, point)
                assert bool(sp.And(*normal).subs(point)) == brute, (layer, point)
                assert all(bool(c.subs(point)) for c in gd.conditions()) == brute


def test_conv_pullback_reads_like_the_textbook(full):
    i = full.index("\\label{eq:conv2d_vjp_x}")
    eq = full[full.rindex("\\begin{align}", 0, i):i]
    assert r"[s_{h} \mid \hat h + p_{h} - k d_{h}][0 \le h < H_{\mathrm{out}}]" in eq
    assert r"{\bar{g}}_{n,o,h,w}" in eq and "\\frac" not in eq
    assert r"\hat h = h s_{h} + k d_{h} - p_{h}" in full


def test_model_shapes_parameters_and_chain_rule(full):
    info = _model_info("lenet")
    assert [la.out_shape for la in info.layers] == [(6, 32, 32), (6, 32, 32), (6, 16, 16), (16, 12, 12),
                                                    (16, 12, 12), (16, 6, 6), (576,), (120,), (120,), (84,),
                                                    (84,), (10,)]
    assert info.n_params == 156 + 2416 + 576 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10
    i = full.index("\\section{Model: LeNet-5}")
    part = full[i:]
    assert r"\mathbb{R}^{N \times 6 \times 32 \times 32}" in part and "82\\,826" in part
    assert "J_{\\theta_k}^\\top\\, J_{k+1}^\\top \\cdots J_{12}^\\top" in part       # reverse order
    assert "\\sum_k J_{12} \\cdots J_{k+1} J_{\\theta_k}" in part                    # forward order
    for call in ("loss\\_and\\_grad", "hvp", "hutchinson", "exact", "gauss\\_newton", "becker\\_lecun"):
        assert f"\\texttt{{{call}" in part, call


@pytest.mark.parametrize("name", ["mlp", "cnn", "lenet", "cifar_cnn"])
def test_shape_only_layers_describe_the_real_model(name):
    """``latex --model`` runs runtime/named_models.py on shape-only stand-ins (no kernels needed): their
    configs and shapes must be the real model's."""
    from symprop.cli import MODEL_INPUTS
    from symprop.runtime.named_models import MODELS

    real = MODELS[name](MODEL_INPUTS[name], classes=10)
    info = _model_info(name)
    assert [la.config for la in info.layers] == [la.config() for la in real.layers]
    shape = MODEL_INPUTS[name]
    for la, described in zip(real.layers, info.layers):
        shape = la.output_shape(shape)
        assert tuple(shape) == described.out_shape, described.label
    assert info.n_params == sum(p.size for p in real.parameters())


def test_model_shapes_match_torch():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    for name in ("mlp", "cnn", "lenet", "cifar_cnn"):
        info = _model_info(name)
        mods = []
        for la in info.layers:
            c = la.config
            mods.append({"Dense": lambda: nn.Linear(c["in_features"], c["out_features"]),
                         "Conv2D": lambda: nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel_size"],
                                                     c["stride"], c["padding"], c["dilation"]),
                         "MaxPool2D": lambda: nn.MaxPool2d(c["kernel_size"], c["stride"], c["padding"]),
                         "AvgPool2D": lambda: nn.AvgPool2d(c["kernel_size"], c["stride"], c["padding"]),
                         "Flatten": nn.Flatten, "Activation": nn.ReLU}[la.kind]())
        x = torch.zeros((2,) + info.input_shape)
        for m, la in zip(mods, info.layers):
            x = m(x)
            assert tuple(x.shape[1:]) == la.out_shape, (name, la.label)
            assert sum(p.numel() for p in m.parameters()) == sum(shapes._size(s) for _, s in la.params)


def _collapse(names):
    """Consecutive repeats as one: the document says "per column" or "per factor group"."""
    return [n for k, n in enumerate(names) if k == 0 or names[k - 1] != n]


def _kernels_the_runtime_runs(model, call):
    """The spec kernels ``call(model)`` runs, in order, recorded at the executor (losses excluded;
    repeats of one kernel for several columns or groups collapsed)."""
    from symprop.runtime import kernels

    ran = []
    original = kernels.SpecKernels._call

    def recorded(self, role, env, *a, **kw):
        out = original(self, role, env, *a, **kw)
        # a role linear in absent directions runs no kernel; the loss's kernels are left aside
        if out is not None and self.entry["family"] != "loss":
            ran.append(self.entry["roles"][role]["kernel"])
        return out
    kernels.SpecKernels._call = recorded
    try:
        call(model)
    finally:
        kernels.SpecKernels._call = original
    return _collapse(ran)


@pytest.mark.parametrize("configs,shape", [
    ([("Dense", 6, 5), ("Activation", "relu"), ("Dense", 5, 3)], (6,)),
    ([("Dense", 6, 5), ("Activation", "tanh"), ("Dense", 5, 4), ("Activation", "sigmoid"), ("Dense", 4, 3)], (6,)),
    ([("Conv2D", 1, 2, 3), ("Activation", "tanh"), ("MaxPool2D", 2), ("Flatten",), ("Dense", 18, 3)], (1, 8, 8)),
])
def test_kernel_schedule_is_what_the_runtime_runs(configs, shape):
    """The document's kernels per call (loss_and_grad, hvp, each Hessian diagonal), recorded by
    the sweep engine, are the spec kernels the runtime's executor actually calls (intercepted
    here independently), in the same order (loss kernels aside)."""
    import numpy as np

    from symprop import Sequential
    from symprop import layers as L

    build = {"Dense": lambda a, b: L.Dense(a, b), "Activation": lambda n: L.Activation(n),
             "Conv2D": lambda c, o, k: L.Conv2D(c, o, k), "MaxPool2D": lambda k: L.MaxPool2D(k),
             "Flatten": lambda: L.Flatten()}
    model = Sequential([build[c[0]](*c[1:]) for c in configs], input_shape=shape, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((4,) + shape), rng.integers(0, 3, 4)
    v = [rng.standard_normal(p.shape) for p in model.parameters()]
    from symprop.runtime.sweep import record_schedule

    info = shapes.describe_model("m", shape, [la.config() for la in model.layers])
    info.schedule = record_schedule(model)
    sched = {k: _collapse([n for _, n, _ in steps if not n.startswith("softmax_cross_entropy")])
             for k, steps in schedule.kernel_schedule(info).items()}
    calls = {"loss_and_grad": lambda m: m.loss_and_grad(X, y), "hvp": lambda m: m.hvp(X, y, v)}
    for method in ("exact", "gauss_newton", "becker_lecun"):
        calls[method] = lambda m, method=method: m.hessian_diagonal(X, y, method=method)
    for call, fn in calls.items():
        assert _kernels_the_runtime_runs(model, fn) == sched[call], call
    one_probe = _kernels_the_runtime_runs(model, lambda m: m.hessian_diagonal(X, y, method="hutchinson", samples=1))
    assert one_probe == sched["hutchinson"]


def test_escape():
    assert printer.escape("my_act#1%&\\") == r"my\_act\#1\%\&\textbackslash{}"
    with pytest.raises(ValueError, match="unknown layer"):
        document.document(layers=["nope"])


@needs_tex
def test_pdf_has_no_overfull_boxes_or_broken_references(pdfs):
    """Tables and equations fit the text width; every reference resolves."""
    for which, (_, log, _) in pdfs.items():
        assert "Overfull \\hbox" not in log, (which, [ln for ln in log.splitlines() if "Overfull" in ln][:5])
        assert "LaTeX Warning: Reference" not in log and "Missing character" not in log, which
        assert "LaTeX Warning: There were undefined references" not in log, which


PART_TITLE = re.compile(r"^\s*(\d+|[A-Z])\s+(Elementwise layers|Dense and window layers|Normalisation and softmax|Losses"
                        r"|Model:|Kernels\b)")


def _pages(path) -> list[str]:
    """The text of every page, laid out (``pdftotext -layout``)."""
    n = int(re.search(r"Pages:\s+(\d+)", subprocess.run(["pdfinfo", str(path)], capture_output=True,
                                                        text=True).stdout).group(1))
    return [subprocess.run(["pdftotext", "-layout", "-f", str(i), "-l", str(i), str(path), "-"], capture_output=True,
                           text=True).stdout for i in range(1, n + 1)]


def _fill(path) -> list[float]:
    """How full each page is: the lowest word of the text block (the page number excluded)
    against the text block's height, from the PDF's word boxes."""
    html = subprocess.run(["pdftotext", "-bbox", str(path), "-"], capture_output=True, text=True).stdout
    top, bottom = 56.9, 842 - 56.9                     # A4, 2 cm margins
    out = []
    for pg in html.split("<page ")[1:]:
        ys = [float(y) for y in re.findall(r'yMax="([0-9.]+)"', pg) if float(y) < bottom + 5]
        out.append((max(ys) - top) / (bottom - top))
    return out


@needs_tex
@pytest.mark.parametrize("which", ["full"] + MODELS)
def test_no_page_under_a_third_full_except_the_last_of_a_part(pdfs, which):
    """Sections flow; only a part ends on a short page (measured from the PDF, not the .tex)."""
    path, _, _ = pdfs[which]
    texts, fill = _pages(path), _fill(path)
    assert len(texts) == len(fill) >= 5
    for i, f in enumerate(fill):
        last_of_part = i == len(fill) - 1 or PART_TITLE.match(texts[i + 1].lstrip("\n"))
        assert f >= 1 / 3 or last_of_part, f"{which}: page {i + 1} is {f:.0%} full"


def _headings(tex: str) -> tuple[list[str], list[str]]:
    """The section and subsection titles, and the run-in paragraph heads, as plain text."""
    def plain(t):
        return re.sub(r"\\([_#%&$])", r"\1", t)
    titles = [plain(t) for t in re.findall(r"\\(?:sub)?section\*?\{([^}]*)\}", tex)]
    return titles, [plain(t) for t in re.findall(r"\\paragraph\{([^}]*)\}", tex)]


@needs_tex
@pytest.mark.parametrize("which", ["full"] + MODELS)
def test_no_heading_as_the_last_line_of_a_page(pdfs, full, which):
    """A heading (or a one-line paragraph after a run-in head) never ends a page: what it
    introduces starts on the same page."""
    path, _, tex = pdfs[which]
    titles, heads = _headings(tex or full)
    assert titles and heads
    for i, page in enumerate(_pages(path)):
        lines = [" ".join(ln.split()) for ln in page.splitlines() if ln.strip()]
        if lines and lines[-1].isdigit():
            lines.pop()                                   # the page number
        last = lines[-1]
        assert not any(re.fullmatch(r"(\d+(\.\d+)*|[A-Z](\.\d+)*)? ?" + re.escape(t), last) for t in titles), \
            f"{which}: page {i + 1} ends with the heading {last!r}"
        assert not any(last.startswith(h) for h in heads), f"{which}: page {i + 1} ends with {last!r}"


@needs_tex
def test_fonts_are_vector_and_text_reads_back(pdfs):
    """Every font is Type 1, TrueType or OpenType (no bitmap Type 3); the title, a ligature and
    a command line flag read back exactly from the PDF."""
    for which, (path, _, _) in pdfs.items():
        fonts = subprocess.run(["pdffonts", str(path)], capture_output=True, text=True).stdout.splitlines()[2:]
        assert fonts, which
        for ln in fonts:
            assert re.search(r"\s(Type 1C?|TrueType|CID TrueType|OpenType|CID Type 0C?)\s", ln), (which, ln)
    path, _, _ = pdfs["full"]
    first = [ln.strip() for ln in _pages(path)[0].splitlines() if ln.strip()]
    assert first[0] == "symprop: derivations of first- and second-order backpropagation"
    assert "symprop train --model lenet" in "".join(_pages(pdfs["lenet"][0]))
    assert "my_act#1% (Mish) & friends" in "".join(_pages(path))


@needs_tex
@pytest.mark.slow   # CI runs it with pytest -m slow
def test_cli_latex_with_spec_file_and_model(tmp_path):
    spec = tmp_path / "myspec.py"
    spec.write_text("import sympy as sp\nfrom symprop.derive import ElementwiseSpec\nx = sp.Symbol('x')\n"
                    "SWISH = ElementwiseSpec('swish_1', x / (1 + sp.exp(-x)), x, doc='swish #1 50%')\n")
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "latex", "--spec", str(spec), "--model", "lenet",
                        "-o", str(tmp_path / "d.tex"), "--pdf"], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tex = (tmp_path / "d.tex").read_text()
    assert "\\texttt{swish\\_1}" in tex and "\\section{Model: LeNet-5}" in tex and "\\label{sec:conv2d}" in tex
    assert "\\subsection{Swish \\#1 50\\%}" in tex            # a user spec's title: its docstring
    assert "sec:tanh" not in tex                              # only the model's layers and the spec
    assert (tmp_path / "d.pdf").stat().st_size > 10000


def test_cli_latex_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "latex", "--layers", "tanh,bogus", "-o",
                        str(tmp_path / "d.tex")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "unknown layer(s) ['bogus']" in r.stderr
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "latex", "--spec", str(tmp_path / "none.py")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "latex", "--model", "resnet9", "-o",
                        str(tmp_path / "d.tex")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice: 'resnet9'" in r.stderr
    for argv, msg in ((["--layers", ","], "names no layer"), (["-o", str(tmp_path / "d.pdf"), "--pdf"], "give the .tex file")):
        r = subprocess.run([sys.executable, "-m", "symprop.cli", "latex", *argv], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
        assert r.returncode == 2 and msg in r.stderr and not (tmp_path / "d.pdf").exists(), r.stderr


def test_hessian_diagonal_rules_are_derived_from_the_pullbacks():
    """Becker-LeCun and Gauss-Newton rules printed for a layer follow from its own VJPs: for the
    dense layer they are the formulas the runtime evaluates with the pullback kernels on squared
    arrays (h_x = Σ_o W² h, diag W = Σ_n x² Σ_k S²)."""
    d = derived._derive(builtins.DENSE)
    n, o, i = (sp.Symbol(s, integer=True) for s in "noi")
    N, O, I = (sp.Symbol(s, integer=True, positive=True) for s in "NOI")
    W, x, h, S = (sp.IndexedBase(s) for s in ("W", "x", "H", "S"))
    k, K = sp.Symbol("k", integer=True), sp.Symbol("K", integer=True, positive=True)
    bl_x = d.bls["x"].expr          # what the dense_bl_x kernel computes
    assert sp.simplify(bl_x.doit() - sp.Sum(W[o, i] ** 2 * h[n, o], (o, 0, O - 1)).doit()) == 0
    gn_W = d.sqvjps["W"].definition
    assert gn_W == sp.Sum(S[k, n, o] ** 2 * x[n, i] ** 2, (k, 0, K - 1), (n, 0, N - 1))
    assert d.sqvjps["W"].mode == "factorized"
    assert derived._derive(builtins.CONV2D).sqvjps["W"].mode == "per_sample"
    conv = contraction.contraction_section(derived._derive(builtins.CONV2D))
    assert "eq:conv2d_bl_x" in conv and "eq:conv2d:gn:W" in conv and "eq:conv2d:gn:b" in conv
    assert "{W}_{o,c,k,l}^{2}" in conv


def test_composite_sections_print_the_stage_by_stage_chain_rule(full):
    from symprop.derive.composite import derive_composite
    d = derive_composite(builtins.BATCHNORM)
    P = printer.DerivationPrinter(arrays=["gamma", "beta"])
    sec = _section(full, "batchnorm")
    app = full[full.index("\\label{app:batchnorm}"):]
    app = app[:app.index("\\subsection")]
    assert "Backward sweep." in sec
    for st, a in d.sweep:     # every stage's adjoint, as derived
        assert printer.tex(d.pretty(a), P) in sec
    assert printer.tex(d.pretty(d.vjp["x"]), P) in sec
    assert r"\sum_{\mathcal{G}}\!\left(\hat{x}\right) &= 0" in sec     # the identity mean(x) = μ implies
    assert app.count("\\texttt{batchnorm\\_rvjp} & ") == 1 and app.count(r"$\sum_{\mathcal{G}}", app.index("batchnorm\\_rvjp} & ")) >= 7
    s = _section(full, "softmax")
    assert "The adjoint of the shift $x_{\\max}$ simplifies to zero" in s

