"""WSGI apps called by the engine on the loop thread (``--http engine --threads 0``):
PEP 3333's corners (tests/apps/web/pep3333_app.py) and Flask, through real
clusters of one worker and real sockets.  The threaded path, which the
engine also serves (the ``web_cluster`` fixture runs every web test on it),
is in test_wsgi_responses.py; /hold is not tried here: on the loop thread a
call that waits for another request waits for ever, which is why the pool
stays the default.
"""

import json
import socket

import pytest

from tests.web_harness import (call, check_a_stream_waits_for_a_client_that_reads_none,
                               connect, fetch, get_json, need_engine, need_web_extra,
                               parse_responses, raw_request, read_response, read_until_closed)

need_web_extra()
need_engine()

ON_LOOP = ("--http", "engine", "--threads", "0", "--workers", "1")
BODY_LIMIT = 1 << 20          # fastfork.web's default body_buffer


@pytest.fixture
def bare(one_web_cluster):
    cluster = one_web_cluster("--app", "pep3333", *ON_LOOP)
    address, listening = cluster.wait_listening(1)
    return address, listening[0]["pid"]


@pytest.fixture
def flask(one_web_cluster):
    cluster = one_web_cluster("--app", "flask", *ON_LOOP)
    address, _ = cluster.wait_listening(1)
    return address



def test_pep3333_corners_on_the_loop(bare):
    address, pid = bare
    assert fetch(address, "/replace-start")[0].status == 500
    assert fetch(address, "/replace-start")[1] == b"replaced"
    before = get_json(address, "/closed")["closed"]
    response, body = fetch(address, "/write")
    assert (response.status, body) == (200, b"one,two,three")
    assert get_json(address, "/closed")["closed"] == before + 1
    assert fetch(address, "/no-start")[0].status == 500
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /error-after-body HTTP/1.1\r\nHost: t\r\n\r\n")
        head, _, body = read_until_closed(sock).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"partial" in body
    assert not body.endswith(b"0\r\n\r\n"), "a failed response must not look complete"
    assert get_json(address, "/whoami")["pid"] == pid       # the worker lives on


def test_flask_bodies_keep_alive_and_the_body_limit(flask):
    address = flask
    conn = connect(address)
    try:
        for body, chunked in ((b"x" * 100_000, False), (b"y" * 70_000, True), (b"", False)):
            response, answer = call(conn, "POST", "/echo", body=iter([body]) if chunked else body,
                                    headers={"Content-Type": "application/octet-stream"},
                                    encode_chunked=chunked)
            assert response.status == 200 and json.loads(answer)["length"] == len(body)
        response, answer = call(conn, "GET", "/whoami")
        assert json.loads(answer)["kind"] == "flask"
    finally:
        conn.close()
    # Read whole before the call, so bounded: one byte past the limit is a 413.
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                     % (BODY_LIMIT + 1))
        try:
            sock.sendall(b"z" * (BODY_LIMIT + 1))
        except ConnectionResetError:
            pass
        assert read_until_closed(sock).startswith(b"HTTP/1.1 413 ")


def test_the_answers_of_one_pass_are_written_whole_in_order_and_closed_after(one_web_cluster):
    """On the loop thread the engine corks a pass's answers (writes them together
    at its end).  Requests made ready together, by blocking the loop while
    they arrive, are read in one pass: each connection gets its pipelined
    answers whole and in order, and one that asked to close is closed after
    them; a request too long to read is refused in the same pass, and a
    response larger than the high-water mark arrives whole."""
    cluster = one_web_cluster("--app", "flask", *ON_LOOP)
    address, _ = cluster.wait_listening(1)
    socks = [socket.create_connection(address, timeout=10) for _ in range(6)]
    try:
        for sock in socks:                    # attached and idle before the loop blocks
            sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(sock)[0].startswith("HTTP/1.1 200 ")
        blocker = raw_request(address, "/block?s=0.5")
        try:
            assert cluster.wait_event("message")["data"]["blocking"] == "loop"
            for i, sock in enumerate(socks):
                last = b"Connection: close\r\n" if i % 2 else b""
                sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n"
                             b"GET /client HTTP/1.1\r\nHost: t\r\n%s\r\n" % last)
            # Larger than the engine's high-water mark: written as it grows.
            socks[0].sendall(b"GET /stream?n=12000 HTTP/1.1\r\nHost: t\r\n\r\n")
            refused = socket.create_connection(address, timeout=10)
            refused.sendall(b"GET /" + b"x" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            assert read_response(blocker)[0].startswith("HTTP/1.1 200 ")
        finally:
            blocker.close()
        for i, sock in enumerate(socks):
            if i % 2:
                answers, rest = parse_responses(read_until_closed(sock))
            else:
                data = b""
                while len(parse_responses(data)[0]) < (3 if i == 0 else 2):
                    chunk = sock.recv(65536)
                    assert chunk, f"connection {i} closed before its answers: {data!r}"
                    data += chunk
                answers, rest = parse_responses(data)
            if i == 0:
                stream = answers.pop()
                assert stream[0] == 200
                assert stream[2] == b"".join(b"chunk %d\n" % n for n in range(12000))
            assert rest == b"" and [status for status, _, _ in answers] == [200, 200]
            assert json.loads(answers[0][2])["kind"] == "flask"
            assert json.loads(answers[1][2])["port"] == sock.getsockname()[1]
        with refused:
            assert read_until_closed(refused).startswith(b"HTTP/1.1 400 ")
    finally:
        for sock in socks:
            sock.close()


def test_threads_0_needs_the_engine():
    import fastfork.web

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    # Refused before anything is served (and before the worker-only check).
    with pytest.raises(ValueError, match="needs the engine, not http='httptools'"):
        fastfork.web.prepare(app, "127.0.0.1:0", threads=0, http="httptools")
    # auto is the engine here: past that check, to the worker-only one.
    with pytest.raises(RuntimeError, match="serves from a fastfork worker"):
        fastfork.web.prepare(app, "127.0.0.1:0", threads=0)


def test_threads_0_says_why_auto_cannot_pick_the_engine(monkeypatch):
    import fastfork.web

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    monkeypatch.setenv("FASTFORK_NO_EXTENSIONS", "1")
    with pytest.raises(ValueError, match="which cannot serve here: FASTFORK_NO_EXTENSIONS"):
        fastfork.web.prepare(app, "127.0.0.1:0", threads=0)


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-proxy", "untrusted-peer"])
def test_proxy_headers_reach_a_wsgi_app_on_the_loop(one_web_cluster, trusted):
    # uvicorn's rules, as on every other path: X-Forwarded-For/-Proto count
    # only from a peer in forwarded_allow_ips (here from uvicorn's own
    # FORWARDED_ALLOW_IPS; 127.0.0.1 when it is not set).
    env = None if trusted else {"FORWARDED_ALLOW_IPS": "192.0.2.1"}
    cluster = one_web_cluster("--app", "flask", *ON_LOOP, env=env)
    address, _ = cluster.wait_listening(1)
    forwarded = {"X-Forwarded-For": "203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "https"}
    conn = connect(address)
    try:
        _, client = call(conn, "GET", "/client", headers=forwarded)
        _, scheme = call(conn, "GET", "/scheme", headers=forwarded)
        _, plain = call(conn, "GET", "/client")
    finally:
        conn.close()
    client, scheme, plain = json.loads(client), json.loads(scheme), json.loads(plain)
    if trusted:
        assert (client["host"], scheme["scheme"]) == ("203.0.113.9", "https")
    else:
        assert (client["host"], scheme["scheme"]) == ("127.0.0.1", "http")
    assert plain["host"] == "127.0.0.1" and plain["port"] > 0


@pytest.mark.parametrize("target, path, query", [
    (b"/target/a?x=1#frag", "/target/a", "x=1"),
    (b"/target/a#frag?x=1", "/target/a", ""),            # the query is in the fragment
    (b"/target/a%23frag", "/target/a#frag", ""),         # an escaped "#" is the path's
    (b"http://x/target/a#frag?x=1", "/target/a", ""),
])
def test_the_request_target_is_read_as_httptools_reads_it(bare, target, path, query):
    address, _ = bare
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        (status, _, body), = parse_responses(read_until_closed(sock))[0]
    assert status == 200 and json.loads(body) == {"path": path, "query": query}


def test_an_absolute_target_without_a_path_is_the_root(bare):
    address, _ = bare
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET http://x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        (status, _, body), = parse_responses(read_until_closed(sock))[0]
    assert (status, body) == (404, b"not found: /")      # PATH_INFO "/", not ""


def test_a_streamed_response_waits_for_a_client_that_does_not_read(bare):
    # On the loop thread the whole response was iterated at once, into memory,
    # for a client that reads none of it.
    address, _ = bare
    check_a_stream_waits_for_a_client_that_reads_none(address)


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_a_body_in_tiny_chunks_costs_its_size(bare):
    # Read whole before the call: each 2-byte chunk was kept as an object of
    # its own, some 25 times its size (1 MB of body: 28 MB of the worker's).
    address, pid = bare
    clients, chunks = 4, 1 << 16              # 128 KiB each, in 2-byte chunks
    before = peak_rss_kib(pid)
    socks = [socket.create_connection(address, timeout=30) for _ in range(clients)]
    try:
        for sock in socks:
            sock.sendall(b"POST /target HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"2\r\nab\r\n" * chunks)
        for sock in socks:                     # all held at once, then each ends
            sock.sendall(b"0\r\n\r\nGET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        for sock in socks:
            answers, rest = parse_responses(read_until_closed(sock))
            assert [status for status, _, _ in answers] == [200, 200] and rest == b""
    finally:
        for sock in socks:
            sock.close()
    grown = peak_rss_kib(pid) - before
    assert grown < 8 * 1024, f"{grown} KiB more at the peak for {clients * 2 * chunks} bytes"
