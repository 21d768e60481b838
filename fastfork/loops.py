"""The event loop a worker serves on (``--loop``, ``serve(loop=...)``), named in one place.

``auto`` is uvloop when it can be imported, else asyncio's own loop (as
uvicorn's ``--loop auto``); ``uvloop`` requires it (``pip install
'fastfork[uvloop]'``); ``asyncio`` is the standard library's loop.
"""

import asyncio
import importlib
import sys

from .extras import require

LOOPS = ("auto", "asyncio", "uvloop")


def check(name):
    """Raise now, before anything is served, if loop ``name`` cannot run:
    ValueError for a name not in LOOPS, ``MissingExtraError`` (an ImportError
    naming the uvloop extra) for ``uvloop`` when it is not installed."""
    if name not in LOOPS:
        raise ValueError(f"loop must be one of {', '.join(LOOPS)}, got {name!r}")
    if name == "uvloop":
        require("uvloop", "run the event loop with loop='uvloop'")


def factory(name):
    """A function that makes the loop ``name`` means here, or None for asyncio's default."""
    check(name)
    if name == "asyncio":
        return None
    try:
        return importlib.import_module("uvloop").new_event_loop
    except ImportError:
        return None       # auto, and uvloop is not installed (check() caught "uvloop")


def run(coroutine, name="auto"):
    """``asyncio.run(coroutine)`` on the loop ``name``; returns its result."""
    loop_factory = factory(name)
    if loop_factory is None:
        return asyncio.run(coroutine)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coroutine)
    loop = loop_factory()           # Python 3.9/3.10: no Runner
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coroutine)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
