"""Whatever an operator's tool sends to the status socket or the health endpoint,
the primary answers an error and serves on (issue 24, fault 1).

The status socket's line handling is fuzzed in-process with hypothesis over
every JSON shape; then a real `fastfork run` primary gets the bad lines and
requests on its real sockets, and must still answer and serve afterwards.
"""

import json
import os
import socket
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from fastfork.operations.status_socket import StatusServer
from tests.harness import request
from tests.runner_harness import OPS_APP, pids_of

# Every JSON value: scalars (NaN and infinities too: Python's json reads them),
# nested in lists and objects.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@pytest.fixture(scope="module")
def control_server():
    """A real StatusServer (bound, not served by any loop): its ``respond`` is the
    line handling the primary runs for each request."""
    directory = tempfile.mkdtemp(prefix="ffin", dir="/tmp")
    server = StatusServer(os.path.join(directory, "c.sock"),
                           {"status": lambda: {"primary": {"pid": 1}}},
                           lambda fd: None, lambda fd: None)
    yield server
    server.close()
    os.rmdir(directory)


def check_answer(server, line):
    """``respond`` must return one JSON object line: the status, or an error (a str)."""
    raw = server.respond(line)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    answer = json.loads(raw)
    assert isinstance(answer, dict)
    if answer != {"primary": {"pid": 1}}:
        assert isinstance(answer.get("error"), str) and answer["error"]
    return answer


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(value=json_values, wrap=st.booleans())
@example(value={}, wrap=True)
@example(value=["status"], wrap=True)
@example(value="status", wrap=False)
def test_every_json_shape_gets_an_answer(control_server, value, wrap):
    message = {"cmd": value} if wrap else value
    answer = check_answer(control_server, json.dumps(message).encode() + b"\n")
    if message != {"cmd": "status"}:
        assert "error" in answer


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(line=st.binary(max_size=300))
@example(line=b"\xff\xfe{\n")
@example(line=b"[" * 4000 + b"\n")                  # deeper than Python's recursion limit
@example(line=b'{"cmd": ' * 2000 + b"\n")
def test_any_bytes_get_an_answer(control_server, line):
    check_answer(control_server, line)


# -- a real primary ---------------------------------------------------------------------------
BAD_LINES = [
    b'{"cmd": {}}\n', b'{"cmd": ["status"]}\n', b'{"cmd": null}\n', b'{"cmd": 1e999}\n',
    b'{"cmd": "reboot"}\n', b'[1, 2]\n', b'"status"\n', b"null\n", b"42\n", b"{}\n",
    b"\xff\xfe\x00garbage\n", b"not json at all\n", b"[" * 5000 + b"\n",
    b'{"cmd": "' + b"x" * 20000 + b'"}\n',          # longer than a request may be
    b"",                                            # connects and closes at once
]


def control_exchange(path, line):
    """Send ``line`` on a fresh connection; the answer line (b"" if none came)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        try:
            sock.sendall(line)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass            # answered and closed before all of it was sent: read why
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return data


def http_exchange(address, data):
    """Send raw ``data`` to the endpoint; the status line of its answer."""
    with socket.create_connection(address, timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass            # answered and closed before all of it was sent: read why
        head = b""
        while b"\r\n" not in head:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            head += chunk
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def endpoint_address(runner):
    status = runner.wait_status(lambda s: s["primary"]["endpoints"], "the endpoint")
    host, _, port = status["primary"]["endpoints"][0].rpartition(":")
    return host, int(port)


def test_bad_lines_and_requests_leave_the_primary_serving(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--health", "127.0.0.1:0")
    before = runner.wait_serving(2)
    address, health = runner.address(), endpoint_address(runner)
    for line in BAD_LINES:
        raw = control_exchange(runner.socket_path, line)
        answer = json.loads(raw) if raw else None
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str), \
            (line[:40], raw[:200], runner.output()[-2000:])
    too_long = control_exchange(runner.socket_path, BAD_LINES[13])
    assert "longer than" in json.loads(too_long)["error"]
    bad_requests = {
        b"nonsense\r\n\r\n": "HTTP/1.1 400 ",
        b"GET /\xff\xfe\x80 HTTP/1.1\r\n\r\n": "HTTP/1.1 404 ",
        b"GET /livez HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n": "HTTP/1.1 431 ",
        b"GET /livez\r\n\r\n": "HTTP/1.1 400 ",
        b"DELETE /livez HTTP/1.1\r\n\r\n": "HTTP/1.1 405 ",
        b"GET /livez HTTP/1.1\r\n": "HTTP/1.1 400 ",          # closed before the blank line
    }
    for data, expected in bad_requests.items():
        assert http_exchange(health, data).startswith(expected), (data[:40], runner.output())
    # The same primary, the same workers, all still serving.
    after = runner.status()
    assert after["primary"]["pid"] == runner.pid and runner.proc.proc.poll() is None
    assert pids_of(after) == pids_of(before)
    served = {int(request(address, "whoami").split()[1]) for _ in range(4)}
    assert served == pids_of(before)
    assert http_exchange(health, b"GET /livez HTTP/1.1\r\n\r\n") == "HTTP/1.1 200 OK"
