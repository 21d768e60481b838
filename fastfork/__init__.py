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
"""

import os as _os

from .addresses import parse_address
from .aio import create_server, drain, serve, serve_async, start_server, wait_stopping
from .control import MessageError
from .cpus import parse_workers, usable_cpus
from .primary import (EXIT_CRASH_LOOP, EXIT_FORCED, EXIT_OK, EVENTS, POLICIES, Cluster,
                      Worker)
from .wire import DEFAULT_WINDOW, ProtocolError
from .worker import WorkerStopping

__version__ = "0.1.0"

__all__ = [
    # roles and identity
    "is_primary", "is_worker", "worker_id", "worker_index",
    # the primary
    "Cluster", "Worker", "run", "usable_cpus", "parse_workers", "POLICIES", "EVENTS",
    "EXIT_OK", "EXIT_FORCED", "EXIT_CRASH_LOOP", "DEFAULT_WINDOW",
    # a worker
    "listen", "serve", "serve_async", "start_server", "create_server", "drain",
    "wait_stopping", "send", "on_message", "on_stop", "ready", "is_stopping",
    "WorkerStopping", "parse_address",
    # errors
    "MessageError", "ProtocolError",
]

is_primary = True
is_worker = False
worker_id = None          # unique, never reused (Node's cluster.worker.id)
worker_index = None       # 0..N-1, reused by a replacement (PM2's NODE_APP_INSTANCE)


def _become_worker(runtime):
    global is_primary, is_worker, worker_id, worker_index
    is_primary, is_worker = False, True
    worker_id, worker_index = runtime.id, runtime.index


def _worker_runtime():
    from .worker import runtime
    return runtime()


def listen(address, backlog=2048):
    """In a worker: get the shared listening address (blocking code); returns a Listener."""
    return _worker_runtime().listen(address, backlog)


def send(data):
    """In a worker: send a JSON-serializable message to the primary."""
    _worker_runtime().send(data)


def on_message(callback):
    """In a worker: call ``callback(data)`` for each message from the primary
    (on the running event loop if there is one, else on a helper thread)."""
    _worker_runtime().on_message(callback)


def on_stop(callback):
    """In a worker: call ``callback()`` when the primary asks this worker to stop."""
    _worker_runtime().on_stop(callback)


def ready():
    """In a worker: tell the primary this worker is ready for traffic."""
    _worker_runtime().ready()


def is_stopping():
    """In a worker: has the primary asked this worker to stop?"""
    return is_worker and _worker_runtime().stopping.is_set()


def run(target, workers="max", **options):
    """The function form: fork ``workers`` processes running ``target()``; returns
    the primary's exit code when it shuts down.  ``options`` go to ``Cluster``."""
    return Cluster(target, workers, **options).run()


def _start_exec_worker():
    # A worker started in the Node form: the primary exec'd this program with
    # the channel fds in the environment (Node's NODE_UNIQUE_ID).  Remove the
    # marker so a subprocess of this worker does not think it is one too.
    from . import _impl, _sys, primary, worker
    data_fd, control_fd = (int(x) for x in _os.environ.pop(primary.ENV_CHANNELS).split(","))
    _sys.set_parent_death_signal(9)
    worker.start_runtime(data_fd, control_fd,
                         int(_os.environ[primary.ENV_WORKER_ID]),
                         int(_os.environ[primary.ENV_WORKER_INDEX]),
                         _os.environ.get(primary.ENV_POLICY, "rr"), _impl.dispatch)


if "FASTFORK_CHANNELS" in _os.environ:
    _start_exec_worker()
