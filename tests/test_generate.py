"""Generated code is deterministic and `symprop generate --check` detects drift."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "generated").is_dir(), reason="needs the source checkout")


def run(*args):
    # run outside the checkout so the installed package (not ./symprop) is imported
    return subprocess.run([sys.executable, "-m", "symprop.cli", *args], cwd=ROOT.parent,
                          capture_output=True, text=True)


def test_check_passes_on_the_tree():
    r = run("generate", "--check", "--out", str(ROOT / "generated"))
    assert r.returncode == 0, r.stderr


def test_generation_is_deterministic_and_check_catches_edits(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run("generate", "--out", str(a)).returncode == 0
    assert run("generate", "--out", str(b)).returncode == 0
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes()
    # identical to the checked-in tree, byte for byte
    for n in names:
        assert (a / n).read_bytes() == (ROOT / "generated" / n).read_bytes(), n
    assert "DO NOT EDIT" in (a / "dense.pyx").read_text()
    edited = (a / "activations.pyx").read_text().replace("tanhf(x)", "tanhf(x) * 1.0001", 1)
    (a / "activations.pyx").write_text(edited)
    r = run("generate", "--check", "--out", str(a))
    assert r.returncode == 1 and "activations.pyx" in r.stderr
    shutil.rmtree(a)
