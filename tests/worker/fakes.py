"""What the worker's in-process tests stand in for the rest of a worker: a
receiver that records close reports, a listener, small protocols, and the
connections as real socketpairs."""

import asyncio
import socket

import pytest

from fastfork import loops
from fastfork.worker import aio, connection


def run_on(loop_name, coro):
    """Run ``coro`` on the loop ``loop_name`` (skipped where uvloop is missing)."""
    if loop_name == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed")
    return loops.run(coro, loop_name)


class FakeReceiver:
    """Records what a worker reports closed; ``refuse`` calls find the buffer full."""

    def __init__(self, refuse=0):
        self.reports = []
        self.refuse = refuse

    def report_closed(self, count):
        self.reports.append(count)
        if self.refuse:
            self.refuse -= 1
            return count
        return 0


class FakeListener:
    address = "127.0.0.1:0"
    sock = None
    proxy_allow = None        # no PROXY protocol
    closed = False

    def close(self):
        self.closed = True


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
        self.transport.close()


class Slotted(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport


async def settle(until, what):
    """Let the running loop go round until ``until()``, for at most 5 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not until():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def nonblocking_pair():
    ours, theirs = socket.socketpair()
    # As Listener.deliver builds them: non-blocking, family and type given.
    theirs = socket.socket(theirs.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0,
                           theirs.detach())
    return ours, theirs


def server_on(loop, protocol, tracker, receiver):
    return aio.Server(FakeListener(), loop, protocol, tracker,
                      connection.CloseReporter(loop, receiver))
