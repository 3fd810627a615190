"""The install-time build cache: a compiled extension reused when nothing that made it changed.

``setup.py`` asks it before compiling each extension. The key hashes everything that goes
into the shared object — the C sources, the headers beside them, the compile and link
commands and flags, the compiler's version and the Python ABI — so a hit is the same build.
Entries carry a SHA-256 checked before reuse and are written atomically. The cache lives in
``$SYMPROP_CACHE/install`` (default ``~/.cache/symprop/install``); ``SYMPROP_BUILD_CACHE=0``
turns it off. Kept free of package imports: the build backend loads it with runpy.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path


def cache_dir() -> Path:
    """symprop's compile cache: ``$SYMPROP_CACHE``, else ``$XDG_CACHE_HOME/symprop`` or
    ``~/.cache/symprop`` (specs compiled on the fly live at its top, installed modules in
    ``install/``)."""
    env = os.environ.get("SYMPROP_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "symprop"


def cache_root():
    """The folder of cached installed extensions, or None when the cache is off."""
    if os.environ.get("SYMPROP_BUILD_CACHE", "1") in ("0", "off", "no"):
        return None
    return cache_dir() / "install"


_versions = {}


def _compiler_version(cmd):
    """What the compiler says of its version (``cc --version``), cached per command."""
    if not cmd:
        return ""
    if cmd[0] not in _versions:
        try:
            out = subprocess.run([cmd[0], "--version"], capture_output=True, text=True, timeout=60)
            _versions[cmd[0]] = out.stdout
        except (OSError, subprocess.SubprocessError):
            _versions[cmd[0]] = "unknown"
    return _versions[cmd[0]]


def extension_key(ext, compiler, command=None):
    """A hash of everything that goes into ``ext``'s shared object (``command``: the build_ext
    command, whose options -- debug, defines, include and library folders -- count too)."""
    h = hashlib.sha256()

    def add(label, data):
        data = data if isinstance(data, bytes) else repr(data).encode()
        h.update(label.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    add("name", ext.name)
    for src in ext.sources:
        add("source", Path(src).read_bytes())
    for folder in ext.include_dirs or ():
        for header in sorted(Path(folder).glob("*.h")):
            add("header " + header.name, header.read_bytes())
    for attr in ("extra_compile_args", "extra_link_args", "libraries", "define_macros", "undef_macros"):
        add(attr, getattr(ext, attr, None))
    for attr in ("compiler_so", "linker_so"):
        cmd = getattr(compiler, attr, None)
        add(attr, cmd)
        add(attr + " version", _compiler_version(cmd))
    for attr in ("debug", "define", "undef", "include_dirs", "library_dirs", "libraries", "rpath", "link_objects"):
        add("build_ext " + attr, getattr(command, attr, None))
    add("python", (sys.version, sysconfig.get_config_var("EXT_SUFFIX"), sysconfig.get_platform()))
    add("cflags", os.environ.get("CFLAGS", "") + "|" + os.environ.get("LDFLAGS", ""))
    return h.hexdigest()[:32]


def digest(path) -> str:
    """SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified(path) -> bool:
    """Whether ``path`` exists and matches the checksum stored beside it (``<name>.sha256``)."""
    path = Path(path)
    try:
        return path.is_file() and path.with_name(path.name + ".sha256").read_text().strip() == digest(path)
    except OSError:
        return False


def store_verified(src, entry) -> None:
    """Copy ``src`` to ``entry`` with its checksum beside it, atomically: staged as
    ``<name>.<pid>.tmp`` and ``<name>.sha256.<pid>.tmp``, the checksum replaced first (a reader
    that sees the new file finds its checksum; one that sees only the checksum rebuilds)."""
    entry = Path(entry)
    tmp = entry.with_name(entry.name + f".{os.getpid()}.tmp")
    shutil.copy(src, tmp)
    check = entry.with_name(entry.name + f".sha256.{os.getpid()}.tmp")
    check.write_text(digest(tmp) + "\n")
    os.replace(check, entry.with_name(entry.name + ".sha256"))
    os.replace(tmp, entry)


def restore(key, target):
    """Copy the cached extension for ``key`` to ``target``; False when there is none (or it
    fails its checksum)."""
    root = cache_root()
    if root is None:
        return False
    entry = root / key / Path(target).name
    try:
        if not verified(entry):
            return False
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(target) + f".{os.getpid()}.tmp")
        shutil.copyfile(entry, tmp)
        os.replace(tmp, target)
        return True
    except OSError:
        return False


def store(key, target):
    """Keep a copy of the freshly built ``target`` under ``key`` (best effort: a cache that
    cannot be written never fails the build)."""
    root = cache_root()
    if root is None:
        return
    entry = root / key / Path(target).name
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        store_verified(target, entry)
    except OSError as exc:
        print(f"symprop: could not store {Path(target).name} in the build cache {root}: {exc}",
              file=sys.stderr)
