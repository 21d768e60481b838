"""fastfork.web starting, stopping and refusing: graceful drain, lifespan, clear errors.

Real clusters (tests/apps/web/web_cluster.py) and real sockets; a missing
extra is simulated the honest way, in a subprocess whose ``import uvicorn``
fails (``sys.modules['uvicorn'] = None``).
"""

import json
import select
import signal
import subprocess
import sys

import pytest

from harness import ROOT
from tests.implementations import DEFAULT
from web_harness import (closed_by_peer, lifespan_dir, lifespan_records,  # noqa: F401
                         need_web_extra, raw_request, read_response, web_cluster)

need_web_extra()


@pytest.mark.parametrize("app", ["fastapi", "flask"])
def test_sigterm_finishes_the_slow_request_and_closes_keep_alive(web_cluster, lifespan_dir,  # noqa: F811
                                                                  app):
    cluster = web_cluster("--app", app, "--workers", "2", "--graceful-timeout", "20",
                          env={"WEB_LIFESPAN_DIR": lifespan_dir})
    address, listening = cluster.wait_listening(2)
    # An idle keep-alive connection: one request answered, then silence.
    idle = raw_request(address, "/whoami")
    head, _ = read_response(idle)
    assert head.startswith("HTTP/1.1 200")
    # A slow request in flight on a keep-alive connection when the stop comes.
    busy = raw_request(address, "/slow?s=1.5")
    started = cluster.wait_event("message")
    assert started["data"]["slow"] == "started"
    cluster.signal(signal.SIGTERM)
    try:
        # The idle one is closed at once, long before the slow answer.
        assert closed_by_peer(idle)
        assert select.select([busy], [], [], 0)[0] == [], "the slow answer came first"
        head, body = read_response(busy)
        assert head.startswith("HTTP/1.1 200"), head
        assert json.loads(body) == {"slept": 1.5, "id": started["data"]["id"]}
        # ... and closed after that response, although the client asked for keep-alive
        # (uvicorn since about 0.35 also says "connection: close" in it; 0.30 does not).
        assert closed_by_peer(busy)
    finally:
        idle.close()
        busy.close()
    assert cluster.wait_exit(15) == 0
    exits = [event for event in cluster.events if event["event"] == "exit"]
    assert sorted((e["pid"], e["code"]) for e in exits) == \
        sorted((e["pid"], 0) for e in listening)
    if app == "fastapi":
        # Lifespan: one startup and one shutdown per worker, in that order.
        assert lifespan_records(lifespan_dir) == {
            event["pid"]: ["startup", "shutdown"] for event in listening}


def test_lifespan_startup_failure_exits_the_worker_with_the_traceback(web_cluster):  # noqa: F811
    cluster = web_cluster("--app", "broken-lifespan", "--workers", "1", "--max-restarts", "1")
    died = cluster.wait_event("exit")
    assert died["code"] == 3 and died["signal"] is None
    assert cluster.wait_event("done")["code"] != 0
    output = cluster.output()
    assert "Traceback (most recent call last)" in output
    assert "RuntimeError: database unreachable at startup" in output
    assert "lifespan startup failed" in output
    assert not any(event["event"] == "listening" for event in cluster.events)


def test_an_object_that_is_no_app_is_refused_before_forking(web_cluster):  # noqa: F811
    cluster = web_cluster("--app", "neither")
    assert cluster.wait_exit(15) == 2
    assert "web_cluster: error: {'not': 'an app'} (an instance of builtins.dict) is not " \
           "callable, so it is neither an ASGI app" in cluster.output()
    assert not any(event["event"] == "fork" for event in cluster.events)


def test_an_object_that_is_no_app_is_refused_by_serve_in_the_worker(web_cluster):  # noqa: F811
    cluster = web_cluster("--app", "neither", "--check-in-worker", "--workers", "1",
                          "--max-restarts", "1")
    died = cluster.wait_event("exit")
    assert died["code"] == 1
    output = cluster.output()
    assert "fastfork.web.errors.NotAnAppError: {'not': 'an app'}" in output
    assert "neither an ASGI app (async def app(scope, receive, send)) nor a WSGI app" in output
    assert not any(event["event"] == "listening" for event in cluster.events)


MISSING = """
import sys
sys.modules[{module!r}] = None      # makes `import {module}` raise ImportError
import fastfork.web
{app}
try:
    fastfork.web.serve(app, "127.0.0.1:0")
except fastfork.web.MissingExtraError as exc:
    print("MissingExtraError:", exc)
    print("is ImportError:", isinstance(exc, ImportError), "package:", exc.package)
    sys.exit(7)
"""
ASGI_APP = "async def app(scope, receive, send): pass"
WSGI_APP = "def app(environ, start_response): pass"


@pytest.mark.parametrize("module, app", [("uvicorn", ASGI_APP), ("uvicorn", WSGI_APP),
                                         ("a2wsgi", WSGI_APP), ("uvloop", ASGI_APP)])
def test_a_missing_package_names_the_extra_to_install(module, app):
    code = MISSING.format(module=module, app=app)
    if module == "uvloop":
        code = code.replace('"127.0.0.1:0")', '"127.0.0.1:0", loop="uvloop")')
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, env=DEFAULT.env(), cwd=ROOT)
    assert result.returncode == 7, result.stdout + result.stderr
    # uvloop is an extra of its own, for every kind of app, not only the web's.
    extra, who = ("uvloop", "fastfork") if module == "uvloop" else ("web", "fastfork.web")
    assert f"{who} needs the {module!r} package" in result.stdout
    assert f"install the {extra} extra: pip install 'fastfork[{extra}]'" in result.stdout
    assert f"is ImportError: True package: {module}" in result.stdout


def test_uvloop_auto_falls_back_to_asyncio_when_missing():
    # loop="auto" (the default) must not need uvloop: the check passes, and the
    # next thing serve() needs is a worker.
    code = ("import sys; sys.modules['uvloop'] = None\n"
            "import fastfork.web\n"
            "async def app(scope, receive, send): pass\n"
            "try:\n    fastfork.web.serve(app, '127.0.0.1:0')\n"
            "except fastfork.web.MissingExtraError as exc:\n    print('missing', exc)\n"
            "except Exception as exc:\n    print('then', type(exc).__name__, exc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, env=DEFAULT.env(), cwd=ROOT)
    assert "missing" not in result.stdout, result.stdout + result.stderr
    assert result.stdout.startswith("then RuntimeError fastfork.web serves from a fastfork "
                                    "worker"), result.stdout + result.stderr
