"""Builds the generated Cython kernels; everything else is in pyproject.toml.

Cython and the C compiler run on every core (``SYMPROP_BUILD_JOBS`` overrides), and a compiled
extension is kept in a build cache keyed by its C source, headers, flags, compiler and Python
(``codegen/build_cache.py``): installing an extra after the base install, or reinstalling an
unchanged checkout, compiles nothing.
"""
import runpy
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

root = Path(__file__).parent
flags = runpy.run_path(str(root / "codegen" / "flags.py"))
cache = runpy.run_path(str(root / "codegen" / "build_cache.py"))
jobs = flags["build_jobs"]()

extensions = [
    Extension(f"symprop.generated.{pyx.stem}", [str(pyx.relative_to(root))],
              include_dirs=["generated"], **flags["extension_kwargs"]())
    # the longest compiles first, so the parallel jobs finish together
    for pyx in sorted((root / "generated").glob("*.pyx"), key=lambda p: (-p.stat().st_size, p.name))
]


class cached_build_ext(build_ext):
    """build_ext on ``jobs`` threads, each extension taken from the build cache when present."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = jobs

    def run(self):
        # a module merged into another leaves its old build in build/ (pip builds in the
        # checkout): drop extension files no current module makes, or they reach the wheel
        folder = Path(self.build_lib) / "symprop" / "generated"
        current = {Path(self.get_ext_fullpath(e.name)).name for e in self.extensions}
        for built in folder.glob("*.*"):
            if built.suffix in (".so", ".pyd") and built.name not in current:
                built.unlink()
            elif built.suffix in (".c", ".pyx") and not (root / "generated" / (built.stem + ".pyx")).exists():
                built.unlink()
        super().run()

    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        key = cache["extension_key"](ext, self.compiler, self)
        if cache["restore"](key, target):
            print(f"symprop: {ext.name} unchanged, taken from the build cache")
            return
        # the key decides: setuptools' own check (the .so newer than its sources) would keep a
        # build made with other flags (SYMPROP_PORTABLE, another CPU) and store it under this key
        self.force = True
        super().build_extension(ext)
        cache["store"](key, target)


setup(ext_modules=cythonize(extensions, compiler_directives=flags["CYTHON_DIRECTIVES"], quiet=True,
                            nthreads=jobs),
      cmdclass={"build_ext": cached_build_ext})
