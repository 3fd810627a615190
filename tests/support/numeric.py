"""Numerical comparison and packaging helpers that need neither torch nor compiled kernels."""
import numpy as np


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def kernelless_copy(root):
    """A copy of the installed package under ``root`` without its compiled kernels (``.so``
    and ``.c`` left out): what ``symprop generate`` and ``symprop latex`` must run in, since
    generated code never imports the package root and the root imports lazily. Returns
    ``root``, to put on PYTHONPATH."""
    import shutil
    from pathlib import Path

    import symprop
    pkg = Path(symprop.__file__).parent    # not resolved: a dev tree links its subpackages in
    shutil.copytree(pkg, root / "symprop", symlinks=False, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
    assert not list((root / "symprop").rglob("*.so"))
    return root
