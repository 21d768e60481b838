"""The one place that chooses between the Cython hot path and its pure-Python twin.

``FASTFORK_NO_EXTENSIONS=1`` forces the pure-Python twin.  Otherwise the
Cython extension is used; if it was not built, fastfork falls back to the twin
with a RuntimeWarning that says how to build it (the twin is correct, only
slower, so a missing compiler should not stop a server from starting).
"""

import os
import warnings

PUBLIC_API = ("Dispatcher", "Receiver", "IMPLEMENTATION")
SCHEDULER_API = ("RoundRobinScheduler",)


def _check(module, names):
    missing = [name for name in names if not hasattr(module, name)]
    if missing:
        raise ImportError(f"{module.__name__} lacks {', '.join(missing)}")
    return module


def load(pure=None):
    """Return ``(dispatch_module, scheduler_module)``; ``pure`` overrides the env."""
    if pure is None:
        pure = os.environ.get("FASTFORK_NO_EXTENSIONS", "") not in ("", "0")
    if not pure:
        try:
            from . import _cdispatch, _cscheduler
            return _check(_cdispatch, PUBLIC_API), _check(_cscheduler, SCHEDULER_API)
        except ImportError as exc:
            here = os.path.dirname(os.path.abspath(__file__))
            if os.path.exists(os.path.join(here, "_cdispatch.pyx")):
                fix = (f"fastfork is imported from a source checkout ({here}) whose "
                       "extension was not built in place: run `pip install -e .` there, "
                       "or run Python from another directory to use an installed fastfork")
            else:
                fix = ("reinstall it where a C compiler and the Python headers are "
                       "available: `pip install --force-reinstall --no-binary fastfork fastfork`")
            warnings.warn(
                f"fastfork's Cython extension is not available ({exc}); using the "
                f"pure-Python dispatcher, which is slower. To fix it, {fix}. "
                "Set FASTFORK_NO_EXTENSIONS=1 to choose the pure-Python one silently.",
                RuntimeWarning, stacklevel=3)
    from . import _dispatch_py, scheduler
    return _check(_dispatch_py, PUBLIC_API), _check(scheduler, SCHEDULER_API)


dispatch, scheduler = load()
IMPLEMENTATION = dispatch.IMPLEMENTATION
