"""The public API is pinned (the arrows between the packages are test_layers.py's)."""

import inspect
import os
import subprocess
import sys

import fastfork
from tests.harness import PY

PUBLIC = [
    "is_primary", "is_worker", "worker_id", "worker_index",
    "Cluster", "Worker", "Settings", "run", "usable_cpus", "parse_workers", "POLICIES",
    "EVENTS", "EXIT_OK", "EXIT_FORCED", "EXIT_CRASH_LOOP", "DEFAULT_WINDOW",
    "listen", "serve", "serve_async", "start_server", "create_server", "drain",
    "wait_stopping", "send", "on_message", "on_stop", "ready", "is_stopping", "heartbeat",
    "WorkerStopping", "parse_address",
    "MessageError", "ProtocolError",
]

def test_public_api_is_pinned():
    # Changing this list is changing the public API: on purpose, with a note.
    assert fastfork.__all__ == PUBLIC
    for name in PUBLIC:
        assert hasattr(fastfork, name), name
    namespace = {}
    exec("from fastfork import *", namespace)
    assert set(PUBLIC) <= set(namespace)


def test_role_in_the_primary():
    assert (fastfork.is_primary, fastfork.is_worker) == (True, False)
    assert (fastfork.worker_id, fastfork.worker_index) == (None, None)
    assert fastfork.is_stopping() is False


def test_role_in_a_forked_worker_is_read_after_the_fork():
    # The function form imports fastfork before forking; the role must still be
    # right in the child (the face asks the runtime, it keeps no copy).
    code = (
        "import json, fastfork\n"
        "def main():\n"
        "    fastfork.send([fastfork.is_primary, fastfork.is_worker,\n"
        "                   fastfork.worker_id, fastfork.worker_index])\n"
        "cluster = fastfork.Cluster(main, 1)\n"
        "def said(worker, data):\n"
        "    print(json.dumps(data), flush=True)\n"
        "    cluster.stop()\n"
        "cluster.on('message', said)\n"
        "raise SystemExit(cluster.run())\n")
    out = subprocess.run([sys.executable, "-c", code], env=PY.env(), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[false, true, 1, 0]"


def test_version_from_the_command_line():
    # One version: fastfork/_version.py, read by pyproject.toml (the installed
    # metadata), said by `fastfork --version` and `python -m fastfork --version`.
    from importlib.metadata import version

    assert fastfork.__version__ == version("fastfork")
    script = os.path.join(os.path.dirname(sys.executable), "fastfork")
    for command in ([script, "--version"], [sys.executable, "-m", "fastfork", "--version"]):
        out = subprocess.run(command, env=PY.env(), capture_output=True, text=True, timeout=30)
        assert (out.returncode, out.stdout, out.stderr) == (
            0, f"fastfork {fastfork.__version__}\n", ""), command


# Cluster's methods a program calls; its other unprefixed methods are the
# primary loop's own verbs (spawn_worker, reap_workers, handle_sigterm...).
CLUSTER_METHODS = [
    "__init__", "on", "emit", "fork", "set_workers", "stop", "alive_workers", "bind",
    "inherited_addresses", "open_control_socket", "open_endpoints", "readiness",
    "note_restart", "status", "close", "endpoint_addresses", "restarts_total", "run", "reload",
    "request_reload",
]


def _public_methods(cls):
    return [getattr(cls, name) for name in vars(cls)
            if not name.startswith("_") and callable(getattr(cls, name))]


def _unannotated(function):
    """The parameters (and "return") of ``function`` that have no annotation."""
    function = getattr(function, "fget", function)       # a property's getter
    signature = inspect.signature(function)
    missing = [name for name, p in signature.parameters.items()
               if name not in ("self", "cls") and p.annotation is p.empty]
    if signature.return_annotation is signature.empty:
        missing.append("return")
    return missing


def test_the_public_api_is_annotated():
    # mypy --strict checks the annotations (pyproject.toml's [tool.mypy]); this
    # checks that none is missing where mypy is told to let private code go.
    import fastfork.web
    from fastfork.web import AsgiServer
    from fastfork.worker.aio import Server
    from fastfork.worker.listener import Listener

    functions = [getattr(fastfork, name) for name in fastfork.__all__
                 if inspect.isfunction(getattr(fastfork, name))]
    functions += [getattr(fastfork.web, name) for name in fastfork.web.__all__
                  if inspect.isfunction(getattr(fastfork.web, name))]
    functions += [getattr(fastfork.Cluster, name) for name in CLUSTER_METHODS]
    functions += [fastfork.Settings.__init__, fastfork.Settings.replace, AsgiServer.__init__]
    for cls in (AsgiServer, Server, Listener):     # what serve/listen give a program
        functions += _public_methods(cls)
        functions += [member for member in vars(cls).values() if isinstance(member, property)]
    assert len(functions) > 40
    missing = {f"{getattr(f, 'fget', f).__module__}.{getattr(f, 'fget', f).__qualname__}":
               _unannotated(f) for f in functions}
    assert {name: params for name, params in missing.items() if params} == {}
