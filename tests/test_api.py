"""The public API is pinned (the arrows between the packages are test_layers.py's)."""

import os
import subprocess
import sys

import fastfork
from harness import PY

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
