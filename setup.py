"""Builds the generated Cython kernels; everything else is in pyproject.toml."""
import runpy
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

root = Path(__file__).parent
flags = runpy.run_path(str(root / "codegen" / "flags.py"))
extensions = [
    Extension(f"symprop.generated.{pyx.stem}", [str(pyx.relative_to(root))],
              include_dirs=["generated"], **flags["extension_kwargs"]())
    for pyx in sorted((root / "generated").glob("*.pyx"))
]
setup(ext_modules=cythonize(extensions, compiler_directives=flags["CYTHON_DIRECTIVES"], quiet=True))
