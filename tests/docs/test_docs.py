"""Every Python block of the README and of each page in docs/ runs, in order, in one namespace
per file, on tiny data (the digits loader is cut to a few samples so the examples stay fast)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: pages whose examples compile several user specs of their own (a cold cache pays ~40 s):
#: run with the slow tests (CI runs both sets)
SLOW_PAGES = {"api.md"}


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_is_short_and_links_pages_that_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text) < 12_000, f"README.md has {len(text)} characters; move detail to docs/"
    assert len(python_blocks(ROOT / "README.md")) >= 1
    for page in PAGES:
        for target in re.findall(r"\]\(((?:docs/)?[\w.-]+\.md)(?:#[\w-]+)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW_PAGES else p
                                  for p in PAGES], ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    import symprop.runtime.data as data

    real = data.load_digits

    def tiny(*args, **kw):
        (X, y), (Xt, yt) = real(*args, **kw)
        return (X[:96], y[:96]), (Xt[:40], yt[:40])

    monkeypatch.setattr(data, "load_digits", tiny)
    monkeypatch.chdir(tmp_path)
    ns, later = {}, []
    for i, block in enumerate(python_blocks(page)):
        try:
            exec(compile(block, f"{page.name} block {i}", "exec"), ns)
        except NameError:        # a fragment using names a later block defines
            later.append((i, block))
        except Exception as exc:
            pytest.fail(f"{page.name} python block {i} failed: {type(exc).__name__}: {exc}\n{block}")
    for i, block in later:
        try:
            exec(compile(block, f"{page.name} block {i}", "exec"), ns)
        except Exception as exc:
            pytest.fail(f"{page.name} python block {i} failed: {type(exc).__name__}: {exc}\n{block}")
