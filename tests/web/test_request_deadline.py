"""Slow and idle clients against `fastfork run` web apps (issue 24, fault 2).

A request head must arrive within --timeout-request-head (1 s here): idle
connections, heads sent a byte at a time (slowloris) and half-sent requests
on keep-alive connections are closed at the deadline, with a 408 where part
of a request came, and counted in the metrics, while normal requests keep
being answered.  A WSGI app's request body is read on the loop before a
thread is taken, so slow uploaders do not starve a Flask app's threads.

Real primaries on loopback, watched through their control socket and
/metrics, with deadlines: a test waits on a socket (with a timeout) or on a
status, never sleeps and hopes.
"""

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.harness import PY, wait_until
from tests.runner_harness import APPS
from tests.web_harness import need_engine, read_until_closed

pytest.importorskip("uvicorn", reason="the web extra is not installed")
pytest.importorskip("starlette", reason="the webtest extra is not installed")
pytest.importorskip("flask", reason="the webtest extra is not installed")
pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")
WEB = os.path.join(APPS, "web")
DEADLINE = 1.0
# Far above the deadline, far below the per-test timeout: a connection still
# open this long after the deadline was held.
HELD = 8.0


def whoami(address):
    conn = http.client.HTTPConnection(*address, timeout=HELD)
    try:
        conn.request("GET", "/whoami", headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def read_response(sock):
    """One whole response (it has a Content-Length): ``(head, body)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response body: {head!r}"
        body += chunk
    return head, body



def metric(address, name, index=0):
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith(f'{name}{{index="{index}"}} '):
            return float(line.split()[-1])
    return None


class Trickle(threading.Thread):
    """A slowloris: sends ``data`` one byte per ``interval`` until the server closes."""

    def __init__(self, sock, data, interval=0.1):
        super().__init__(daemon=True)
        self.sock, self.data, self.interval = sock, data, interval
        self.stop = threading.Event()

    def run(self):
        for byte in self.data:
            if self.stop.wait(self.interval):     # paced on purpose: the client under test
                return
            try:
                self.sock.send(bytes([byte]))
            except OSError:
                return            # closed by the server: what the test waits for


@pytest.fixture
def open_sockets():
    socks = []

    def connect(address):
        sock = socket.create_connection(address, timeout=HELD)
        socks.append(sock)
        return sock
    yield connect
    for sock in socks:
        sock.close()


@pytest.mark.parametrize("parser", ["httptools", "h11", "engine"])
def test_slow_and_idle_heads_are_closed_at_the_deadline(runner_factory, open_sockets, parser):
    if parser == "engine":
        need_engine()
    runner = runner_factory(os.path.join(WEB, "starlette_app.py:app"), "--workers", "1",
                            "--bind", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                            "--http", parser, "--timeout-request-head", str(DEADLINE),
                            "--timeout-keep-alive", "0.5")
    status = runner.wait_serving(1)
    address = runner.address()
    host, _, port = status["primary"]["endpoints"][0].rpartition(":")
    metrics = (host, int(port))

    started = time.monotonic()
    idle = open_sockets(address)                          # sends nothing
    slowloris = open_sockets(address)                     # a head a byte at a time, endless
    slowloris.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n")
    trickle = Trickle(slowloris, b"X-Pad: " + b"a" * 1000)
    trickle.start()
    # Keep-alive: one request answered, then half of the next one.
    keep_alive = open_sockets(address)
    keep_alive.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(keep_alive)[0].startswith(b"HTTP/1.1 200 ")
    keep_alive.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n")
    half_sent_at = time.monotonic()
    # Keep-alive, idle after its response: uvicorn's --timeout-keep-alive closes it.
    idle_keep_alive = open_sockets(address)
    idle_keep_alive.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(idle_keep_alive)[0].startswith(b"HTTP/1.1 200 ")

    # Meanwhile normal requests are answered.
    assert [whoami(address)[0] for _ in range(3)] == [200] * 3

    try:
        assert read_until_closed(idle) == b""             # nothing came: nothing to answer
        assert read_until_closed(slowloris).startswith(b"HTTP/1.1 408 ")
        assert read_until_closed(keep_alive).startswith(b"HTTP/1.1 408 ")
        assert read_until_closed(idle_keep_alive) == b""
    except socket.timeout:
        raise AssertionError(f"a connection was held past the {DEADLINE}s deadline") from None
    finally:
        trickle.stop.set()
    closed = time.monotonic()
    # Not early: each waited its deadline (the keep-alive one from its first byte).
    # The server's clock starts when the byte arrives, a little before this
    # process notes ``half_sent_at`` after its send, and asyncio runs a timer
    # up to its clock resolution early: a few milliseconds of slack, no more.
    slack = 0.02
    assert closed - started >= DEADLINE - slack and closed - half_sent_at >= DEADLINE - slack
    assert whoami(address)[0] == 200
    # Counted: the idle one, the slowloris and the half-sent one (not the idle keep-alive).
    wait_until(lambda: metric(metrics, "fastfork_worker_request_head_timeouts_total") == 3,
               10, "3 head timeouts in the metrics")


@pytest.mark.parametrize("parser", ["httptools", "h11", "engine"])
def test_the_deadline_ends_with_the_head(runner_factory, open_sockets, parser):
    # A request answered slowly, and a WebSocket, outlive the deadline: the
    # clock stops once the head is complete (or the connection upgraded).
    if parser == "engine":
        need_engine()
    pytest.importorskip("fastapi", reason="the webtest extra is not installed")
    client = pytest.importorskip("websockets.sync.client",
                                 reason="the websockets package is not installed")
    runner = runner_factory(os.path.join(WEB, "fastapi_app.py:app"), "--workers", "1",
                            "--bind", "127.0.0.1:0", "--http", parser,
                            "--timeout-request-head", "0.5")
    runner.wait_serving(1)
    host, port = runner.address()
    slow = open_sockets((host, port))
    slow.sendall(b"GET /slow?s=1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
    with client.connect(f"ws://{host}:{port}/ws", open_timeout=10) as ws:
        assert ws.recv(timeout=10).startswith("hello from worker")
        idle = open_sockets((host, port))
        assert read_until_closed(idle) == b""          # the deadline has passed...
        ws.send("still here")
        assert ws.recv(timeout=10) == "echo: still here"   # ...and the WebSocket lives on
    head, body = read_response(slow)
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["slept"] == 1.5


def test_slow_uploaders_do_not_starve_a_wsgi_app(runner_factory, open_sockets):
    runner = runner_factory(os.path.join(WEB, "flask_app.py:app"), "--workers", "1",
                            "--threads", "2", "--bind", "127.0.0.1:0")
    runner.wait_serving(1)
    address = runner.address()
    body = os.urandom(4000)
    uploads = []
    for _ in range(6):                     # three times the app's threads
        sock = open_sockets(address)
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream"
                     b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:100])
        uploads.append(sock)
    # Every upload has reached the worker (its loop reports open connections).
    runner.wait_status(lambda s: s["workers"][0]["open"] == 6, "6 uploads open in the worker")
    # The uploads hang mid-body; normal requests are still answered in time.
    assert [whoami(address)[0] for _ in range(4)] == [200] * 4
    for sock in uploads:                   # the rest of each body: each is echoed whole
        sock.sendall(body[100:])
    for sock in uploads:
        head, answer = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert json.loads(answer) == {"length": len(body),
                                      "sha256": hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("option, value, message", [
    ("--timeout-request-head", "-1", "argument --timeout-request-head: '-1' must be zero or "
                                     "more seconds"),
    ("--wsgi-body-buffer", "12X", "argument --wsgi-body-buffer: '12X' is not a size"),
])
def test_bad_deadline_settings_fail_before_any_fork(tmp_path, option, value, message):
    out = subprocess.run([sys.executable, "-m", "fastfork", "run",
                          os.path.join(WEB, "flask_app.py:app"), option, value,
                          "--control-socket", str(tmp_path / "c.sock")],
                         env=PY.env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith(f"fastfork run: error: {message}"), out.stderr
    assert "forked" not in out.stderr
