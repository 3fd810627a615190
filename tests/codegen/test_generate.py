"""Generated code is deterministic and `symprop generate --check` detects drift."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# deriving every spec takes minutes (the Taylor roles of every activation to order 5): slow; CI
# also runs `symprop generate --check` on the checked-in tree before the tests
pytestmark = [pytest.mark.skipif(not (ROOT / "generated").is_dir(), reason="needs the source checkout"),
              pytest.mark.slow]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """One ``symprop generate`` through the CLI in another process, in a copy of the package
    without compiled kernels (generation must not need them); deriving every spec takes minutes,
    so it runs once for the module. Returns the folder it wrote."""
    import os
    from support.numeric import kernelless_copy
    root = kernelless_copy(tmp_path_factory.mktemp("site"))
    out = tmp_path_factory.mktemp("generated")
    r = subprocess.run([sys.executable, "-m", "symprop.cli", "generate", "--out", str(out)],
                       cwd=root.parent, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_generation_is_deterministic_and_equals_the_checked_in_tree(fresh):
    """A fresh run in another process writes, byte for byte, what the checked-in tree holds
    (written by an earlier run): output is deterministic, and `--check` on the tree passes."""
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in (ROOT / "generated").iterdir()
                           if p.suffix in (".pyx", ".h", ".py"))
    for n in names:
        assert (fresh / n).read_bytes() == (ROOT / "generated" / n).read_bytes(), n
    for n in names:
        if n.endswith(".pyx"):
            head = (fresh / n).read_text()[:2000]
            assert "DO NOT EDIT" in head and ("hash:" in head or n == "dispatch.pyx"), n


def test_check_catches_an_edit_and_names_the_file(fresh, tmp_path, monkeypatch, capsys):
    """``generate --check`` (the CLI, in process, the renderer's output reused from the fresh
    run) exits 1 naming the edited file, 0 on the unedited copy, and writes nothing."""
    from symprop import cli
    from symprop.codegen import generate as gen
    files = {p.name: p.read_text() for p in fresh.iterdir()}
    monkeypatch.setattr(gen, "render_all", lambda progress=None, only=None: dict(files))
    a = tmp_path / "a"
    shutil.copytree(fresh, a)
    assert cli.main(["generate", "--check", "--out", str(a)]) == 0
    edited = (a / "activations.pyx").read_text().replace("tanhf(x)", "tanhf(x) * 1.0001", 1)
    assert edited != files["activations.pyx"]
    (a / "activations.pyx").write_text(edited)
    assert cli.main(["generate", "--check", "--out", str(a)]) == 1
    assert "activations.pyx" in capsys.readouterr().err
    assert (a / "activations.pyx").read_text() == edited      # --check writes nothing
    assert cli.main(["generate", "--out", str(a)]) == 0       # without it, the file is rewritten
    assert (a / "activations.pyx").read_text() == files["activations.pyx"]
    # a generated module no spec produces any more (merged into another) is drift, and removed
    (a / "masks.pyx").write_text(files["optimizers.pyx"].replace("module: optimizers", "module: masks"))
    (a / "masks.c").write_text("/* built from masks.pyx */")
    (a / "notes.pyx").write_text("# a hand-written file, not generated: left alone\n")
    assert cli.main(["generate", "--check", "--out", str(a)]) == 1
    assert "masks.pyx" in capsys.readouterr().err
    assert cli.main(["generate", "--out", str(a)]) == 0
    assert not (a / "masks.pyx").exists() and not (a / "masks.c").exists() and (a / "notes.pyx").exists()
