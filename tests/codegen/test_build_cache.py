"""The compile cache never trusts its files: a corrupted extension is rebuilt, a damaged alias is a miss,
not imported; killed builders' leftovers are removed; an unwritable cache falls back to a
temporary one; a cache hit needs no derivation."""
import os
import subprocess
import sys
import textwrap

import pytest

from symprop.codegen import build

SCRIPT = textwrap.dedent("""
    import sys, warnings, sympy as sp
    import symprop.derive.elementwise as E
    from symprop import layers as L
    if sys.argv[1] == "no-derive":          # a cache hit must not derive
        def boom(*a, **k):
            raise AssertionError("derived on a cache hit")
        E.derive_elementwise = boom
    x = sp.Symbol("x")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        act = L.Activation.from_sympy("cube_act", x ** 3 / 3 + x, x)
    import numpy as np
    y, _ = act.forward(np.array([[1.0, 2.0]]))
    print("compiled" if act.compiled else "cached", y.tolist(), [str(m.message) for m in w])
""")


def _run(cache, mode):
    env = dict(os.environ, SYMPROP_CACHE=str(cache))
    # from outside the checkout, so the installed package (not ./symprop) is imported
    r = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=env, timeout=600,
                       cwd=cache.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.slow   # CI runs it with pytest -m slow
def test_cache_hit_skips_derivation_and_a_corrupted_extension_or_alias_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    out = _run(cache, "build")
    assert out.startswith("compiled") and "[[1.3333333333333333, 4.666666666666666]]" in out
    assert _run(cache, "no-derive").startswith("cached")
    so = [p for p in cache.iterdir() if p.name.startswith("act_cube_act_") and p.suffix == ".so"]
    assert len(so) == 1 and (cache / (so[0].name + ".sha256")).exists()
    data = so[0].read_bytes()
    so[0].write_bytes(data[: len(data) // 3])            # truncated, as by a full disk or a kill
    out = _run(cache, "build")
    assert out.startswith("compiled") and "does not match its checksum" in out
    assert _run(cache, "no-derive").startswith("cached")
    alias = [p for p in cache.iterdir() if p.name.startswith("act_cube_act_") and p.suffix == ".module"]
    assert len(alias) == 1
    alias[0].write_bytes(b"\xff\xfe\x00garbage")     # a damaged alias (not UTF-8) is a miss, not an error
    assert "[[1.3333333333333333, 4.666666666666666]]" in _run(cache, "build")
    alias[0].read_text()                                # rewritten, readable


def test_leftovers_of_killed_builders_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"symprop-build-{dead}-abc").mkdir()
        (tmp_path / f"symprop-build-{dead}-abc" / "x.c").write_text("x")
        (tmp_path / f"act_x_1.so.{dead}.tmp").write_text("x")
        (tmp_path / f"symprop-build-{live.pid}-def").mkdir()
        (tmp_path / "symprop-build-legacyname").mkdir()      # no pid: left alone
        assert build.clean_stale(tmp_path) == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f"symprop-build-{live.pid}-def", "symprop-build-legacyname"])
    finally:
        live.kill()


def test_unusable_cache_folder_falls_back_with_a_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SYMPROP_CACHE", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="cannot be created"):
        root = build._writable_root()
    assert root.is_dir() and os.access(root, os.W_OK)


def test_an_alias_naming_another_module_is_a_miss(tmp_path, monkeypatch):
    """An alias file that names an imported module (``os``) is not trusted as a cached spec."""
    from symprop.codegen import build
    monkeypatch.setenv("SYMPROP_CACHE", str(tmp_path))
    alias = build._alias("act_probe", "0123456789abcdef")
    alias.parent.mkdir(parents=True, exist_ok=True)
    alias.write_text("os\n")
    assert build.lookup_spec("act_probe", "0123456789abcdef") is None
