"""The import graph of the package's source has no back arrows: derive → codegen → generated →
runtime, and the document backend reading derive (and codegen/runtime only lazily).

Parsed from the source tree with ``ast`` (Cython sources by their import lines), so it needs
neither compiled kernels nor torch."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: source folder -> subpackage of ``symprop`` (pyproject.toml's package-dir)
FOLDERS = {"derive": "derive", "codegen": "codegen", "generated": "generated", "runtime": "runtime",
           "document": "document", "symprop": None}
SUBPACKAGES = ("derive", "codegen", "generated", "runtime", "document")

#: (importer, imported, where): where is "any" (also inside functions) or "module" (at import time)
FORBIDDEN = [
    ("derive", "codegen", "any"), ("derive", "generated", "any"), ("derive", "runtime", "any"),
    ("derive", "document", "any"),
    ("codegen", "runtime", "any"), ("codegen", "document", "any"),
    ("generated", "root", "any"), ("generated", "derive", "any"), ("generated", "codegen", "any"),
    ("generated", "runtime", "any"), ("generated", "document", "any"),
    ("runtime", "document", "module"),
    ("document", "runtime", "module"), ("document", "generated", "module"),   # `symprop latex` runs kernelless
]

_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+c?import\s+(.+)|c?import\s+([\w., ]+))")


def _package(folder: str, path: Path) -> str:
    sub = FOLDERS[folder]
    return "symprop" if sub is None else f"symprop.{sub}"


def _targets(pkg: str, module: str | None, level: int, names: list[str]) -> list[str]:
    """The absolute modules an import statement may load (``from .. import document`` loads
    ``symprop.document``)."""
    if level:
        base = pkg.split(".")[: len(pkg.split(".")) - (level - 1)]
        target = ".".join(base + ([module] if module else []))
    else:
        target = module or ""
    return [target] + [f"{target}.{n}" for n in names if n != "*"]


def _part(module: str) -> str | None:
    """Which part of the package ``module`` belongs to: a subpackage, "root" (another module
    of the package root such as ``symprop.cli``), or None (not symprop)."""
    parts = module.split(".")
    if parts[0] != "symprop":
        return None
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return parts[1]
    return "root"


def _module_level(tree: ast.Module) -> set[int]:
    """ids of the statements that run at import time (not inside a function body)."""
    out = set()

    def visit(node):
        out.add(id(node))
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child)
    visit(tree)
    return out


def imports(root: Path = ROOT) -> list[tuple[str, str, str, str, int]]:
    """Every import of the package's source: (importer part, imported part, file, when, line);
    ``when`` is "module" (at import time) or "lazy" (inside a function)."""
    out = []
    for folder in FOLDERS:
        for path in sorted((root / folder).glob("*.py")) + sorted((root / folder).glob("*.pyx")):
            pkg = _package(folder, path)
            me = "root" if FOLDERS[folder] is None else FOLDERS[folder]
            rel = str(path.relative_to(root))
            text = path.read_text()
            if path.suffix == ".pyx":
                for i, line in enumerate(text.splitlines(), 1):
                    m = _CYTHON_IMPORT.match(line)
                    if not m:
                        continue
                    if m.group(1) is not None:
                        mod = m.group(1)
                        level = len(mod) - len(mod.lstrip("."))
                        names = [n.strip().split(" ")[0] for n in m.group(2).strip("()").split(",")]
                        targets = _targets(pkg, mod.lstrip(".") or None, level, names)
                    else:
                        targets = [n.strip().split(" ")[0] for n in m.group(3).split(",")]
                    for t in targets:
                        if _part(t):
                            out.append((me, _part(t), rel, "module", i))
                continue
            tree = ast.parse(text, filename=rel)
            top = _module_level(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    targets = _targets(pkg, node.module, node.level, [a.name for a in node.names])
                elif isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                else:
                    continue
                when = "module" if id(node) in top else "lazy"
                for part in dict.fromkeys(p for p in map(_part, targets) if p):
                    out.append((me, part, rel, when, node.lineno))
    return out


def back_arrows(found) -> list[str]:
    bad = []
    for me, part, rel, when, line in found:
        for a, b, where in FORBIDDEN:
            if me == a and part == b and (where == "any" or when == "module"):
                bad.append(f"{rel}:{line}: {a} imports {b}" + (" at module level" if where == "module" else ""))
    return sorted(set(bad))


def test_no_back_arrows():
    found = imports()
    assert {f for _, _, f, _, _ in found} >= {"runtime/model.py", "symprop/cli.py"}   # the scan sees the tree
    assert back_arrows(found) == []


def test_the_document_backend_is_outside_derive():
    """derive/ holds SymPy derivations only: no LaTeX printer lives there."""
    assert not (ROOT / "derive" / "latex.py").exists()
    for path in (ROOT / "derive").glob("*.py"):
        assert "LatexPrinter" not in path.read_text(), path.name


@pytest.mark.parametrize("folder,line,expected", [
    ("derive", "from ..codegen import render\n", "derive imports codegen"),
    ("derive", "def f():\n    from ..document import printer\n", "derive imports document"),
    ("codegen", "from symprop.runtime import layers\n", "codegen imports runtime"),
    ("runtime", "from .. import document\n", "runtime imports document at module level"),
    ("document", "from ..runtime.model import Sequential\n", "document imports runtime at module level"),
    ("generated", "from symprop import layers\n", "generated imports root"),
])
def test_a_back_arrow_is_caught(tmp_path, folder, line, expected):
    """The scan flags each kind of back arrow in a small synthetic tree (and allows the lazy
    import of the document inside a runtime function)."""
    for f in FOLDERS:
        (tmp_path / f).mkdir()
    (tmp_path / "runtime" / "ok.py").write_text("def latex():\n    from .. import document\n")
    name = "bad.pyx" if folder == "generated" else "bad.py"
    (tmp_path / folder / name).write_text(line)
    bad = back_arrows(imports(tmp_path))
    assert len(bad) == 1 and bad[0].endswith(expected) and bad[0].startswith(f"{folder}/{name}:"), bad
