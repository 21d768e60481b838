"""The two implementations of fastfork's hot path, as the tests choose them.

Every test that runs over both asks for the ``impl`` fixture (in the
repository's root ``conftest.py``), which gives an ``Impl``: the modules to
drive directly, and the environment for a subprocess that must use that
implementation.  ``Impl("c")`` never falls back silently to the twin: a
missing extension fails the test (or skips it where FASTFORK_NO_EXTENSIONS
is set on purpose), so a run never tests the twin twice.
"""

import importlib.util
import os
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Impl:
    """``Impl("c")``: the Cython build; ``Impl("py")``: its pure-Python twin."""

    NAMES = {"c": "cython", "py": "python"}

    def __init__(self, name):
        if name not in self.NAMES:
            raise ValueError(f"implementation is 'c' or 'py', not {name!r}")
        self.name = name
        self.pure = name == "py"
        self.implementation = self.NAMES[name]     # what Cluster.implementation says
        self._backend = None

    @property
    def backend(self):
        """The loaded ``fastfork.handoff.backend.Backend`` (dispatcher, receiver,
        scheduler, name)."""
        if self._backend is None:
            import pytest

            from fastfork.handoff import backend
            if self.pure:
                self._backend = backend.load(pure=True)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", RuntimeWarning)
                    try:
                        self._backend = backend.load(pure=False)
                    except RuntimeWarning as exc:
                        if backend.forced_pure():
                            pytest.skip("FASTFORK_NO_EXTENSIONS is set: Cython build not required")
                        pytest.fail(f"the Cython extension is not built: {exc}")
        return self._backend

    @property
    def scheduler(self):
        return self.backend.scheduler

    def env(self, extra=None):
        """The environment of a subprocess that must run this implementation."""
        env = dict(os.environ)
        env.pop("FASTFORK_CHANNELS", None)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        if self.pure:
            env["FASTFORK_NO_EXTENSIONS"] = "1"
        else:
            env.pop("FASTFORK_NO_EXTENSIONS", None)
            # The Cython build must be used: a silent fallback would test the twin twice.
            env["PYTHONWARNINGS"] = "error::RuntimeWarning"
        env.update(extra or {})
        return env

    def __str__(self):
        return self.name

    def __repr__(self):
        return f"Impl({self.name!r})"


# Tests that are not about the hot path run once, on the build a user gets:
# the Cython one when it is built, else the twin.
DEFAULT = Impl("c" if importlib.util.find_spec("fastfork.handoff._c.dispatcher") else "py")
BOTH = (Impl("c"), Impl("py"))
