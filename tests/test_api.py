"""The public API is pinned, and the layout keeps its arrows pointing one way."""

import ast
import os
import subprocess
import sys

import fastfork
from harness import PY, ROOT

PUBLIC = [
    "is_primary", "is_worker", "worker_id", "worker_index",
    "Cluster", "Worker", "Settings", "run", "usable_cpus", "parse_workers", "POLICIES",
    "EVENTS", "EXIT_OK", "EXIT_FORCED", "EXIT_CRASH_LOOP", "DEFAULT_WINDOW",
    "listen", "serve", "serve_async", "start_server", "create_server", "drain",
    "wait_stopping", "send", "on_message", "on_stop", "ready", "is_stopping", "heartbeat",
    "WorkerStopping", "parse_address",
    "MessageError", "ProtocolError",
]

PACKAGE = os.path.join(ROOT, "fastfork")


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


def _imports(path):
    """Every module a file imports, as written (relative ones with their dots)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                yield f"{module}:{alias.name}" if not node.module else module


def _package_files(*folders):
    for folder in folders:
        for name in sorted(os.listdir(os.path.join(PACKAGE, folder))):
            if name.endswith(".py"):
                yield os.path.join(PACKAGE, folder, name)


def test_the_worker_side_and_the_core_never_import_the_package_face():
    for path in _package_files("worker", "channels", "handoff", "primary"):
        for module in _imports(path):
            assert module != "fastfork" and not module.startswith("..:"), \
                f"{os.path.relpath(path, ROOT)} imports the package face ({module})"


def test_the_channels_and_the_core_know_nothing_above_them():
    # channels and _core are the bottom layers: the primary and the worker
    # use them, never the other way round.
    for path in _package_files("handoff",):
        for module in _imports(path):
            assert not any(module.startswith(p) for p in
                           ("..primary", "..worker", "..cli", "..demo", "fastfork.primary",
                            "fastfork.worker")), f"{os.path.relpath(path, ROOT)} imports {module}"
