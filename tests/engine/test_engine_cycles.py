"""A connection the engine has closed is freed by reference counting, not left
to the garbage collector.

The engine's objects point at each other while a connection lives (the
parser holds the connection's callbacks, a request holds its connection and
the connection its requests); each link must be cut when the connection
ends, or every connection leaves a cycle behind for a collection (as one
hook did on uvicorn's path, see ``tests/web/test_no_cycles.py``).  Each test
serves real requests over socketpairs with the collector off, waits until
the engine holds no connection, and then counts the engine's objects still
alive: there must be none.
"""

import asyncio
import gc
import socket

import pytest

pytest.importorskip("httptools", reason="the web extra is not installed")

from fastfork import loops
from fastfork.engine import load
from tests.engine.parts import Owner, read_body
from tests.web_harness import need_engine, parse_responses

need_engine()
engine_module = load()
ENGINE_TYPES = ("HttpConn", "AsgiExchange")


async def asgi_app(scope, receive, send):
    if scope["path"] == "/wait-for-disconnect":
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    body = await read_body(receive)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


def alive():
    """The engine's per-connection objects still in memory."""
    return [obj for obj in gc.get_objects()
            if type(obj).__module__ == engine_module.__name__
            and type(obj).__name__ in ENGINE_TYPES]


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def read_answers(loop, client, want):
    data = b""
    while len(parse_responses(data)[0]) < want:
        chunk = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
        if not chunk:
            break
        data += chunk
    return [status for status, _, _ in parse_responses(data)[0]]


POST = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
CLOSE = b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
BAD = b"GET /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
WAIT = b"GET /wait-for-disconnect HTTP/1.1\r\nHost: t\r\n\r\n"

# (what the client sends, the statuses it reads before it hangs up)
CASES = {
    "keep-alive, pipelined": (POST + CHUNKED + POST, [200, 200, 200]),
    "connection: close": (CLOSE, [200]),
    "refused (two lengths)": (BAD, [400]),
    "client gone mid-request": (WAIT, []),
}


# How the app is called: ASGI, WSGI on the loop thread, WSGI on the engine's
# pool.  A WSGI app is called with its whole request and answers at once: it
# is never waiting when the client leaves.
MODES = {"asgi": {}, "wsgi-loop": {"wsgi_app": wsgi_app},
         "wsgi-pool": {"wsgi_app": wsgi_app, "wsgi_threads": 2}}
RUNS = [(case, mode) for mode in MODES for case in CASES
        if mode == "asgi" or case != "client gone mid-request"]


@pytest.mark.parametrize("case, mode", RUNS, ids=[f"{case}-{mode}" for case, mode in RUNS])
def test_a_closed_connection_leaves_nothing_for_the_collector(no_gc, case, mode):
    sent, statuses = CASES[case]

    async def main():
        loop = asyncio.get_running_loop()
        engine = engine_module.Engine(loop, asgi_app, {}, keep_alive=5, head_timeout=5,
                                      **MODES[mode])
        owners = []
        try:
            for _ in range(5):
                client, server = socket.socketpair()
                client.setblocking(False)
                server.setblocking(False)
                owners.append(Owner())
                engine.attach(server.detach(), owners[-1])
                assert alive(), "the count does not see the engine's objects"
                await loop.sock_sendall(client, sent)
                assert await read_answers(loop, client, len(statuses)) == statuses
                if not statuses:
                    await asyncio.sleep(0.01)         # the app is waiting in receive()
                client.close()
            for _ in range(200):
                if engine.open == 0 and not engine.tasks and not engine.in_threads:
                    break
                await asyncio.sleep(0.005)
            assert engine.open == 0 and not engine.tasks and not engine.in_threads
            assert [owner.finished for owner in owners] == [1] * 5
            await asyncio.sleep(0)                    # finished tasks' callbacks run
            return len(alive())
        finally:
            engine.close()

    assert loops.run(main(), "asyncio") == 0, "engine objects outlived their connections"
