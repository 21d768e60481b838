"""`fastfork run MODULE:APP` for ASGI and WSGI apps: found, checked, served, recycled.

The apps are tests/apps/web's (Starlette, FastAPI, Flask, Django); the web
layer itself is tested in test_web*.py, this is the runner's side of it.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.harness import PY
from tests.loadgen import HttpClient, Load
from tests.runner_harness import APPS, pids_of

pytest.importorskip("uvicorn", reason="the web extra is not installed")
pytest.importorskip("starlette", reason="the webtest extra is not installed")
pytest.importorskip("flask", reason="the webtest extra is not installed")
WEB = os.path.join(APPS, "web")
RUN = [sys.executable, "-m", "fastfork", "run"]


def get(address, path, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        if own:
            conn.close()


@pytest.mark.parametrize("app, kind", [("starlette_app.py:app", "asgi"),
                                       ("flask_app.py:app", "wsgi")])
def test_auto_detects_and_serves_under_rr(runner_factory, impl, app, kind):
    runner = runner_factory(os.path.join(WEB, app), "--workers", "2", "--bind", "127.0.0.1:0",
                            impl=impl)
    runner.wait_serving(2)
    assert f"({kind}) on 127.0.0.1:" in runner.output()
    address = runner.address()
    seen = {get(address, "/whoami")[1]["id"] for _ in range(4)}
    assert len(seen) == 2                      # round-robin over both workers
    # Keep-alive: one connection, several requests, one worker.
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        ids = {get(address, "/whoami", conn)[1]["id"] for _ in range(5)}
    finally:
        conn.close()
    assert len(ids) == 1
    # Heartbeats report requests: status shows them per worker.
    # (uvicorn counts a response once sent whole; keep-alive ones always are.)
    status = runner.wait_status(lambda s: sum(w["requests"] or 0 for w in s["workers"]) >= 9,
                                "requests in the status")
    assert all(w["requests"] is not None for w in status["workers"])


def test_max_requests_counts_requests_not_connections(runner_factory):
    runner = runner_factory(os.path.join(WEB, "starlette_app.py:app"), "--workers", "1",
                            "--bind", "127.0.0.1:0", "--max-requests", "6")
    before = pids_of(runner.wait_serving(1))
    address = runner.address()
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        for _ in range(6):                     # one connection, six requests
            assert get(address, "/whoami", conn)[0] == 200
    finally:
        conn.close()
    runner.wait_status(lambda s: len(s["workers"]) == 1 and not pids_of(s) & before
                       and s["workers"][0]["state"] == "listening", "the recycled worker",
                       timeout=20)
    assert "max-requests (6 requests, limit 6)" in runner.output()


def web_load(address, threads=4):
    """``/whoami`` until stopped, half the threads on a new connection per
    request, half keep-alive (a reused connection closed under a request is
    retried, as HTTP clients do: counted apart, not failed)."""
    return Load(address, concurrency=threads, duration=100,
                client=HttpClient("/whoami", keep_alive="half"))


@pytest.mark.parametrize("app", ["starlette_app.py:app", "flask_app.py:app"])
def test_six_reloads_under_load_fail_no_request(runner_factory, app):
    runner = runner_factory(os.path.join(WEB, app), "--workers", "2", "--bind", "127.0.0.1:0")
    before = pids_of(runner.wait_serving(2))
    with web_load(runner.address()) as load:
        for n in range(6):
            load.wait_more(20, f"load before reload {n + 1}")
            runner.signal(signal.SIGHUP)
            after = runner.wait_status(
                lambda s: len(s["workers"]) == 2 and not pids_of(s) & before
                and s["primary"]["replacing"] is None and not s["primary"]["queued"]
                and all(w["state"] == "listening" for w in s["workers"]),
                "every worker replaced", timeout=30)
            before = pids_of(after)
        load.wait_more(20, "load after the last reload")
    report = load.report()
    print(f"\n6 reloads of {app} under load: {report}, {load.retried} reused keep-alive "
          "connections closed under a request")
    assert report.failed == 0, report.errors


def test_a_frozen_worker_loses_nothing(runner_factory):
    # Frozen 2 s and thawed: the connections it held wait for it (at most its
    # window), the rest go to the other worker, and no request fails.
    runner = runner_factory(os.path.join(WEB, "starlette_app.py:app"), "--workers", "2",
                            "--bind", "127.0.0.1:0")
    status = runner.wait_serving(2)
    frozen = status["workers"][0]["pid"]
    with web_load(runner.address(), threads=8) as load:
        load.wait_more(20, "load")
        os.kill(frozen, signal.SIGSTOP)
        try:
            time.sleep(2)            # the freeze itself, under load
        finally:
            os.kill(frozen, signal.SIGCONT)
        load.wait_more(100, "load after the thaw")
    report = load.report()
    print(f"\none worker frozen 2 s: {report}")
    assert report.failed == 0, report.errors
    assert frozen in pids_of(runner.wait_status(lambda s: len(s["workers"]) == 2, "both"))


def test_a_missing_web_extra_is_named_before_forking(tmp_path):
    fake = tmp_path / "uvicorn"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    env = PY.env({"PYTHONPATH": f"{tmp_path}{os.pathsep}{PY.env()['PYTHONPATH']}"})
    out = subprocess.run(RUN + [os.path.join(WEB, "starlette_app.py:app"),
                                "--control-socket", str(tmp_path / "c.sock")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert "pip install 'fastfork[web]'" in out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr


def test_neither_asgi_nor_wsgi_says_what_it_is(tmp_path):
    out = subprocess.run(RUN + [os.path.join(APPS, "ops_app.py:VERSION"), "--app-type", "asgi",
                                "--control-socket", str(tmp_path / "c.sock")],
                         env=PY.env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith("fastfork run: error: ")
    assert "is a str, not a callable" in out.stderr


def test_lifespan_startup_failure_is_a_crash_with_the_traceback(tmp_path):
    out = subprocess.run(RUN + [os.path.join(WEB, "starlette_app.py:broken"), "--workers", "1",
                                "--bind", "127.0.0.1:0", "--max-restarts", "2",
                                "--min-uptime", "5", "--backoff-base", "0.01",
                                "--control-socket", str(tmp_path / "c.sock")],
                         env=PY.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stderr[-2000:]        # the crash loop stopped it
    assert "Traceback" in out.stderr and "died unexpectedly" in out.stderr
