"""Compile a generated module on the fly into a cache keyed by its text's hash.

Used for user specs (``Activation.from_sympy``): the first use derives, renders and
compiles (a few seconds); later uses — in this process or another — import the cached
extension without compiling, and (through :func:`lookup_spec`) without deriving.

The cache never trusts its files: every extension has a SHA-256 beside it, checked before
import (a truncated or corrupted ``.so`` is rebuilt, not imported — importing one can crash
the interpreter); build folders and staged files of killed builders are removed by the next
build; an unwritable cache folder falls back to a per-user temporary one with a warning.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

from ..processes import pid_alive
from . import flags
from .build_cache import cache_dir, store_verified, verified
from .generate import MATH_HEADER, math_header


class BuildError(RuntimeError):
    """Compiling a generated module failed; the message names the spec and the file."""


def _writable_root() -> Path:
    """The cache folder, created; a per-user temporary one (with a warning) when it cannot be
    written; BuildError naming both when neither can."""
    root = cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK | os.X_OK):
            return root
        problem = "is not writable"
    except OSError as exc:
        problem = f"cannot be created ({exc.strerror or exc})"
    fallback = Path(tempfile.gettempdir()) / f"symprop-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    try:
        fallback.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"the compile cache {root} {problem}, and the fallback {fallback} cannot be "
                         f"created ({exc}); set SYMPROP_CACHE to a writable folder") from exc
    warnings.warn(f"symprop: the compile cache {root} {problem}; using {fallback} (set SYMPROP_CACHE)",
                  RuntimeWarning, stacklevel=3)
    return fallback


def _pid_of(name: str, prefix: str):
    rest = name[len(prefix):]
    pid = rest.split("-", 1)[0].split(".", 1)[0]
    return int(pid) if pid.isdigit() else None


def clean_stale(root: Path) -> int:
    """Remove build folders and staged files left by builders that were killed; returns how
    many were removed."""
    n = 0
    for p in list(root.glob("symprop-build-*")) + list(root.glob("*.tmp")):
        if p.name.startswith("symprop-build-"):
            pid = _pid_of(p.name, "symprop-build-")
        else:
            parts = p.name.rsplit(".", 2)
            pid = int(parts[-2]) if len(parts) == 3 and parts[-2].isdigit() else None
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            n += 1
        except OSError:
            pass
    return n


def _module_name(stem: str, text: str) -> str:
    digest = hashlib.sha256((text + "\n# flags: " + flags.compile_tag()).encode()).hexdigest()[:16]
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
    root = _writable_root()
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = root / (name + suffix)
    if verified(target):
        return _import(name, target), False
    if target.exists():
        warnings.warn(f"symprop: the cached {target.name} does not match its checksum (truncated or "
                      f"corrupted); rebuilding it", RuntimeWarning, stacklevel=2)
    clean_stale(root)
    with tempfile.TemporaryDirectory(prefix=f"symprop-build-{os.getpid()}-", dir=root) as tmp:
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
        # atomic, the checksum first: concurrent builders race harmlessly
        store_verified(next(tmp.rglob(name + "*" + suffix)), target)
    return _import(name, target), True


def compile_spec(stem: str, spec, derive, render, verbose: bool = False):
    """``(module, compiled, derived)`` for a user's spec: the cached module for its hash (no
    derivation), or ``derive`` → ``render`` → compile, remembered under the hash. A spec whose
    kernels cannot be emitted is a ``SpecError`` naming it; a Becker–LeCun kernel that is the only
    one that cannot be emitted (squares of squares) is dropped instead, those roles being optional."""
    from ..derive.elementwise import SpecError
    module, derived = lookup_spec(stem, spec.hash), None
    if module is not None:
        return module, False, None
    derived = derive(spec)
    try:
        try:
            text = render(stem, [derived])
        except ValueError as exc:   # LoweringError
            if not getattr(derived, "bls", None):
                raise
            derived.bls, derived.no_curvature = {}, f"its Becker-LeCun kernels cannot be emitted ({exc})"
            for sq in derived.sqvjps.values():
                sq.mode = "per_sample"
            text = render(stem, [derived])
    except (NotImplementedError, ValueError) as exc:
        raise SpecError(f"spec {spec.name!r}: cannot emit its kernels: {exc}") from exc
    module, compiled = load_or_build(stem, text, spec.name, verbose=verbose)
    remember_spec(stem, spec.hash, module)
    return module, compiled, derived


def _toolchain_hash() -> str:
    """A hash of everything that turns a spec into a module (derive, codegen, templates)."""
    global _TOOLCHAIN
    if _TOOLCHAIN is None:
        h = hashlib.sha256()
        here = Path(__file__).resolve().parent
        for folder in (here, here / "templates", here.parent / "derive"):
            for f in sorted(folder.glob("*")):
                if f.is_file() and f.suffix in (".py", ".j2", ".h"):
                    h.update(f.name.encode())
                    h.update(f.read_bytes())
        _TOOLCHAIN = h.hexdigest()[:16]
    return _TOOLCHAIN


_TOOLCHAIN = None


def _alias(stem: str, spec_hash: str) -> Path:
    return cache_dir() / f"{stem}_{spec_hash}_{_toolchain_hash()}.module"


def lookup_spec(stem: str, spec_hash: str):
    """The cached module built for a spec with this hash by this toolchain, or None: a cache
    hit needs no derivation."""
    try:
        name = _alias(stem, spec_hash).read_text().strip()
    except (OSError, UnicodeDecodeError):   # unreadable or damaged: a miss (the rebuild rewrites it)
        return None
    if not name.startswith(stem + "_") or not name.isidentifier():   # a damaged alias ("os"): a miss
        return None
    if name in sys.modules:
        return sys.modules[name]
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = cache_dir() / (name + suffix)
    if not name.isidentifier() or not verified(target):
        return None
    return _import(name, target)


def remember_spec(stem: str, spec_hash: str, module) -> None:
    """Record which module a spec hash built (best effort)."""
    alias = _alias(stem, spec_hash)
    try:
        tmp = alias.with_name(alias.name + f".{os.getpid()}.tmp")
        tmp.write_text(module.__name__ + "\n")
        os.replace(tmp, alias)
    except OSError:
        pass


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
