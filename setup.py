"""Build the Cython hot path.  Metadata lives in pyproject.toml.

FASTFORK_DEBUG=1 builds with CYTHON_TRACE, assertions and the debug counters
that tests use to check that every fd the dispatcher held was closed.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FASTFORK_DEBUG") == "1"

macros = [("FASTFORK_DEBUG", "1"), ("CYTHON_TRACE", "1")] if DEBUG else []
cflags = ["-O0", "-g", "-UNDEBUG"] if DEBUG else ["-O2"]

extensions = [
    Extension("fastfork._core._cscheduler", ["fastfork/_core/_cscheduler.pyx"],
              define_macros=macros, extra_compile_args=cflags),
    # One module from _cdispatch.pyx and the .pxi files it includes.
    Extension("fastfork._core._cdispatch", ["fastfork/_core/_cdispatch.pyx", "csrc/fdpass.c"],
              include_dirs=["csrc"], depends=["csrc/fdpass.h", "csrc/credit.h"],
              define_macros=macros, extra_compile_args=cflags),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"linetrace": DEBUG, "embedsignature": True},
    ),
)
