"""Compiler settings for every generated extension (imported by setup.py and codegen.build).

Kept free of imports so the build backend can load it without the package's dependencies.
"""
import os
import platform
import sys


def extension_kwargs() -> dict:
    """-O3 and -fno-math-errno let GCC vectorize libm calls through libmvec; never -ffast-math."""
    args = ["-O3", "-fno-math-errno", "-Wno-unused-function", "-Wno-unreachable-code"]
    extra = os.environ.get("SYMPROP_CFLAGS", "").split()
    libraries = ["m"]
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        libraries = ["mvec", "m"]
    return {"extra_compile_args": args + extra, "libraries": libraries}


CYTHON_DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False,
                     "initializedcheck": False, "cdivision": True}
