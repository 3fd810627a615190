"""Training curves from a ``fit`` history: loss (log scale), accuracy and learning rate per
epoch, training and validation side by side, the best epoch marked. ``symprop train --plot``
draws the same figure."""
from __future__ import annotations

import os

#: what to install when matplotlib is missing (the ``plot`` extra needs the package's source:
#: a checkout path, or the name once published)
INSTALL_HINT = "pip install matplotlib  (or, from a symprop checkout: pip install '.[plot]')"


def _figure(**kw):
    """A matplotlib Figure of its own (not pyplot's: the caller's backend and open figures
    are left alone; it displays in a notebook and ``fig.savefig`` writes any format)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"plotting needs matplotlib: {INSTALL_HINT}") from exc
    return Figure(**kw)


def check_path(path) -> None:
    """Refuse a path whose image format matplotlib cannot write, before any training."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    supported = _figure().canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(f"{path}: unknown image format {fmt!r}; use one of {', '.join(sorted(supported))}")


def _check_history(hist) -> int:
    if not isinstance(hist, dict) or "loss" not in hist:
        raise TypeError(f"plot.history: expected the dict fit() returns (with a 'loss' list), got {type(hist).__name__}")
    n = len(hist["loss"])
    if n == 0:
        raise ValueError("plot.history: the history holds no epoch")
    for k, v in hist.items():
        if isinstance(v, list) and len(v) != n and k not in ("best_epoch", "stopped_epoch"):
            raise ValueError(f"plot.history: {k!r} has {len(v)} entries, 'loss' {n}")
    return n


def history(hist: dict, path=None, title: str | None = None, dpi: int = 120):
    """The figure of a ``fit`` history: a log-scale loss panel, an accuracy panel (classifiers),
    a learning-rate panel; validation curves beside training ones and a dashed line with a
    legend entry at the best epoch (lowest validation loss). Writes ``path`` when given and
    returns the matplotlib Figure (independent of pyplot: nothing to close)."""
    from matplotlib.ticker import MaxNLocator

    n = _check_history(hist)
    if path is not None:
        check_path(path)
    panels = [("loss", "loss")] + ([("accuracy", "accuracy")] if hist.get("accuracy") else [])
    if hist.get("lr"):
        panels.append(("lr", "learning rate"))
    fig = _figure(figsize=(4.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    ep = list(range(1, n + 1))
    best = hist.get("best_epoch") if hist.get("val_loss") else None
    for ax, (key, label) in zip(axes[0], panels):
        if key == "lr":
            ax.plot(ep, hist["lr"], marker=".", color="tab:green", label="learning rate")
        else:
            ax.plot(ep, hist[key], marker=".", label="training")
            if hist.get("val_" + key):
                ax.plot(ep, hist["val_" + key], marker=".", label="validation")
        if key == "loss" and min(min(hist["loss"]), min(hist.get("val_loss") or [1])) > 0:
            ax.set_yscale("log")
        if key == "lr" and min(hist["lr"]) > 0 and max(hist["lr"]) / min(hist["lr"]) > 20:
            ax.set_yscale("log")
        if best:
            ax.axvline(best, color="gray", ls="--", lw=0.9, label=f"best epoch ({best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both" if key == "loss" else "major")
        if key != "lr" or best:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
