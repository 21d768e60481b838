"""The HTTP engine (``--http engine``) against real clients: one real cluster per
test (tests/apps/web/web_cluster.py, Starlette), raw sockets on loopback.

What uvicorn's protocols also do is covered by the other web tests, which
run on both paths (the ``web_cluster`` fixture); here is what the engine adds
or must get exactly right: pipelining answered in order, chunked bodies both
ways, ``Expect: 100-continue``, gunicorn's request limits (400 and 431, then
closed: a 1 MB header is refused), ``http.disconnect``, and a request the
parser cannot read is answered 400 and closed.  Every wait is on a socket
with a timeout or on a cluster event, never a sleep.
"""

import json
import socket

import pytest

from tests.web_harness import need_engine, need_web_extra, parse_responses, read_until_closed

need_web_extra()
need_engine()


@pytest.fixture
def engine(one_web_cluster):
    cluster = one_web_cluster("--app", "starlette", "--workers", "1", "--http", "engine")
    address, _ = cluster.wait_listening(1)
    return cluster, address


def recv_until(sock, marker):
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data



def responses(data):
    """``[(status, headers, body)]`` of the whole responses in ``data``, which
    holds nothing else."""
    answers, rest = parse_responses(data)
    assert rest == b"", (answers, rest)
    return answers


def test_pipelined_requests_are_answered_in_order(engine):
    _, address = engine
    with socket.create_connection(address, timeout=10) as sock:
        # /slow first: the others are parsed meanwhile and must wait their turn.
        sock.sendall(b"GET /slow?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                     b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = responses(read_until_closed(sock))
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert json.loads(answers[0][2])["slept"] == 0.3
    assert json.loads(answers[1][2])["length"] == 5
    assert json.loads(answers[2][2])["kind"] == "starlette"
    assert answers[2][1][b"connection"] == b"close"


def test_chunked_bodies_both_ways_and_keep_alive(engine):
    _, address = engine
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        data = recv_until(sock, b"}")
        (status, _, body), = responses(data)
        assert status == 200 and json.loads(body)["length"] == 11
        sock.sendall(b"GET /stream?n=3 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_until(sock, b"\r\n0\r\n\r\n")
        (status, headers, body), = responses(data)
        assert status == 200 and headers[b"transfer-encoding"] == b"chunked" and body


def test_expect_100_continue(engine):
    _, address = engine
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert recv_until(sock, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"ping")
        (status, _, body), = responses(recv_until(sock, b"}"))
        assert status == 200 and json.loads(body)["length"] == 4


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /" + b"a" * 4090 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),          # line > 4094
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", 431),     # a 1 MB field
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 8190 + b"\r\n\r\n", 431),          # field > 8190
    (b"GET / HTTP/1.1\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n", 431),             # 101 fields
    # Read two ways (Content-Length and chunked): refused, never answered.
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400),
], ids=["line", "1MB-field", "large-field", "101-fields", "CL+TE", "bad-name"])
def test_requests_over_the_limits_are_refused_and_closed(engine, request_bytes, status):
    cluster, address = engine
    with socket.create_connection(address, timeout=10) as sock:
        try:
            sock.sendall(request_bytes)
        except ConnectionResetError:
            pass          # refused and closed before the client finished sending
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:200]
    assert b"connection: close" in data
    # At the limits, not one byte less: the largest allowed is served.
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n"
                     + b"X-N: 1\r\n" * 97 + b"Connection: close\r\n\r\n")   # 100 fields
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")


def test_a_client_that_leaves_is_an_http_disconnect(engine):
    cluster, address = engine
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"GET /disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
    # The app is waiting in receive(): leave.
    sock.close()
    assert cluster.wait_event("message")["data"]["disconnected"] == "/disconnect"


def test_headers_go_out_before_a_delayed_first_body_part(engine):
    # /late-body starts its response, then waits for /release-body (asked on
    # another connection) before its body: the head must not wait with it.
    _, address = engine
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /late-body HTTP/1.1\r\nHost: x\r\n\r\n")
        head = recv_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"released" not in head
        with socket.create_connection(address, timeout=10) as other:
            other.sendall(b"GET /release-body HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_closed(other).startswith(b"HTTP/1.1 200 ")
        assert b"released" in recv_until(sock, b"released")


SMUGGLED = b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("request_bytes, status", [
    # llhttp reads no body after an Upgrade head: the body was read as a
    # second request (one request to a proxy in front, two here).
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
     b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED, 400),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n",
     400),
    # No body: answered as a plain request, and the connection ends with it
    # (what follows an Upgrade head is the other protocol's).
    (b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
     + SMUGGLED, 200),
    (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n" + SMUGGLED, 400),
], ids=["upgrade-with-length", "upgrade-chunked", "upgrade-no-body", "connect"])
def test_what_follows_an_upgrade_not_made_is_never_a_request(engine, request_bytes, status):
    _, address = engine
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request_bytes)
        (answer, headers, _), = responses(read_until_closed(sock))
    assert answer == status and headers[b"connection"] == b"close"


def test_trailer_fields_are_held_to_the_head_limits(engine):
    _, address = engine
    head = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n")
    for trailers in (b"X-Big: " + b"a" * (1 << 20) + b"\r\n\r\n",       # a 1 MB field
                     b"X-N: 1\r\n" * 101 + b"\r\n"):                   # 101 fields
        with socket.create_connection(address, timeout=10) as sock:
            try:
                sock.sendall(head + trailers)
                data = read_until_closed(sock)
            except (BrokenPipeError, ConnectionResetError):
                data = b""    # cut before the client finished sending
        # The app was reading the body: the connection is cut, never answered 200.
        assert data == b"" or data.startswith(b"HTTP/1.1 431 "), data[:200]
    # Within the limits, trailers are read (and left out of the scope).
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head + b"X-N: 1\r\n" * 100 + b"\r\n"
                     + b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        (status, _, body), (then, _, _) = responses(read_until_closed(sock))
    assert status == 200 and json.loads(body)["length"] == 5 and then == 200


def test_an_answer_before_the_body_ends_reads_the_rest_and_keeps_the_connection(
        one_web_cluster):
    # A WSGI app that sleeps, then answers without reading its 8 MB body
    # (past --wsgi-body-buffer: streamed to the pool by the adapter).  The
    # engine had stopped reading at 64 KiB meanwhile and never read again:
    # the client's upload stalled for good.
    cluster = one_web_cluster("--app", "pep3333", "--workers", "1", "--http", "engine",
                              "--threads", "2", "--body-buffer", "65536")
    address, _ = cluster.wait_listening(1)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"POST /sleep?s=0.3 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % (8 << 20) + b"x" * (8 << 20))
        sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = responses(read_until_closed(sock))
    assert [status for status, _, _ in answers] == [200, 200]
    assert json.loads(answers[1][2])["kind"] == "pep3333"


@pytest.mark.parametrize("keep_alive", ["0", "1"])
def test_the_keep_alive_time_bounds_idle_and_unfinished_bodies(one_web_cluster, keep_alive):
    cluster = one_web_cluster("--app", "starlette", "--workers", "1", "--http", "engine",
                              "--timeout-keep-alive", keep_alive)
    address, _ = cluster.wait_listening(1)
    with socket.create_connection(address, timeout=10) as sock:
        if keep_alive == "0":
            # No connection is kept: it said so, and closed (an idle one stayed open).
            sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
            (status, headers, _), = responses(read_until_closed(sock))
            assert status == 200 and headers[b"connection"] == b"close"
        else:
            # Answered with 1 KB of its 1 MB body sent, then nothing: closed
            # once the keep-alive time passes without a byte of the rest.
            sock.sendall(b"POST /whoami HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                         % (1 << 20) + b"x" * 1024)
            (status, _, _), = responses(read_until_closed(sock))
            assert status == 405


def test_a_fragment_in_the_target_is_cut_off(engine):
    # As httptools' URL parser (uvicorn's protocol) reads it: "/whoami#x" is
    # /whoami, not a path of its own.
    _, address = engine
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /whoami#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        (status, _, body), = responses(read_until_closed(sock))
    assert status == 200 and json.loads(body)["kind"] == "starlette"
