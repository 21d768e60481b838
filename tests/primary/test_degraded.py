"""A crash loop in one slot while other workers serve (issue 24, fault 1).

Real `python -m fastfork run` primaries on loopback, watched through their
control socket and their /readyz, with deadlines, never sleeps.  The app is a
file the test rewrites: broken on disk, a killed worker's replacement fails
to import; fixed, the next re-fork serves again.
"""

import os
import signal
import subprocess
import sys

import pytest

from fastfork.cli.status import table
from tests.harness import PY, http_get, wait_until
from tests.runner_harness import BROKEN_APP, PID_APP

pytest.importorskip("uvicorn", reason="the web extra is not installed")
pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")

# Short delays so that many re-forks fit in a test; 3 restarts, so that the
# loop goes well past the point where the primary used to give up.
CRASH_LOOP = ["--max-restarts", "3", "--min-uptime", "2", "--backoff-base", "0.05",
              "--backoff-max", "0.2"]
# A rewritten file must be imported again, never from a stale .pyc.
NO_PYC = {"PYTHONDONTWRITEBYTECODE": "1"}



def address_of(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


def test_one_slot_in_a_crash_loop_leaves_the_others_serving(runner_factory, tmp_path):
    app = tmp_path / "flaky_app.py"
    app.write_text(PID_APP)
    runner = runner_factory(f"{app}:app", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--metrics", "127.0.0.1:0", "--lifespan", "off", *CRASH_LOOP,
                            env=NO_PYC)
    status = runner.wait_serving(2)
    address = runner.address()
    health = address_of(status["primary"]["endpoints"][0])
    survivor = next(w["pid"] for w in status["workers"] if w["index"] == 0)
    victim = next(w["pid"] for w in status["workers"] if w["index"] == 1)
    assert http_get(health, "/readyz") == (200, "ready: 2 of 2 workers serving\n")

    app.write_text(BROKEN_APP)
    os.kill(victim, signal.SIGKILL)
    # Each turn: the survivor answers a request, and the primary is asked how
    # many re-forks index 1 has had; 8 is well past --max-restarts 3.
    answers = []

    def refork_failed_often():
        answers.append(http_get(address))
        status = runner.try_status()
        return status if status is not None and status["totals"]["restarts"] >= 8 else None

    status = wait_until(refork_failed_often, 30, "8 failed re-forks at index 1")
    assert answers and all(answer == (200, str(survivor)) for answer in answers), answers
    assert status["primary"]["degraded"] == 1
    assert status["primary"]["ready"] is True
    assert [(w["index"], w["pid"]) for w in status["workers"] if w["state"] == "listening"] \
        == [(0, survivor)]
    ready, reason = http_get(health, "/readyz")
    assert ready == 200 and reason.startswith("ready, degraded: 1 of 2 workers serving"), reason
    assert "index 1: crash loop" in reason, reason
    metrics = http_get(health, "/metrics")[1]
    assert "fastfork_workers_degraded 1.0" in metrics
    assert 'fastfork_worker_quick_deaths{index="1"}' in metrics
    assert "; degraded: 1 not serving, index 1 crashed" in table(status)[0]
    assert "not re-forking" not in runner.output()

    app.write_text(PID_APP)                  # the fix is deployed: index 1 serves again
    status = runner.wait_status(
        lambda s: s["primary"]["degraded"] == 0
        and sorted(w["index"] for w in s["workers"] if w["state"] == "listening") == [0, 1],
        "index 1 serving again", timeout=20)
    assert http_get(health, "/readyz") == (200, "ready: 2 of 2 workers serving\n")
    assert "fastfork_workers_degraded 0.0" in http_get(health, "/metrics")[1]
    assert {http_get(address)[1] for _ in range(4)} == {str(w["pid"]) for w in status["workers"]}
    assert runner.proc.proc.poll() is None


def test_broken_code_at_start_up_exits_2_naming_it(tmp_path):
    # No check imports the app before the fork any more: each worker imports it,
    # and the first one's word on it decides (fastfork.cli.startup).  Code that
    # fails in every worker is then bad input: the one line, exit 2, nothing
    # re-forked (a crash loop at start-up, exit 3, is an app that imports and
    # then dies: test_run_web's lifespan failure).
    app = tmp_path / "broken_app.py"
    app.write_text("import fastfork\n"
                   "if fastfork.is_worker:\n"
                   "    " + BROKEN_APP + PID_APP)
    out = subprocess.run([sys.executable, "-m", "fastfork", "run", f"{app}:app", "--workers",
                          "2", "--bind", "127.0.0.1:0", "--health", "127.0.0.1:0", *CRASH_LOOP,
                          "--control-socket", str(tmp_path / "c.sock")],
                         env=PY.env(NO_PYC), capture_output=True, text=True, timeout=50)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.splitlines() == [
        f"fastfork run: error: importing {app} failed: RuntimeError: broken on purpose: a "
        f"deploy that cannot import ({app}, line 3)"]
