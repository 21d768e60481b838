"""fastfork.web's WSGI response path: PEP 3333's corners through real sockets, and
the flow control between a pool thread and the loop.

The bare app (tests/apps/web/pep3333_app.py) runs in a real cluster of one
worker, so /release reaches the worker that holds /hold; each such test runs
on both paths (the engine's own pool, and uvicorn's protocol with the WSGI
adapter).  The last tests drive the adapter's ``_Exchange`` on a real loop
and a real thread pool, with a ``send`` the test holds back the way a slow
client holds back uvicorn's.
"""

import asyncio
import hashlib
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.harness import wait_until
from tests.web_harness import (call, check_a_stream_waits_for_a_client_that_reads_none,
                               connect, fetch, get_json, need_web_extra, read_response,
                               read_until_closed)

need_web_extra()


@pytest.fixture
def bare(web_cluster):
    cluster = web_cluster("--app", "pep3333", "--workers", "1")
    address, listening = cluster.wait_listening(1)
    return cluster, address, listening[0]["pid"]



def test_start_response_again_with_exc_info_replaces_the_unsent_start(bare):
    cluster, address, _ = bare
    response, body = fetch(address, "/replace-start")
    assert (response.status, body) == (500, b"replaced")


def test_an_error_after_the_headers_drops_the_connection_and_the_worker_lives(bare):
    cluster, address, pid = bare
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /error-after-body HTTP/1.1\r\nHost: t\r\n\r\n")
        data = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"partial" in body
    assert not body.endswith(b"0\r\n\r\n"), "a failed response must not look complete"
    assert get_json(address, "/whoami")["pid"] == pid


def test_write_callable_and_close(bare):
    cluster, address, _ = bare
    before = get_json(address, "/closed")["closed"]
    response, body = fetch(address, "/write")
    assert (response.status, body) == (200, b"one,two,three")
    assert get_json(address, "/closed")["closed"] == before + 1


def test_no_start_response_is_a_500(bare):
    cluster, address, pid = bare
    response, _ = fetch(address, "/no-start")
    assert response.status == 500
    assert get_json(address, "/whoami")["pid"] == pid


@pytest.mark.parametrize("kind", ["crlf", "name", "latin1"])
def test_a_header_that_cannot_be_sent_is_a_500_and_nothing_forged(bare, kind):
    cluster, address, pid = bare
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(f"GET /bad-header?h={kind} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head, body = read_response(sock)
    assert head.startswith("HTTP/1.1 500 "), head
    assert "x-forged" not in head.lower() and "x-note" not in head.lower(), head
    assert body != b"must not be sent"
    assert get_json(address, "/whoami")["pid"] == pid


def test_each_part_reaches_the_client_before_the_next_is_made(bare):
    cluster, address, _ = bare
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while b"first\n" not in data:     # times out (fails) if the part is held back
            piece = sock.recv(65536)
            assert piece, "the server closed before the first part"
            data += piece
        assert b"second" not in data
        assert get_json(address, "/release") == {"released": True}
        while not data.endswith(b"0\r\n\r\n"):
            piece = sock.recv(65536)
            assert piece, "the server closed before the end"
            data += piece
    assert b"second\n" in data


def test_a_streaming_call_waits_for_a_client_that_does_not_read(bare):
    _, address, _ = bare
    check_a_stream_waits_for_a_client_that_reads_none(address)


def test_a_client_that_leaves_mid_stream_ends_the_call(bare):
    cluster, address, pid = bare
    before = get_json(address, "/closed")["closed"]
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
        received = 0
        while received < 1 << 20:
            received += len(sock.recv(65536))
    wait_until(lambda: get_json(address, "/closed")["closed"] == before + 1, 10,
               "the endless response's close() after its client left")
    assert get_json(address, "/whoami")["pid"] == pid


def test_a_client_that_leaves_mid_stream_ends_a_call_that_did_not_read_its_body(
        web_cluster):
    # On the adapter (a body past --body-buffer): the call streamed on for
    # ever, a thread spinning, once its client left without the app having
    # read the body (only a client gone after the body was read was seen).
    cluster = web_cluster("--app", "pep3333", "--workers", "1", "--body-buffer", "1024")
    address, _ = cluster.wait_listening(1)
    before = get_json(address, "/closed")["closed"]
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /endless HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n"
                     + b"b" * 2000)
        received = 0
        while received < 1 << 20:
            received += len(sock.recv(65536))
    wait_until(lambda: get_json(address, "/closed")["closed"] == before + 1, 10,
               "the endless response's close() after its client left")


def test_a_call_that_reads_its_body_after_its_first_part_gets_it_whole(web_cluster):
    # The watch for the client leaving reads the body as it comes once the
    # response streams: what it reads is kept for the app.
    cluster = web_cluster("--app", "pep3333", "--workers", "1", "--body-buffer", "1024")
    address, _ = cluster.wait_listening(1)
    conn = connect(address)
    try:
        for size in (2000, 50_000):
            response, answer = call(conn, "POST", "/stream-then-read", body=b"y" * size)
            assert (response.status, answer) == (200, b"first\n%d\n" % size)
    finally:
        conn.close()


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_a_body_cut_short_by_the_client_leaving_is_an_error_to_the_app(web_cluster, framing):
    # The app read 49,000 bytes of a chunked body whose client then left as
    # a whole body: a2wsgi's input ends at http.disconnect as at the end.
    cluster = web_cluster("--app", "pep3333", "--workers", "1", "--body-buffer", "1024")
    address, _ = cluster.wait_listening(1)
    sent = b"x" * 7000
    with socket.create_connection(address, timeout=10) as sock:
        if framing == "chunked":
            sock.sendall(b"POST /read-body HTTP/1.1\r\nHost: t\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n"
                         + b"%x\r\n%s\r\n" % (len(sent), sent) * 7)
        else:
            sock.sendall(b"POST /read-body HTTP/1.1\r\nHost: t\r\n"
                         b"Content-Length: 100000\r\n\r\n" + sent * 7)
        wait_until(lambda: get_json(address, "/last-read").get("reading"), 10,
                   "the app reading the body")
    last = {}

    def read_ended():
        last.update(get_json(address, "/last-read"))
        return not last["reading"]
    wait_until(read_ended, 10, "the app's read to end")
    assert last["raised"] == "ClientDisconnected", last


def test_a_body_too_large_to_read_first_is_streamed_to_the_app(web_cluster):
    # Past --body-buffer (or chunked), the request is not read whole before
    # the call: the app reads it as it arrives (the engine gives it to the
    # WSGI adapter); a small one is read first.
    cluster = web_cluster("--app", "flask", "--workers", "1", "--body-buffer", "1024")
    address, _ = cluster.wait_listening(1)
    conn = connect(address)
    try:
        for size in (0, 1000, 200_000):
            body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            response, answer = call(conn, "POST", "/echo", body=body)
            assert response.status == 200
            assert json.loads(answer) == {"length": size,
                                          "sha256": hashlib.sha256(body).hexdigest()}
        pieces = [b"a" * 5000, b"b" * 70000]
        response, answer = call(conn, "POST", "/echo", body=iter(pieces), encode_chunked=True)
        assert response.status == 200
        assert json.loads(answer)["length"] == 75000
    finally:
        conn.close()


def run_exchange(app, send):
    """Run ``app`` through an ``_Exchange`` on a fresh loop and a one-thread pool."""
    from fastfork.web import wsgi

    pool = ThreadPoolExecutor(1)

    async def main():
        exchange = wsgi._Exchange()
        pool.submit(exchange.call, app, {})
        await asyncio.wait_for(exchange.pump(send), 10)

    try:
        asyncio.run(main())
    finally:
        pool.shutdown(wait=True)


def test_a_streaming_thread_waits_while_the_client_does_not_read():
    from fastfork.web.wsgi import HIGH_WATER

    part = 16384
    made, sent = [], []
    loop_holds = {}

    def app(environ, start_response):
        start_response("200 OK", [])
        for i in range(100):
            made.append(i)
            yield bytes([i]) * part

    async def send(message):
        if message["type"] == "http.response.body" and "gate" not in loop_holds:
            # The client reads nothing until the thread had every chance to run ahead.
            loop_holds["gate"] = True
            for _ in range(500):
                if len(made) > HIGH_WATER // part:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            loop_holds["made while held"] = len(made)
        sent.append(message)

    run_exchange(app, send)
    # Past HIGH_WATER queued, the thread waits: one part over the line, no more.
    assert loop_holds["made while held"] == HIGH_WATER // part + 1
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert b"".join(m["body"] for m in bodies) == b"".join(bytes([i]) * part for i in range(100))
    # The last part says it is the last, or (when the thread's end came after the
    # loop had sent it) an empty part after it does.
    assert [m["more_body"] for m in bodies] == [True] * (len(bodies) - 1) + [False]
    assert len(bodies) == 100 or (len(bodies) == 101 and bodies[-1]["body"] == b"")
    assert sent[0] == {"type": "http.response.start", "status": 200, "headers": []}


def test_a_failed_send_stops_the_thread_and_closes_the_iterable():
    closed = threading.Event()

    class Endless:
        def __iter__(self):
            while True:
                yield b"x" * 65536

        def close(self):
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [])
        return Endless()

    async def send(message):
        if message["type"] == "http.response.body":
            raise OSError("the client went away")

    with pytest.raises(OSError, match="went away"):
        run_exchange(app, send)
    assert closed.wait(10), "the WSGI iterable was not closed"


def test_the_part_that_completes_the_content_length_is_the_last():
    # The client has every promised byte once that part is out, and may close:
    # the part itself must complete the response (uvicorn counts it then), not
    # an empty one sent after the iterable ends, which may find the client gone.
    last_sent = threading.Event()
    sent = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "10")])
        yield b"0123456789"
        last_sent.wait(5)       # the iterable ends only after the loop sent the part

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            last_sent.set()

    run_exchange(app, send)
    assert [m.get("more_body") for m in sent[1:]] == [False]
    assert sent[1]["body"] == b"0123456789"


@pytest.mark.parametrize("app", ["flask", "pep3333"])
def test_every_answer_is_counted_when_clients_close_at_once(web_cluster, app):
    # Each client closes as soon as it has the bytes the Content-Length promised.
    cluster = web_cluster("--app", app, "--workers", "1")
    address, _ = cluster.wait_listening(1)
    path = "/whoami"
    for _ in range(200):
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            while len(body) < length:
                body += sock.recv(65536)
    counted = get_json(address, "/requests" if app == "flask" else "/requests-served")
    assert counted == {"requests": 200}
