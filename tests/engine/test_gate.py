"""The engine's gate in process: real sockets on loopback, the engine on an
asyncio loop, the worker's side played by a counting owner.

Through real clusters: tests/web/test_engine_gate.py.  Here is what a
cluster cannot arrange: a fd the engine's epoll refuses in the middle of a
batch, and a listener without TCP_NODELAY (a socket systemd passed).
"""

import asyncio
import os
import socket

import pytest

pytest.importorskip("httptools", reason="the web extra is not installed")

from fastfork import loops
from fastfork.engine import load
from tests.web_harness import need_engine, parse_responses

need_engine()
engine_module = load()

REQUEST = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


class GateOwner:
    """fastfork.worker.connection.GateOwner's counts, kept for the test."""

    def __init__(self):
        self.open = self.opened_total = self.refused_total = 0

    def opened(self):
        self.open += 1
        self.opened_total += 1

    def finish(self):
        self.open -= 1

    def refused(self):
        self.refused_total += 1


async def app(scope, receive, send):
    body = repr((scope["server"], scope["client"])).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def ask(loop, client):
    await loop.sock_sendall(client, REQUEST)
    data = b""
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(client, 65536), 5)
        if not chunk:
            break
        data += chunk
    (answer,), rest = parse_responses(data)
    assert rest == b""
    return answer


def nodelay(fd):
    probe = socket.socket(fileno=os.dup(fd))
    try:
        return bool(probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    finally:
        probe.close()


def run(main):
    return loops.run(main(), "asyncio")


def test_a_fd_that_is_no_connection_is_counted_closed_and_the_batch_goes_on():
    async def main():
        loop = asyncio.get_running_loop()
        failures = []
        loop.set_exception_handler(lambda _loop, context: failures.append(context))
        engine = engine_module.Engine(loop, app, {})
        owner = GateOwner()
        gate = engine_module.Gate(engine, None, owner)
        try:
            # A regular file (epoll_ctl would refuse it: EPERM): the engine
            # reads a connection before it watches it, and the file's end
            # is a client that left.
            refused = os.open(os.devnull, os.O_RDONLY)
            client, server = socket.socketpair()
            client.setblocking(False)
            server.setblocking(False)
            gate.take(refused)
            gate.take(server.detach())
            assert failures == []
            with pytest.raises(OSError):
                os.fstat(refused)                   # closed by the engine
            status, _, _ = await ask(loop, client)
            assert status == 200
            client.close()
            # Taken after close(): closed at once, reported refused, never opened.
            gate.close()
            late_client, late = socket.socketpair()
            late.setblocking(False)
            gate.take(late.detach())
            assert late_client.recv(1) == b""
            late_client.close()
            return owner.opened_total, owner.open, owner.refused_total
        finally:
            engine.close()

    assert run(main) == (2, 0, 1)


@pytest.mark.parametrize("listener_nodelay", [True, False])
def test_every_connection_has_tcp_nodelay_inherited_or_set(listener_nodelay):
    async def main():
        loop = asyncio.get_running_loop()
        engine = engine_module.Engine(loop, app, {})
        gate = engine_module.Gate(engine, None, GateOwner())
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(listener_nodelay))
        clients = []
        try:
            for _ in range(3):
                client = socket.create_connection(listener.getsockname())
                client.setblocking(False)
                clients.append(client)
                conn, _ = listener.accept()
                conn.setblocking(False)
                assert nodelay(conn.fileno()) is listener_nodelay   # as Linux copies it
                fd = conn.detach()
                gate.take(fd)
                assert nodelay(fd), "a connection of the engine without TCP_NODELAY"
            for client in clients:
                status, _, _ = await ask(loop, client)
                assert status == 200
        finally:
            for client in clients:
                client.close()
            listener.close()
            engine.close()

    run(main)


def test_the_engine_accepts_and_the_app_sees_both_ends():
    async def main():
        loop = asyncio.get_running_loop()
        engine = engine_module.Engine(loop, app, {})
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        host, port = listener.getsockname()
        owner = GateOwner()
        gate = engine_module.Gate(engine, None, owner, (host, port))
        gate.listen(listener.fileno())
        try:
            answers = []
            for _ in range(3):
                client = socket.socket()
                client.setblocking(False)
                await loop.sock_connect(client, (host, port))
                status, _, body = await ask(loop, client)
                answers.append((status, body.decode(), client.getsockname()))
                client.close()
            gate.close()
            return answers, gate.accepted, owner.open
        finally:
            listener.close()
            engine.close()

    answers, accepted, still_open = run(main)
    assert accepted == 3 and still_open == 0
    for status, body, (host, port) in answers:
        assert status == 200
        server, client = eval(body)          # the app's repr of two tuples
        assert client == (host, port) and server[0] == "127.0.0.1"
