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

C = "fastfork/handoff/_c/"
csrc = dict(include_dirs=["csrc"], depends=["csrc/fdpass.h", "csrc/credit.h"],
            define_macros=macros, extra_compile_args=cflags)

# Each module is one .pyx with the .pxi files it includes (as uvloop does);
# the two ends of the data channel share common.pxi and csrc/fdpass.c.
extensions = [
    Extension("fastfork.handoff._c.scheduler", [C + "scheduler.pyx"],
              define_macros=macros, extra_compile_args=cflags),
    Extension("fastfork.handoff._c.dispatcher", [C + "dispatcher.pyx", "csrc/fdpass.c"], **csrc),
    Extension("fastfork.handoff._c.receiver", [C + "receiver.pyx", "csrc/fdpass.c"], **csrc),
    # The worker's watchdog clock (fastfork.worker.liveness): the credit page's atomics.
    Extension("fastfork.worker._c.stallclock", ["fastfork/worker/_c/stallclock.pyx"],
              include_dirs=["csrc"], depends=["csrc/credit.h"], define_macros=macros,
              extra_compile_args=cflags),
    # The worker's HTTP/1.1 engine (fastfork.engine): http.pyx and its .pxi files.
    Extension("fastfork.engine._c.http", ["fastfork/engine/_c/http.pyx"],
              define_macros=macros, extra_compile_args=cflags),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"linetrace": DEBUG, "embedsignature": True},
    ),
)
