"""``pytest tests/derive tests/codegen`` needs neither torch nor a compiled kernel: run it in
another process on a copy of the package without its compiled modules, with torch made
unimportable. (Slow: it is the whole derive and codegen subset again.)"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKER = '''
import importlib.abc, sys
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked: derive/codegen tests must not need it")
        return None
sys.meta_path.insert(0, _Refuse())
'''


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SYMPROP_CORE_ONLY") == "1", reason="already the core-only run")
@pytest.mark.skipif(not (ROOT / "generated").is_dir(), reason="needs the source checkout")
def test_derive_and_codegen_tests_run_without_torch_or_kernels(tmp_path):
    from support.numeric import kernelless_copy
    site = kernelless_copy(tmp_path / "site")
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site), "SYMPROP_CORE_ONLY": "1",
           "SYMPROP_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                        str(ROOT / "tests" / "derive"), str(ROOT / "tests" / "codegen")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout
