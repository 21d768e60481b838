"""Helpers for the fastfork.web tests: start web clusters, speak real HTTP to them.

``web_cluster`` starts ``tests/apps/web/web_cluster.py`` through the harness's
``ClusterProcess`` (its own session, killed with everything in it after the
test, whatever happened); the HTTP helpers use ``http.client`` on loopback.
"""

import http.client
import json
import os
import shutil
import socket
import tempfile
import time

import pytest

from tests.harness import ROOT, ClusterProcess
from tests.implementations import DEFAULT

WEB_CLUSTER = os.path.join(ROOT, "tests", "apps", "web", "web_cluster.py")
ASGI_APPS = ("starlette", "fastapi")
WSGI_APPS = ("flask", "django")
FRAMEWORKS = {"starlette": "starlette", "fastapi": "fastapi", "flask": "flask",
              "django": "django", "broken-lifespan": "starlette"}


def need_web_extra():
    """Skip the calling module unless the web extra is installed."""
    for module in ("uvicorn", "a2wsgi"):
        pytest.importorskip(module, reason=f"{module} is not installed: "
                                           "pip install -e '.[web,webtest]' to run the web tests")


def need_engine():
    """Skip unless the installed httptools is one the engine runs on."""
    from fastfork.engine import MIN_HTTPTOOLS, httptools_version
    found = httptools_version()
    if found is not None and found < MIN_HTTPTOOLS:
        pytest.skip(f"httptools {found} is older than the engine needs ({MIN_HTTPTOOLS})",
                    allow_module_level=True)


def need_framework(app):
    framework = FRAMEWORKS.get(app)
    if framework:
        pytest.importorskip(framework, reason=f"{framework} is not installed (the webtest extra)")


@pytest.fixture
def lifespan_dir():
    path = tempfile.mkdtemp(prefix="ffweb")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# The two HTTP paths every web test runs on: uvicorn's protocols (--http
# httptools, unless the test names its own) and fastfork's engine (--http
# engine, fastfork.engine; what --http auto picks where it can serve).
HTTP_PATHS = ("uvicorn", "engine")


def _starter(started, http=None):
    def start(*args, env=None):
        app = args[args.index("--app") + 1] if "--app" in args else "starlette"
        need_framework(app)
        if http == "engine":
            if "--http" in args:
                pytest.skip("the test names its own --http: run once, on the uvicorn path")
            need_engine()
            env = dict(env or {}, FASTFORK_TEST_HTTP="engine")
        elif http == "uvicorn":
            # auto is the engine where it can serve: name uvicorn's protocol.
            env = dict(env or {}, FASTFORK_TEST_HTTP="httptools")
        proc = ClusterProcess(args, impl=DEFAULT, env=env, script=WEB_CLUSTER)
        started.append(proc)
        return proc
    return start


@pytest.fixture(params=HTTP_PATHS)
def web_cluster(request):
    """``web_cluster("--app", "flask", ...)`` starts a cluster; all are killed after the
    test.  Each test runs twice: on uvicorn's protocols and on the engine."""
    started = []
    yield _starter(started, request.param)
    for proc in started:
        proc.close()


@pytest.fixture
def one_web_cluster():
    """``web_cluster`` for a test that chooses its own ``--http``: run once."""
    started = []
    yield _starter(started)
    for proc in started:
        proc.close()


def connect(address, timeout=10):
    return http.client.HTTPConnection(*address, timeout=timeout)


def call(conn, method, path, body=None, headers=None, encode_chunked=False):
    """One request on ``conn``; returns ``(response, body bytes)``."""
    conn.request(method, path, body=body, headers=headers or {}, encode_chunked=encode_chunked)
    response = conn.getresponse()
    return response, response.read()


def fetch(address, path):
    """``GET path`` on a fresh connection (closed after it): ``(response, body bytes)``."""
    conn = connect(address)
    try:
        return call(conn, "GET", path, headers={"Connection": "close"})
    finally:
        conn.close()


def get_json(address, path):
    """A request on a fresh connection (closed after it); the decoded JSON answer."""
    response, body = fetch(address, path)
    assert response.status == 200, (response.status, body)
    return json.loads(body)


def raw_request(address, path, keep_alive=True, timeout=10):
    """A socket with one GET sent on it (HTTP/1.1), for tests that watch the socket."""
    sock = socket.create_connection(address, timeout=timeout)
    header = "" if keep_alive else "Connection: close\r\n"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n{header}\r\n".encode())
    return sock


def read_response(sock):
    """``(head text, body bytes)`` of one response read from ``sock`` (http.client
    parses it: Content-Length or chunked)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    head = f"HTTP/1.1 {response.status} {response.reason}\r\n" + str(response.headers)
    return head, body


def read_until_closed(sock):
    """Everything the server sends until it closes (the socket's timeout bounds
    the wait: socket.timeout if it holds on)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def parse_responses(data):
    """``(answers, rest)``: ``[(status, headers, body)]`` of the whole responses
    (Content-Length or chunked) at the front of ``data``, and what follows them."""
    found = []
    while b"\r\n\r\n" in data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                if b"\r\n" not in rest:
                    return found, data
                size, _, after = rest.partition(b"\r\n")
                size = int(size, 16)
                if len(after) < size + 2:
                    return found, data
                body, rest = body + after[:size], after[size + 2:]
                if size == 0:
                    break
        else:
            length = int(headers.get(b"content-length", b"0"))
            if len(rest) < length:
                return found, data
            body, rest = rest[:length], rest[length:]
        found.append((status, headers, body))
        data = rest
    return found, data


def closed_by_peer(sock):
    """Block (up to the socket's timeout) until the server closes ``sock``."""
    return sock.recv(1) == b""


def lifespan_records(directory):
    """``{pid: [phase, ...]}`` written by the test apps' lifespans."""
    records = {}
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            records[int(name)] = [json.loads(line)["phase"] for line in f]
    return records


def made_once_still(address, timeout=15):
    """/made once it has stopped growing for half a second (or at the timeout)."""
    deadline = time.monotonic() + timeout
    last, same = None, 0
    while time.monotonic() < deadline and same < 10:
        made = get_json(address, "/made")["made"]
        same = same + 1 if made == last else 0
        last = made
        time.sleep(0.05)
    return last


def check_a_stream_waits_for_a_client_that_reads_none(address, parts=2048):
    """GET /big?n=PARTS (pep3333_app: 16 KiB parts made as asked for; 32 MiB by
    default, far more than the sockets' buffers hold) read by nobody: fewer
    than half are made (flow control: without it, every part at once), then
    all of them arrive, in order, once the client reads."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /big?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % parts)
        made = made_once_still(address)
        assert 0 < made < parts // 2, f"{made} of {parts} parts made for a client reading none"
        head, body = read_response(sock)
    assert head.startswith("HTTP/1.1 200 ")
    assert body == b"".join(bytes([i % 256]) * 16384 for i in range(parts))
