"""The whole document: notation, the layer parts, the losses, the Taylor-mode part, a PDE
problem, the model part and the appendix, assembled in order (:func:`build`, :func:`document`), and compiled to PDF
(:func:`compile_pdf`)."""
from __future__ import annotations

from ..derive.composite import CompositeSpec
from ..derive.elementwise import ElementwiseSpec
from ..derive.indexed import ContractionSpec
from ..derive.losses import PointwiseLossSpec
from .appendix import kernel_appendix
from .composite import COMPOSITE_INTRO, composite_section
from .contraction import CONTRACTION_INTRO, contraction_section
from .derived import _builtin_specs, _derive, builtin_layer_names
from .elementwise import ELEMENTWISE_INTRO, elementwise_section
from .losses import losses_section, user_loss_section
from .model import model_section
from .pde import pde_section
from .prose import PREAMBLE, Document, notation
from .schedule import model_schedule
from .shapes import LOSS_TEXT, ModelInfo, describe_model, model_title
from .sweep import laplacian_sweep_section, unswept
from .taylor import taylor_part


# ---------------------------------------------------------------- the document
#: between parts: a new page unless a third of the page is left (a part never strands a few lines
#: on a page of their own)
PART_BREAK = "\\needlines{18}\\bigskip\n"


def build(layers: list[str] | None = None, extra: list = (), model: ModelInfo | None = None,
          losses: bool = True, taylor: bool = False, sweep: ModelInfo | None = None,
          problem=None) -> Document:
    """The document and the kernel expressions it prints (see :func:`document`); ``extra`` may
    hold :class:`PointwiseLossSpec` s (user losses), printed after the built-in losses.

    ``taylor``: add the Taylor-mode part (the general rules, each activation's, and the
    forward-Laplacian sweep of ``sweep`` — by default of ``model`` when every layer of it has a
    Taylor rule); ``problem``: a :class:`symprop.pinn.Problem`, whose residual, needed
    derivatives and cotangents follow the Taylor part (which it implies)."""
    user_losses = [s for s in extra if isinstance(s, PointwiseLossSpec)]
    extra = [s for s in extra if not isinstance(s, PointwiseLossSpec)]
    if model is not None and not isinstance(model, ModelInfo):
        raise TypeError(f"latex: model must be a ModelInfo (see describe_model), got {type(model).__name__}")
    losses = losses or model is not None        # the model part refers to its loss's equations
    taylor = taylor or problem is not None or sweep is not None
    if sweep is not None and not isinstance(sweep, ModelInfo):
        raise TypeError(f"latex: sweep must be a ModelInfo (see describe_model), got {type(sweep).__name__}")
    known = builtin_layer_names()
    chosen = known if layers is None else list(layers)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ValueError(f"latex: unknown layer(s) {unknown}; built-ins are {known}")
    for spec in extra:
        if not isinstance(spec, (ElementwiseSpec, ContractionSpec, CompositeSpec)):
            raise TypeError("latex: extra specs must be ElementwiseSpec, ContractionSpec or CompositeSpec, "
                            f"got {type(spec).__name__}")
    specs = [_builtin_specs()[n] for n in chosen] + list(extra)
    printed: list = []
    tables: list = []                    # the appendix: one kernel table per layer
    parts = [PREAMBLE, ""]               # the notation, once the body is known
    breaks = False                       # a part break before every part but the first
    ew = [s for s in specs if isinstance(s, ElementwiseSpec)]
    ct = [s for s in specs if isinstance(s, ContractionSpec)]
    cp = [s for s in specs if isinstance(s, CompositeSpec)]
    if ew:
        parts.append(ELEMENTWISE_INTRO)
        parts += [elementwise_section(_derive(s), printed, tables) for s in ew]
        breaks = True
    if ct:
        parts.append((PART_BREAK if breaks else "") + CONTRACTION_INTRO)
        parts += [contraction_section(_derive(s), printed, tables) for s in ct]
        breaks = True
    if cp:
        parts.append((PART_BREAK if breaks else "") + COMPOSITE_INTRO)
        parts += [composite_section(_derive(s), tables) for s in cp]
        breaks = True
    if losses or user_losses:
        parts.append((PART_BREAK if breaks else "") + losses_section(tables)
                     + "".join(user_loss_section(s, tables) for s in user_losses))
        breaks = True
    if taylor:
        if sweep is None and model is not None and not unswept(model):
            sweep = model
        text = laplacian_sweep_section(sweep, pde=problem is not None) if sweep is not None else ""
        if model is not None and sweep is None:
            text = (f"{model_title(model)[:1].upper() + model_title(model)[1:]}'s forward-Laplacian sweep is not "
                    f"written out here: the document writes it for dense, convolution, average-pooling and "
                    f"activation layers, not for {', '.join(unswept(model))} (the runtime sweeps them "
                    f"through their own rules).\n")
        parts.append((PART_BREAK if breaks else "") + taylor_part(ew, printed, text, tables))
        breaks = True
    if problem is not None:
        parts.append(PART_BREAK + pde_section(problem))
    if model is not None:
        parts.append((PART_BREAK if breaks else "") + model_section(model))
        breaks = True
    if tables or model is not None:
        parts.append((PART_BREAK if breaks else "") + "\\appendix\n" + kernel_appendix(tables)
                     + (model_schedule(model) if model is not None else ""))
    parts.append("\\end{document}\n")
    parts[1] = notation("".join(parts[2:]))
    return Document("".join(parts), printed)


def document(layers: list[str] | None = None, extra: list = (), model: ModelInfo | None = None,
             losses: bool = True, taylor: bool = False, sweep: ModelInfo | None = None, problem=None) -> str:
    """The full document: notation, the elementwise layers, the dense and window layers, the
    composite layers (every built-in by default, or ``layers``, plus ``extra`` specs:
    :class:`ElementwiseSpec`, :class:`ContractionSpec` or :class:`CompositeSpec`), the losses
    and, with ``model`` (:func:`describe_model`), the model's shapes, composed chain rule and
    kernel order; ``taylor``, ``sweep`` and ``problem`` add the Taylor-mode part and a PDE problem
    (:func:`build`)."""
    return build(layers, extra, model, losses, taylor, sweep, problem).text


def compile_pdf(text: str, pdf_path):
    """Compile ``text`` with pdflatex in a temporary directory (shell escape off, run twice for
    references) and move the PDF to ``pdf_path``; errors quote the LaTeX log."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    exe = shutil.which("pdflatex")
    if exe is None:
        raise FileNotFoundError("pdflatex not found: install TeX (Debian: texlive-latex-base "
                                "texlive-latex-recommended lmodern)")
    pdf_path = Path(pdf_path)
    with tempfile.TemporaryDirectory(prefix="symprop-latex-") as tmp:
        src = Path(tmp) / "derivations.tex"
        src.write_text(text)
        for _ in range(2):
            r = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                                src.name], cwd=tmp, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                log = (Path(tmp) / "derivations.log")
                lines = log.read_text(errors="replace").splitlines() if log.exists() else r.stdout.splitlines()
                errs = [ln for i, ln in enumerate(lines) if ln.startswith("!")]
                raise RuntimeError("pdflatex failed: " + ("; ".join(errs[:3]) or "\n".join(lines[-15:])))
        tmp_pdf = pdf_path.with_name(pdf_path.name + ".tmp")
        shutil.copyfile(Path(tmp) / "derivations.pdf", tmp_pdf)
        tmp_pdf.replace(pdf_path)
    return pdf_path


def model_info(model, name: str = "") -> ModelInfo:
    """A built runtime model (``Sequential``) described for the document from its layers'
    configs (its checkpoint format): no kernels are called."""
    if getattr(model, "input_shape", None) is None:
        raise ValueError("latex: the model is not built yet (pass input_shape= or call build())")
    loss = getattr(getattr(model, "loss", None), "name", "mse")
    return describe_model(name or "the network", model.input_shape, [la.config() for la in model.layers],
                          loss=loss if loss in LOSS_TEXT else "mse")


def problem_document(problem, model=None, path=None) -> str:
    """The document of a PDE problem (:class:`symprop.pinn.Problem`): the Taylor-mode rules
    and, with ``model`` (a built ``Sequential``), its activations' sections and its
    forward-Laplacian sweep; then the residual, the derivatives it needs and their cotangents.
    ``path``: also write it (atomically)."""
    layers, sweep = [], None
    if model is not None:
        sweep = model_info(model)
        acts = builtin_layer_names()
        layers = list(dict.fromkeys(la.spec for la in sweep.layers if la.kind == "Activation" and la.spec in acts))
    text = document(layers=layers, losses=False, taylor=True, sweep=sweep, problem=problem)
    if path is not None:
        import os
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return text
