"""fastfork: Node-style cluster mode for Python servers (Linux).

One primary process forks workers that all serve the same port.  The primary
owns the listening sockets, accepts connections and passes each one to a
worker over a Unix socket (round-robin with a credit window, by default).

    import fastfork

    if fastfork.is_primary:                      # the Node form
        raise SystemExit(fastfork.Cluster(workers="max").run())
    else:
        fastfork.serve(handle, ("127.0.0.1", 8000))

    fastfork.run(main, workers=4)                # the function form

In the primary ``is_primary`` is True; in a worker ``is_worker`` is True and
``worker_id`` / ``worker_index`` say which one this is.

This module is only the face: the primary lives in ``fastfork.primary``, the
worker side in ``fastfork.worker``, the hand-off between them (both
channels and the hot path) in ``fastfork.handoff``.
"""

import os as _os
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ._version import __version__ as __version__
from .addresses import Address, parse_address
from .handoff.control import MessageError
from .handoff.wire import DEFAULT_WINDOW, ProtocolError
from .cpus import parse_workers, usable_cpus
from .primary import (EVENTS, EXIT_CRASH_LOOP, EXIT_FORCED, EXIT_OK, POLICIES, Cluster,
                      Worker)
from .settings import Settings
from .worker import boot as _boot
from .worker import runtime as _runtime
from .worker.aio import create_server, drain, serve, serve_async, start_server, wait_stopping
from .worker.listener import Listener, WorkerStopping

if TYPE_CHECKING:
    # What __getattr__ answers (the role is read each time, see below).
    is_primary: bool
    is_worker: bool
    worker_id: Optional[int]
    worker_index: Optional[int]

__all__ = [
    # roles and identity
    "is_primary", "is_worker", "worker_id", "worker_index",
    # the primary
    "Cluster", "Worker", "Settings", "run", "usable_cpus", "parse_workers", "POLICIES",
    "EVENTS", "EXIT_OK", "EXIT_FORCED", "EXIT_CRASH_LOOP", "DEFAULT_WINDOW",
    # a worker
    "listen", "serve", "serve_async", "start_server", "create_server", "drain",
    "wait_stopping", "send", "on_message", "on_stop", "ready", "is_stopping", "heartbeat",
    "WorkerStopping", "parse_address",
    # errors
    "MessageError", "ProtocolError",
]


def __getattr__(name: str) -> Any:
    # The role is asked of the worker runtime each time, so the answer is
    # right in a process forked after this module was imported.
    current = _runtime.current()
    if name == "is_primary":
        return current is None
    if name == "is_worker":
        return current is not None
    if name == "worker_id":           # unique, never reused (Node's cluster.worker.id)
        return None if current is None else current.id
    if name == "worker_index":        # 0..N-1, reused by a replacement (NODE_APP_INSTANCE)
        return None if current is None else current.index
    raise AttributeError(f"module 'fastfork' has no attribute {name!r}")


def listen(address: Address, backlog: int = 2048) -> Listener:
    """In a worker: get the shared listening address (blocking code); returns a Listener.

    Not under policy ``least`` (RuntimeError): blocking code does not report
    the connections it closes; serve from an event loop there (``serve``).
    """
    return _runtime.runtime().listen(address, backlog)


def send(data: Any) -> None:
    """In a worker: send a JSON-serializable message to the primary."""
    _runtime.runtime().send(data)


def on_message(callback: Callable[[Any], object]) -> None:
    """In a worker: call ``callback(data)`` for each message from the primary
    (on the running event loop if there is one, else on a helper thread)."""
    _runtime.runtime().on_message(callback)


def on_stop(callback: Callable[[], object]) -> None:
    """In a worker: call ``callback()`` when the primary asks this worker to stop."""
    _runtime.runtime().on_stop(callback)


def ready() -> None:
    """In a worker: tell the primary this worker is ready for traffic."""
    _runtime.runtime().ready()


def heartbeat() -> None:
    """In a worker: prove it is alive, from a loop fastfork does not run (a thread,
    a server of your own).  At most one beat an interval goes out; hang detection
    (``timeout``) starts with the first.  ``serve()`` and blocking ``accept()``
    beat by themselves."""
    _runtime.runtime().beat_if_due()


def is_stopping() -> bool:
    """In a worker: has the primary asked this worker to stop?"""
    current = _runtime.current()
    return current is not None and current.stopping.is_set()


def run(target: Callable[..., object], workers: Union[int, str] = "max",
        **options: Any) -> int:
    """The function form: fork ``workers`` processes running ``target()``; returns
    the primary's exit code when it shuts down.  ``options`` go to ``Cluster``."""
    return Cluster(target, workers, **options).run()


if _boot.ENV_CHANNELS in _os.environ:
    # This program was exec'd as a worker (the Node form).
    _boot.from_environment()
