"""`fastfork run` without --preload imports the app once per worker, as uvicorn does.

No check imports it before the fork: the first response waits for one import,
not two, and an app that cannot be imported is still one line and exit 2,
found by the workers and with none of them left (fastfork.cli.startup).
"""

import os
import time

import pytest

from tests.harness import PY, ClusterProcess, http_get
from tests.runner_harness import APPS

pytest.importorskip("uvicorn", reason="the web extra is not installed")
SLEEPY = os.path.join(APPS, "sleepy_app.py")
IMPORT_SECONDS = 2.0


def imports(log):
    """``[(pid, "primary" or "worker")]``: who imported the app, in order."""
    with open(log) as f:
        return [(int(pid), where) for pid, where in (line.split() for line in f)]


def test_the_first_response_waits_for_one_import_not_two(runner_factory, tmp_path, figures):
    log = tmp_path / "imports"
    started = time.monotonic()
    runner = runner_factory(f"{SLEEPY}:app", "--workers", "2", "--bind", "127.0.0.1:0",
                            env={"SLEEPY_IMPORT_SECONDS": str(IMPORT_SECONDS),
                                 "SLEEPY_IMPORT_LOG": str(log)})
    # Bound before any fork: the address is there while the workers import; the
    # request waits in the listen queue until a worker serves it.
    status = runner.wait_status(lambda s: s["primary"]["addresses"], "the bound address")
    code, body = http_get(status["primary"]["addresses"][0])
    first = time.monotonic() - started
    figures(import_s=IMPORT_SECONDS, first_response_s=round(first, 2))
    assert code == 200
    status = runner.wait_serving(2)
    assert int(body) in {w["pid"] for w in status["workers"]}
    # One import per worker, none in the primary nor in a checking child.
    assert sorted(imports(log)) == sorted((w["pid"], "worker") for w in status["workers"])
    assert "(asgi) on 127.0.0.1:" in runner.output()
    # Two imports in a row (a check, then the workers) would take 2 x IMPORT_SECONDS.
    assert first < 2 * IMPORT_SECONDS, runner.output()


def test_an_import_error_is_one_line_exit_2_and_no_worker_left(tmp_path):
    log = tmp_path / "imports"
    proc = ClusterProcess(["fastfork", "run", f"{SLEEPY}:app", "--workers", "2",
                           "--bind", "127.0.0.1:0", "--control-socket", str(tmp_path / "c.sock")],
                          impl=PY, env={"SLEEPY_IMPORT_SECONDS": "0.2",
                                        "SLEEPY_IMPORT_FAIL": "no database",
                                        "SLEEPY_IMPORT_LOG": str(log)}, script="-m")
    try:
        assert proc.wait_exit(30) == 2, proc.output()
        proc._reader.join(5)
        assert proc.lines == [f"fastfork run: error: importing {SLEEPY} failed: RuntimeError: "
                              f"no database ({SLEEPY}, line 15)"]
        found = imports(log)
        assert found and {where for _, where in found} == {"worker"}   # found by a worker
        assert proc.leftovers() == []                # every worker gone with the primary
        assert not (tmp_path / "c.sock").exists()
    finally:
        proc.close()
