"""Every Python block of the README runs, in order, in one namespace, on tiny data (the digits
loader is cut to a few samples so the examples stay fast)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert len(python_blocks()) >= 5


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    import symprop.runtime.data as data

    real = data.load_digits

    def tiny(*args, **kw):
        (X, y), (Xt, yt) = real(*args, **kw)
        return (X[:96], y[:96]), (Xt[:40], yt[:40])

    monkeypatch.setattr(data, "load_digits", tiny)
    monkeypatch.chdir(tmp_path)
    ns, later = {}, []
    for i, block in enumerate(python_blocks()):
        try:
            exec(compile(block, f"README block {i}", "exec"), ns)
        except NameError:        # a fragment using names a later block defines (the tape API)
            later.append((i, block))
        except Exception as exc:
            pytest.fail(f"README python block {i} failed: {type(exc).__name__}: {exc}\n{block}")
    for i, block in later:
        try:
            exec(compile(block, f"README block {i}", "exec"), ns)
        except Exception as exc:
            pytest.fail(f"README python block {i} failed: {type(exc).__name__}: {exc}\n{block}")
