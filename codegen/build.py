"""Compile a generated module on the fly into a cache keyed by its text's hash.

Used for user specs (``Activation.from_sympy``): the first use derives, renders and
compiles (a few seconds); later uses — in this process or another — import the cached
extension without compiling.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from . import flags
from .generate import MATH_HEADER, math_header


class BuildError(RuntimeError):
    """Compiling a generated module failed; the message names the spec and the file."""


def cache_dir() -> Path:
    env = os.environ.get("SYMPROP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "symprop"


def _module_name(stem: str, text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{stem}_{digest}"


def _import(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod


def load_or_build(stem: str, text: str, spec_name: str, verbose: bool = False):
    """Import the module for ``text`` from the cache, compiling it first if needed.

    Returns ``(module, compiled)`` where ``compiled`` says whether this call compiled it.
    """
    name = _module_name(stem, text)
    root = cache_dir()
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = root / (name + suffix)
    if target.exists():
        return _import(name, target), False
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="symprop-build-", dir=root) as tmp:
        tmp = Path(tmp)
        pyx = tmp / f"{name}.pyx"
        pyx.write_text(text)
        (tmp / MATH_HEADER).write_text(math_header())
        try:
            _compile(name, pyx, tmp, verbose)
        except Exception as exc:  # noqa: BLE001
            keep = root / "failed" / pyx.name
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(pyx, keep)
            raise BuildError(f"compiling spec {spec_name!r} failed (generated file kept at {keep}): "
                             f"{exc}") from exc
        built = next(tmp.rglob(name + "*" + suffix))
        staged = root / (name + suffix + f".{os.getpid()}.tmp")
        shutil.copy(built, staged)
        os.replace(staged, target)   # atomic: concurrent builders race harmlessly
    return _import(name, target), True


def _compile(name: str, pyx: Path, tmp: Path, verbose: bool) -> None:
    from Cython.Build import cythonize
    from setuptools import Distribution, Extension
    from setuptools.command.build_ext import build_ext

    ext = Extension(name, [str(pyx)], include_dirs=[str(tmp)], **flags.extension_kwargs())
    try:
        exts = cythonize([ext], compiler_directives=flags.CYTHON_DIRECTIVES, quiet=not verbose,
                         build_dir=str(tmp / "c"))
    except Exception as exc:  # noqa: BLE001 — Cython reports the error itself
        raise RuntimeError(f"Cython could not compile {pyx.name}: {exc}") from exc
    dist = Distribution({"ext_modules": exts, "script_name": "symprop-build"})
    cmd = build_ext(dist)
    cmd.build_lib = str(tmp / "lib")
    cmd.build_temp = str(tmp / "obj")
    cmd.ensure_finalized()
    if verbose:
        cmd.run()
        return
    log = tmp / "build.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT)
    saved = os.dup(1), os.dup(2)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        cmd.run()
    except Exception as exc:  # noqa: BLE001
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{exc}\n" + "\n".join(tail)) from exc
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(fd)
        os.close(saved[0])
        os.close(saved[1])
