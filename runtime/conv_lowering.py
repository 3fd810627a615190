"""Which lowering the window kernels' convolution sweeps take: ``"direct"`` (the default) or
``"im2col"``.

Both compute the same derived terms. ``direct`` reads a zero-padded copy of each sample's planes
and runs the taps in registers (forward and weight pullback at column stride 1, input pullback at
stride 1; other geometries take im2col + GEMM as before); ``im2col`` copies the windows into
columns and runs one GEMM per sample, on the GEMM provider the tuner chose. The switch is for
comparison (``benchmarks/conv_lowering.py``, the tests) and as a fallback; set it with
``SYMPROP_CONV_LOWERING`` before the first kernel runs, or with :func:`using` / :func:`set_lowering`.
"""
from __future__ import annotations

import contextlib
import os
import threading

LOWERINGS = ("direct", "im2col")

_lock = threading.Lock()
_modules: list = []       # registered generated modules with a window sweep


def _check(mode) -> str:
    if mode not in LOWERINGS:
        raise ValueError(f"convolution lowering must be one of {LOWERINGS}, got {mode!r}"
                         + (" (from SYMPROP_CONV_LOWERING)" if mode == os.environ.get("SYMPROP_CONV_LOWERING") else ""))
    return mode


_current = [_check(os.environ.get("SYMPROP_CONV_LOWERING") or "direct")]
_base = [_current[0]]     # the lowering outside every `using` block
_overrides: list = []     # the open `using` blocks' modes, as [mode] cells in the order they opened


def current() -> str:
    """The lowering the convolution sweeps take now."""
    return _current[0]


def takes_direct(role: str, stride, out_channels: int, taps: int) -> bool:
    """Whether a convolution's ``role`` ("forward", "vjp W" or "vjp x", as
    ``gemm_providers.layer_products`` names them) runs direct under the current lowering, for a
    ``stride`` (rows, columns), ``out_channels`` and ``taps`` = C·K_h·K_w — the rule the
    generated sweeps apply (codegen/window.py, templates/window.pyx.j2)."""
    from ..codegen.window import DIRECT_WGRAD_GEMM
    if _current[0] != "direct" or stride[1] != 1:
        return False
    if role == "vjp x":
        return stride[0] == 1
    if role == "vjp W":
        return not (out_channels >= DIRECT_WGRAD_GEMM[0] and taps >= DIRECT_WGRAD_GEMM[1])
    return role == "forward"


def attach(module):
    """Give a newly registered generated module the current lowering (modules without a
    convolution sweep are left alone)."""
    if hasattr(module, "_set_conv_lowering"):
        with _lock:
            if module not in _modules:
                _modules.append(module)
            module._set_conv_lowering(_current[0] == "direct")
    return module


def _apply(mode: str) -> None:
    # with _lock held
    _current[0] = mode
    for mod in _modules:
        mod._set_conv_lowering(mode == "direct")


def set_lowering(mode: str) -> str:
    """Make every loaded and later loaded window module take ``mode`` (outside any open
    :func:`using` block, which keeps its own until it ends); returns the previous one. A kernel
    running in another thread finishes with the lowering it started with."""
    _check(mode)
    with _lock:
        previous = _current[0]
        _base[0] = mode
        _apply(_overrides[-1][0] if _overrides else mode)
    return previous


@contextlib.contextmanager
def using(mode: str):
    """``with conv_lowering.using("im2col"): ...`` — the lowering for the block. The lowering is
    one per process: blocks open at once (other threads) take the latest one opened, and when a
    block ends the latest still open (or the lowering outside them all) comes back."""
    _check(mode)
    cell = [mode]
    with _lock:
        _overrides.append(cell)
        _apply(mode)
    try:
        yield
    finally:
        with _lock:
            _overrides[:] = [c for c in _overrides if c is not cell]
            _apply(_overrides[-1][0] if _overrides else _base[0])
