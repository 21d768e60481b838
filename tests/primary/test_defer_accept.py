"""``fastfork run`` defers accept (``TCP_DEFER_ACCEPT``, ``--defer-accept``):
the primary accepts a connection only once its request has arrived, so no
connection waits inside a worker for bytes that have not come (where a loop
that blocks would hold it); a client that connects and stays silent is
accepted all the same, about a second later, and served.  Real primaries,
workers and sockets on loopback; the worker count the primary reports is
what the test reads.
"""

import socket
import time

import pytest

from fastfork.addresses import DEFER_ACCEPT_SECONDS
from tests.harness import http_get
from tests.runner_harness import PID_APP
from tests.web_harness import read_until_closed

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"


def dispatched(runner):
    return sum(w["dispatched"] for w in runner.status()["workers"])


def start(runner_factory, tmp_path, *extra):
    app = tmp_path / "pid_app.py"
    app.write_text(PID_APP)
    runner = runner_factory(f"{app}:app", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--lifespan", "off", *extra)
    pid = runner.wait_serving(1)["workers"][0]["pid"]
    return runner, runner.address(), pid


def test_a_connection_is_accepted_once_its_request_arrives(runner_factory, tmp_path):
    runner, address, pid = start(runner_factory, tmp_path)
    with socket.create_connection(address, timeout=30) as silent:
        connected = time.monotonic()
        assert http_get(address) == (200, str(pid))
        seen = dispatched(runner)
        if time.monotonic() - connected > DEFER_ACCEPT_SECONDS * 0.8:
            pytest.skip("the machine took most of the deferral to answer one request")
        assert seen == 1            # only the one that sent its request
        # Silent past the deferral, it is accepted all the same, and served.
        runner.wait_status(lambda s: dispatched(runner) == 2, "the silent client accepted",
                           timeout=DEFER_ACCEPT_SECONDS + 10)
        silent.sendall(REQUEST)
        response = read_until_closed(silent)
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(str(pid).encode())


def test_no_defer_accept_hands_a_silent_connection_to_a_worker(runner_factory, tmp_path):
    runner, address, pid = start(runner_factory, tmp_path, "--no-defer-accept")
    with socket.create_connection(address, timeout=30) as silent:
        runner.wait_status(lambda s: dispatched(runner) == 1, "the silent client dispatched",
                           timeout=DEFER_ACCEPT_SECONDS * 0.8)
        silent.sendall(REQUEST)
        response = read_until_closed(silent)
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(str(pid).encode())
