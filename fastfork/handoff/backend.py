"""The one place that chooses between the Cython hot path and its pure-Python twin.

``FASTFORK_NO_EXTENSIONS=1`` forces the pure-Python twin.  Otherwise the
Cython extension is used; if it was not built, fastfork falls back to the twin
with a RuntimeWarning that says how to build it (the twin is correct, only
slower, so a missing compiler should not stop a server from starting).
Whichever is chosen must provide the whole interface, checked here.
"""

import collections
import os
import warnings

# The contract between the two builds: what each module must provide.  That
# the classes' methods and signatures agree too is tests/handoff/test_parity.py's.
API = {
    "dispatcher": ("Dispatcher", "IMPLEMENTATION", "CREDIT_SIZE"),
    "receiver": ("Receiver",),
    "scheduler": ("RoundRobinScheduler", "LeastConnectionsScheduler", "scheduler_for"),
}

Backend = collections.namedtuple("Backend", "dispatcher receiver scheduler name")
Backend.__doc__ = """The modules of one implementation; ``name`` is "cython" or "python"."""


def _check(module, names):
    missing = [name for name in names if not hasattr(module, name)]
    if missing:
        raise ImportError(f"{module.__name__} lacks {', '.join(missing)}")
    return module


def _make(dispatcher, receiver, scheduler):
    return Backend(_check(dispatcher, API["dispatcher"]), _check(receiver, API["receiver"]),
                   _check(scheduler, API["scheduler"]), dispatcher.IMPLEMENTATION)


def forced_pure(environ=None):
    """Does the environment ask for the pure-Python twin?"""
    return (environ or os.environ).get("FASTFORK_NO_EXTENSIONS", "") not in ("", "0")


def load(pure=None):
    """The ``Backend`` to use; ``pure`` overrides the environment."""
    if pure is None:
        pure = forced_pure()
    if not pure:
        try:
            from ._c import dispatcher, receiver, scheduler
            return _make(dispatcher, receiver, scheduler)
        except ImportError as exc:
            warnings.warn(_fallback_message(exc), RuntimeWarning, stacklevel=3)
    from ._py import dispatcher, receiver, scheduler
    return _make(dispatcher, receiver, scheduler)


def _fallback_message(exc):
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(os.path.dirname(here))
    if os.path.exists(os.path.join(here, "_c", "dispatcher.pyx")):
        fix = (f"fastfork is imported from a source checkout ({checkout}) whose "
               "extension was not built in place: run `pip install -e .` there, "
               "or run Python from another directory to use an installed fastfork")
    else:
        fix = ("reinstall it where a C compiler and the Python headers are "
               "available: `pip install --force-reinstall --no-binary fastfork fastfork`")
    return (f"fastfork's Cython extension is not available ({exc}); using the "
            f"pure-Python dispatcher, which is slower. To fix it, {fix}. "
            "Set FASTFORK_NO_EXTENSIONS=1 to choose the pure-Python one silently.")


_default = None


def default():
    """The backend chosen by the environment, loaded once per process."""
    global _default
    if _default is None:
        _default = load()
    return _default
