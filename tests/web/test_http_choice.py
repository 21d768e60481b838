"""``--http auto``: fastfork's engine wherever it can serve, uvicorn's protocol where
it cannot, and the worker's start-up line says which and why.

Driven through `python -m fastfork run` on loopback: the default serves with
the engine; TLS, or ``FASTFORK_NO_EXTENSIONS``, make auto pick uvicorn's
httptools protocol and say so.  ``--limit-concurrency`` (uvicorn's 503 rule)
is answered the same on both paths, so it no longer keeps auto off the engine.
"""

import http.client
import os
import socket
import ssl

import pytest

from fastfork.web import choice
from tests.harness import DEFAULT, PY, wait_until
from tests.runner_harness import APPS
from tests.tls_certs import Certs
from tests.web_harness import (call, connect, need_engine, need_web_extra, parse_responses,
                               read_until_closed)

need_web_extra()
need_engine()

STARLETTE = os.path.join(APPS, "web", "starlette_app.py:app")
SERVED_BY = "HTTP/1.1 served by "


def served_by(runner):
    """The worker's start-up line: what serves HTTP/1.1 in it."""
    def line():
        for text in runner.output().splitlines():
            if SERVED_BY in text:
                return text.split(SERVED_BY, 1)[1]
        return None
    return wait_until(line, 15, "the worker's HTTP/1.1 start-up line")


def test_auto_is_the_engine_by_default(runner_factory):
    runner = runner_factory(STARLETTE, "--workers", "1", "--bind", "127.0.0.1:0", impl=DEFAULT)
    runner.wait_serving(1)
    assert served_by(runner) == "fastfork's engine"
    conn = connect(runner.address())
    try:
        response, body = call(conn, "GET", "/whoami")
        assert response.status == 200 and b"starlette" in body
    finally:
        conn.close()


def test_auto_says_why_it_passed_the_engine_over_for_tls(runner_factory, tmp_path):
    certs = Certs(tmp_path)
    cert, key = certs.server("server", 0x1001)
    runner = runner_factory(STARLETTE, "--workers", "1", "--bind", "127.0.0.1:0",
                            "--ssl-certfile", cert, "--ssl-keyfile", key, impl=DEFAULT)
    runner.wait_serving(1)
    assert served_by(runner) == ("uvicorn's httptools protocol (not the engine: TLS (the "
                                 "engine speaks plain HTTP/1.1))")
    context = ssl.create_default_context(cafile=certs.ca)
    conn = http.client.HTTPSConnection(*runner.address(), context=context, timeout=10)
    try:
        response, _ = call(conn, "GET", "/whoami")
        assert response.status == 200
    finally:
        conn.close()


def test_auto_keeps_off_the_compiled_engine_without_extensions(runner_factory):
    runner = runner_factory(STARLETTE, "--workers", "1", "--bind", "127.0.0.1:0", impl=PY)
    runner.wait_serving(1)
    assert served_by(runner) == ("uvicorn's httptools protocol (not the engine: "
                                 "FASTFORK_NO_EXTENSIONS is set)")


def test_a_named_http_is_taken_as_given():
    assert choice.resolve("h11", tls=False) == ("h11", None)
    assert choice.resolve("engine", tls=True) == ("engine", None)   # refused later, loudly
    with pytest.raises(ValueError, match="http must be one of auto, httptools, h11, engine"):
        choice.resolve("engine2", tls=False)


@pytest.mark.parametrize("http", ["engine", "httptools"])
def test_limit_concurrency_answers_503_on_both_paths(runner_factory, http):
    # uvicorn's rule: a request that arrives while `limit` connections are
    # open (its own included) is answered 503 and its connection closed.
    runner = runner_factory(STARLETTE, "--workers", "1", "--bind", "127.0.0.1:0",
                            "--http", http, "--limit-concurrency", "2", impl=DEFAULT)
    runner.wait_serving(1)
    address = runner.address()
    first = connect(address)
    second = socket.create_connection(address, timeout=10)
    try:
        response, _ = call(first, "GET", "/whoami")
        assert response.status == 200              # one open: under the limit
        second.sendall(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
        # Read to the server's close: the answer alone can arrive before the
        # server has closed, and until then the refused connection still counts.
        (answer,), rest = parse_responses(read_until_closed(second))
        status, headers, body = answer
        assert (status, body, rest) == (503, b"Service Unavailable", b"")
        assert headers[b"connection"] == b"close"
        response, _ = call(first, "GET", "/whoami")
        assert response.status == 200              # the refused one is gone again
    finally:
        first.close()
        second.close()
    assert "Exceeded concurrency limit." in runner.output()
