"""Test-wide settings: BLAS provider, the seeded ``rng`` fixture, and the ``slow`` marker.

Imports neither torch nor a compiled kernel, so ``pytest tests/derive tests/codegen`` runs in an
environment with only the core dependencies and pytest-xdist (pyproject's ``-n 2``; without
xdist add ``-o addopts=``). Shared helpers live in ``tests/support``."""
import os

# every product on SciPy's BLAS unless a test chooses (tests/kernels/test_gemm_providers.py): the
# tuner's choice depends on timings, and with it the last bits of float32 results that accuracy
# bars see
os.environ.setdefault("SYMPROP_GEMM", "scipy")

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only when asked for (``pytest -m slow``; CI runs them after the
    default suite), so ``pytest`` stays within a few minutes on two cores."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: runs with pytest -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
