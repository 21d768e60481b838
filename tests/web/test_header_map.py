"""``--header-map``: a request header whose name has an underscore, for a WSGI app.

``X_Forwarded_For`` and ``X-Forwarded-For`` are one environ key; a proxy that
sets the dashed one passes the other through.  Served by ``fastfork run`` on
each path that builds an environ: the engine on the loop thread and on its
pool, the adapter the engine streams a large body to, and uvicorn's protocol.
"""

import json
import os
import socket

import pytest

from fastfork.web import header_map
from tests.implementations import DEFAULT
from tests.runner_harness import APPS
from tests.web_harness import (call, connect, need_engine, need_web_extra,
                               read_until_closed)

need_web_extra()
APP = os.path.join(APPS, "web", "pep3333_app.py") + ":app"

PATHS = {
    "engine-loop": ("--http", "engine", "--threads", "0"),
    "engine-pool": ("--http", "engine"),
    # A body over --wsgi-body-buffer goes from the engine to the adapter.
    "engine-streamed": ("--http", "engine", "--wsgi-body-buffer", "16"),
    "uvicorn": ("--http", "httptools"),
}
# The proxy's header, the client's twin of it, one with no twin.
SENT = [("X-Forwarded-For", "10.0.0.1"), ("X_Forwarded_For", "6.6.6.6"), ("X_Note", "a")]
BODY = b"x" * 64              # over engine-streamed's buffer


def serve(runner_factory, path, *more):
    if path.startswith("engine"):
        need_engine()
    runner = runner_factory(APP, "--workers", "1", "--bind", "127.0.0.1:0", *PATHS[path],
                            *more, impl=DEFAULT)
    runner.wait_serving(1)
    return runner.address()


def environ_headers(address):
    """``(status, body)`` of ``POST /headers`` sent with ``SENT``."""
    conn = connect(address)
    try:
        response, body = call(conn, "POST", "/headers", body=BODY, headers=dict(SENT))
        return response.status, body
    finally:
        conn.close()


@pytest.mark.parametrize("path", PATHS)
def test_a_name_with_an_underscore_is_dropped_by_default(runner_factory, path):
    status, body = environ_headers(serve(runner_factory, path))
    assert status == 200, body
    seen = json.loads(body)
    assert seen["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"      # the proxy's alone
    assert "HTTP_X_NOTE" not in seen


@pytest.mark.parametrize("path", ["engine-loop", "uvicorn"])
def test_dangerous_maps_it_as_before(runner_factory, path):
    status, body = environ_headers(serve(runner_factory, path, "--header-map", "dangerous"))
    assert status == 200, body
    seen = json.loads(body)
    assert sorted(seen["HTTP_X_FORWARDED_FOR"].split(",")) == ["10.0.0.1", "6.6.6.6"]
    assert seen["HTTP_X_NOTE"] == "a"


@pytest.mark.parametrize("path", ["engine-pool", "uvicorn"])
def test_refuse_answers_400_and_serves_on(runner_factory, path):
    address = serve(runner_factory, path, "--header-map", "refuse")
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /headers HTTP/1.1\r\nHost: t\r\nX_Note: a\r\n\r\n")
        head, _, body = read_until_closed(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert header_map.REFUSED.encode() in body
    conn = connect(address)
    try:
        response, body = call(conn, "GET", "/headers", headers={"X-Forwarded-For": "10.0.0.1"})
    finally:
        conn.close()
    assert response.status == 200 and json.loads(body)["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"


def test_a_mode_that_is_not_one_is_refused_before_forking(runner_factory):
    runner = runner_factory(APP, "--workers", "1", "--bind", "127.0.0.1:0",
                            "--header-map", "merge")
    assert runner.proc.wait_exit(30) != 0
    output = runner.output()
    assert "header-map" in output and "drop" in output, output
    assert "forked worker" not in output


def test_the_api_names_the_modes(monkeypatch, tmp_path):
    from fastfork.cli import run
    from fastfork.web.wsgi import wrap
    monkeypatch.chdir(tmp_path)       # no config file to read
    for mode in header_map.MODES:     # the command line takes each, and only these
        assert run.parse(["x:app", "--header-map", mode]).header_map == mode
    with pytest.raises(ValueError, match="drop, refuse, dangerous"):
        wrap(lambda environ, start_response: [], header_map="merge")
    assert header_map.apply([(b"x_a", b"1"), (b"x-b", b"2")], "drop") == [(b"x-b", b"2")]
