"""A closed connection is freed by reference counting, not left to the GC.

A hook that holds a protocol and is stored on that protocol makes a cycle;
one per connection kept the protocol, its transport and uvicorn's request
cycle alive until a collection (25 objects a request, the GC at 11% of a web
worker's time, where uvicorn alone leaves none).  Each test runs with the
collector off and checks, with a weak reference, that the protocol is gone.
"""

import asyncio
import gc
import socket
import weakref

import pytest

from fastfork import loops
from fastfork.worker import connection
from tests.worker.fakes import FakeReceiver, nonblocking_pair, server_on

LOOPS = ["asyncio", "uvloop"]


class Echo(asyncio.Protocol):
    made = []

    def __init__(self):
        Echo.made.append(weakref.ref(self))

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
        self.transport.close()


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    Echo.made.clear()
    try:
        yield
    finally:
        gc.enable()


def run_on(loop_name, coro):
    if loop_name == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed")
    return loops.run(coro, loop_name)


async def echo_once(client):
    loop = asyncio.get_running_loop()
    client.sendall(b"x")
    client.settimeout(5)
    assert await loop.run_in_executor(None, client.recv, 1) == b"x"
    assert await loop.run_in_executor(None, client.recv, 1) == b""
    client.close()


async def settle(until):
    for _ in range(200):
        if until():
            return True
        await asyncio.sleep(0.005)
    return until()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_passed_connection_leaves_no_cycle(loop_name, no_gc):
    async def main():
        tracker = connection.Tracker()
        server = server_on(asyncio.get_running_loop(), Echo, tracker, FakeReceiver())
        ours, theirs = nonblocking_pair()
        server.attach(theirs)
        del theirs
        await echo_once(ours)
        return await settle(lambda: tracker.active == 0 and Echo.made[0]() is None)

    assert run_on(loop_name, main()), "the protocol outlived its connection"


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_connection_the_worker_accepts_leaves_no_cycle(loop_name, no_gc):
    # Under none/reuseport the loop's own server makes the protocols, through
    # Tracker.wrap.
    async def main():
        loop = asyncio.get_running_loop()
        tracker = connection.Tracker()
        server = await loop.create_server(tracker.wrap(Echo), "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            await echo_once(socket.create_connection(("127.0.0.1", port), timeout=5))
            return await settle(lambda: tracker.active == 0 and Echo.made
                                and Echo.made[0]() is None)
        finally:
            server.close()

    assert run_on(loop_name, main()), "the protocol outlived its connection"


def test_the_websocket_factory_on_a_protocol_holds_it_weakly(no_gc):
    pytest.importorskip("uvicorn", reason="the web extra is not installed")
    from fastfork.web.asgi import AsgiServer

    class Protocol:
        pass

    server = AsgiServer.__new__(AsgiServer)
    server.config = type("Config", (), {"ws_protocol_class": object})()
    protocol = Protocol()
    protocol.ws_protocol_class = server._upgrade_factory(protocol)
    ref = weakref.ref(protocol)
    del protocol
    assert ref() is None, "the upgrade factory keeps its protocol in a cycle"
