"""fastfork.web serving real apps: real clusters, real sockets on loopback, real clients.

Each app (Starlette, FastAPI, Flask, Django) under each policy; keep-alive,
chunked bodies both ways, a large upload, a trickling client, WebSockets,
the HTTP/loop choices, the access log and the request counter.  Stopping
and failing are in test_web_lifecycle.py; detect() in test_web_detect.py.
"""

import hashlib
import json
import os
import re
import signal
import socket
import struct

import pytest

from tests.harness import fd_count, wait_until
from tests.web_harness import (ASGI_APPS, WSGI_APPS, call, connect, get_json, need_engine,
                               need_web_extra, raw_request, read_response, read_until_closed)

need_web_extra()
UPGRADE_HEAD = (b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")

WORKERS = 2


def body_digest(data):
    return {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def pids_seen_while_one_is_blocked(cluster, address):
    """Under ``none`` the workers race to accept and one can win every time: block
    the loop of whichever takes /block, then the other must take the next ones."""
    assert WORKERS == 2
    blocker = raw_request(address, "/block?s=1.5")
    try:
        blocked = cluster.wait_event("message")["data"]
        assert blocked["blocking"] == "loop"
        seen = {}
        for _ in range(3):
            who = get_json(address, "/whoami")
            assert who["id"] != blocked["id"], "a blocked worker accepted a connection"
            seen[who["pid"]] = who
        _, body = read_response(blocker)
        who = json.loads(body)
        assert who["id"] == blocked["id"]
        seen[who["pid"]] = who
    finally:
        blocker.close()
    return seen


def pids_seen(address, want, attempts=200):
    """New connections until every worker in ``want`` answered (reuseport leaves the
    choice to the kernel's hash of the client port, so keep asking, bounded)."""
    seen = {}
    for _ in range(attempts):
        who = get_json(address, "/whoami")
        seen[who["pid"]] = who
        if set(seen) == want:
            break
    return seen


@pytest.mark.parametrize("policy", ["rr", "none", "reuseport"])
@pytest.mark.parametrize("app", ASGI_APPS + WSGI_APPS)
def test_app_serves_http_under_every_policy(web_cluster, app, policy):
    cluster = web_cluster("--app", app, "--policy", policy, "--workers", str(WORKERS))
    address, listening = cluster.wait_listening(WORKERS)
    pids = {event["pid"] for event in listening}

    if policy == "none":
        seen = pids_seen_while_one_is_blocked(cluster, address)
    else:
        seen = pids_seen(address, pids)
    assert set(seen) == pids
    assert {who["kind"] for who in seen.values()} == {app}
    assert sorted(who["index"] for who in seen.values()) == list(range(WORKERS))

    conn = connect(address)
    try:
        # Keep-alive: several requests on one connection, all served by one worker.
        answers, sockets = [], []
        for _ in range(3):
            response, body = call(conn, "GET", "/whoami")
            assert response.status == 200
            answers.append(json.loads(body)["pid"])
            sockets.append(conn.sock)   # http.client would reconnect if the server closed
        local = sockets[0]
        assert local is not None and sockets == [local] * 3
        assert len(set(answers)) == 1 and answers[0] in pids

        # TCP_NODELAY on the worker's end, as uvicorn's transports set it:
        # without it a response written in parts waits for the client's
        # delayed ACK (40 ms) before each part after the first.
        response, body = call(conn, "GET", "/nodelay")
        assert response.status == 200
        options = json.loads(body)
        assert options["nodelay"] is True and options["connections"] >= 1

        # A chunked request body (no Content-Length), read by the app as it arrives.
        pieces = [bytes([i]) * 8192 for i in range(40)]
        response, body = call(conn, "POST", "/echo", body=iter(pieces),
                              headers={"Content-Type": "application/octet-stream"},
                              encode_chunked=True)
        assert response.status == 200
        assert json.loads(body) == body_digest(b"".join(pieces))

        # A large upload with Content-Length, on the same connection.
        large = os.urandom(6 * 1024 * 1024)
        response, body = call(conn, "POST", "/echo", body=large,
                              headers={"Content-Type": "application/octet-stream"})
        assert response.status == 200
        assert json.loads(body) == body_digest(large)

        # A streamed response goes out chunked.
        response, body = call(conn, "GET", "/stream?n=50")
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert body == b"".join(f"chunk {i}\n".encode() for i in range(50))
        assert conn.sock is local
    finally:
        conn.close()

    # The access log names the worker that answered each request.
    who = seen[answers[0]]
    line = re.compile(rf"worker {who['id']} \(index {who['index']}, pid {who['pid']}\): "
                      rf'127\.0\.0\.1:\d+ - "GET /whoami HTTP/1\.1" 200')
    wait_until(lambda: line.search(cluster.output()), 10, f"an access log line for {who}")


def test_request_counter_counts_requests_not_connections(web_cluster):
    cluster = web_cluster("--app", "starlette", "--workers", "1")
    address, _ = cluster.wait_listening(1)
    conn = connect(address)
    try:
        for _ in range(5):
            response, _ = call(conn, "GET", "/whoami")
            assert response.status == 200
        response, body = call(conn, "GET", "/requests")
        # Five answered before this one, all on one connection.
        assert json.loads(body) == {"requests": 5}
    finally:
        conn.close()
    assert get_json(address, "/requests") == {"requests": 6}


def test_a_trickling_client_does_not_block_the_others(web_cluster):
    # One worker, so the slow client and the others share its loop.
    cluster = web_cluster("--app", "starlette", "--workers", "1")
    address, _ = cluster.wait_listening(1)
    slow = socket.create_connection(address, timeout=10)
    try:
        slow.sendall(b"GET /whoami HTTP/1.1\r\nHo")       # half a request head
        for _ in range(5):
            assert get_json(address, "/whoami")["kind"] == "starlette"
        slow.sendall(b"st: test\r\n")
        assert get_json(address, "/whoami")["kind"] == "starlette"
        slow.sendall(b"\r\n")                             # the head is complete now
        head, body = read_response(slow)
        assert head.startswith("HTTP/1.1 200")
        assert json.loads(body)["kind"] == "starlette"
    finally:
        slow.close()


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_websocket_echo_through_fastapi(web_cluster, policy):
    client = pytest.importorskip("websockets.sync.client",
                                 reason="the websockets package is not installed")
    from websockets.exceptions import ConnectionClosed
    cluster = web_cluster("--app", "fastapi", "--policy", policy, "--workers", str(WORKERS),
                          "--graceful-timeout", "20")
    (host, port), listening = cluster.wait_listening(WORKERS)
    ids = {event["id"] for event in listening}
    with client.connect(f"ws://{host}:{port}/ws", open_timeout=10) as ws:
        hello = ws.recv(timeout=10)
        assert re.fullmatch(r"hello from worker (\d+)", hello)
        assert int(hello.split()[-1]) in ids
        for text in ("ping", "a longer message " * 100):
            ws.send(text)
            assert ws.recv(timeout=10) == "echo: " + text
    # Closed WebSockets are not counted as open: the stop does not wait for them
    # (it would wait the whole 20 s graceful timeout if it did).
    with client.connect(f"ws://{host}:{port}/ws", open_timeout=10) as still_open:
        still_open.recv(timeout=10)
        cluster.signal(signal.SIGTERM)
        # An open one is closed by the server with 1012 (service restart).
        with pytest.raises(ConnectionClosed) as closed:
            still_open.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert cluster.wait_exit(8) == 0


def test_an_upgrade_after_a_large_answer_follows_all_of_it(web_cluster):
    # The engine handed the connection over while the answer before the
    # upgrade was still partly unsent: 4.4 of its 8 MiB were lost and the 101
    # went out inside its body.
    pytest.importorskip("websockets", reason="the websockets package is not installed")
    cluster = web_cluster("--app", "fastapi", "--workers", "1")
    address, _ = cluster.wait_listening(1)
    size = 8 << 20
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /big?mb=8 HTTP/1.1\r\nHost: t\r\n\r\n")
        received = sock.recv(65536)       # the app has answered: its upgrade may come
        sock.sendall(UPGRADE_HEAD)
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 8388608" in head.lower()
        while len(rest) < size + 12:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {len(rest)} bytes of the body and what follows"
            rest += chunk
    assert rest[:size].count(b"x") == size, "the answer's body is not whole"
    assert rest[size:size + 12] == b"HTTP/1.1 101"


def test_an_upgrade_in_the_stop_s_grace_is_shut_down_too(web_cluster):
    # An idle keep-alive connection may send one more request in the stop's
    # grace; an upgrade then made a WebSocket that nothing closed: the worker
    # was killed at the graceful timeout, its lifespan shutdown never run.
    cluster = web_cluster("--app", "fastapi", "--workers", "1", "--graceful-timeout", "20")
    address, _ = cluster.wait_listening(1)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /on-stop HTTP/1.1\r\nHost: t\r\n\r\n")
        head, _ = read_response(sock)
        assert head.startswith("HTTP/1.1 200")
        cluster.signal(signal.SIGTERM)
        assert cluster.wait_event("message")["data"]["stopping"] is True
        sock.sendall(UPGRADE_HEAD)
        answer = read_until_closed(sock)
    # uvicorn's answer to a WebSocket shut down mid-handshake (a 500), or a
    # close frame (1012: service restart) if it was accepted first.
    assert answer.startswith(b"HTTP/1.1 500") or (
        answer.startswith(b"HTTP/1.1 101") and b"\x88\x02\x03\xf4" in answer), answer[:200]
    assert cluster.wait_exit(10) == 0


def test_clients_gone_right_after_an_upgrade_head_log_no_traceback(one_web_cluster):
    # Each client that sent an upgrade head and closed at once (FIN or RST)
    # cost a traceback in the log ("Exception in ASGI application") on the
    # engine with uvloop: the handed-over transport saw the end before the
    # app's first step, and uvicorn skipped its accept.  The worker's loop
    # is blocked meanwhile, so that every end is there before the engine
    # reads the head.  (The engine only: uvicorn 0.30's own protocol logs
    # one for such a client too.)
    need_engine()
    cluster = one_web_cluster("--app", "fastapi", "--workers", "1", "--loop", "uvloop",
                              "--http", "engine")
    address, listening = cluster.wait_listening(1)
    pid = listening[0]["pid"]
    before = fd_count(pid)
    with socket.create_connection(address, timeout=10) as blocker:
        blocker.sendall(b"GET /block?s=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert cluster.wait_event("message")["data"]["blocking"] == "loop"
        for i in range(20):
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(UPGRADE_HEAD)
            if i % 2:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        head, _ = read_response(blocker)
        assert head.startswith("HTTP/1.1 200")
    wait_until(lambda: fd_count(pid) <= before, 10, "the worker to close them all")
    cluster.signal(signal.SIGTERM)
    assert cluster.wait_exit(10) == 0
    assert "Exception in ASGI application" not in cluster.output()


def test_h11_wsproto_and_uvloop(web_cluster):
    pytest.importorskip("uvloop", reason="uvloop is not installed")
    pytest.importorskip("wsproto", reason="wsproto is not installed")
    client = pytest.importorskip("websockets.sync.client",
                                 reason="the websockets package is not installed")
    cluster = web_cluster("--app", "fastapi", "--workers", "1", "--http", "h11",
                          "--ws", "wsproto", "--loop", "uvloop")
    (host, port), _ = cluster.wait_listening(1)
    assert get_json((host, port), "/runtime") == {
        "loop": "uvloop", "http": "H11Protocol", "ws": "WSProtocol"}
    conn = connect((host, port))
    try:
        pieces = [b"x" * 1000] * 20
        response, body = call(conn, "POST", "/echo", body=iter(pieces), encode_chunked=True)
        assert json.loads(body) == body_digest(b"".join(pieces))
        response, body = call(conn, "GET", "/stream?n=3")
        assert response.getheader("Transfer-Encoding") == "chunked"
    finally:
        conn.close()
    with client.connect(f"ws://{host}:{port}/ws", open_timeout=10) as ws:
        ws.recv(timeout=10)
        ws.send("over wsproto")
        assert ws.recv(timeout=10) == "echo: over wsproto"
    cluster.signal(signal.SIGTERM)
    assert cluster.wait_exit(10) == 0
