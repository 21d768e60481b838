"""The worker's side of policy least, in one process: which closes are reported, and how.

``fastfork.worker.aio`` reports each dispatched connection closed exactly
once, whether it was served, failed to attach, or arrived at a closed server,
batched into one report per event-loop iteration.  A fake receiver records
the reports; real socketpairs stand for the connections.
"""

import asyncio
import socket

from fastfork.worker import aio, connection
from tests.worker.fakes import Echo, FakeListener, FakeReceiver, Slotted, settle


def run(coro):
    return asyncio.run(coro)


def test_served_connections_are_reported_once_batched_per_iteration():
    async def main():
        loop = asyncio.get_running_loop()
        receiver = FakeReceiver()
        tracker = connection.Tracker()
        server = aio.Server(FakeListener(), loop, Echo, tracker,
                            connection.CloseReporter(loop, receiver))
        clients = []
        for _ in range(3):
            ours, theirs = socket.socketpair()
            theirs.setblocking(False)
            server.attach(theirs)
            clients.append(ours)
        await settle(lambda: tracker.active == 3 and tracker.total == 3, "3 attached")
        for client in clients:
            client.sendall(b"x")
        for client in clients:
            client.settimeout(5)
            assert await loop.run_in_executor(None, client.recv, 1) == b"x"
        await settle(lambda: sum(receiver.reports) == 3, "3 closes reported")
        await asyncio.sleep(0.01)
        for client in clients:
            client.close()
        return receiver.reports

    reports = run(main())
    assert sum(reports) == 3 and len(reports) <= 3


def test_connections_never_attached_are_reported_too():
    async def main():
        loop = asyncio.get_running_loop()
        receiver = FakeReceiver()
        server = aio.Server(FakeListener(), loop, Echo, connection.Tracker(),
                            connection.CloseReporter(loop, receiver))
        # A socket that fails to attach: closed underneath.
        broken = socket.socket()
        broken.close()
        server.attach(broken)
        server.close()
        ours, theirs = socket.socketpair()
        server.attach(theirs)            # the server is closed: never attached
        await settle(lambda: sum(receiver.reports) == 2, "2 closes reported")
        assert theirs.fileno() == -1
        ours.close()
        return receiver.reports

    assert sum(run(main())) == 2


def test_a_protocol_that_cannot_be_instrumented_counts_closed_at_once():
    async def main():
        loop = asyncio.get_running_loop()
        receiver = FakeReceiver()
        server = aio.Server(FakeListener(), loop, Slotted, connection.Tracker(),
                            connection.CloseReporter(loop, receiver))
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        server.attach(theirs)
        await settle(lambda: receiver.reports, "the close reported")
        ours.close()
        await asyncio.sleep(0.01)
        return receiver.reports

    assert run(main()) == [1]


def test_a_report_the_buffer_refused_is_sent_later():
    async def main():
        loop = asyncio.get_running_loop()
        receiver = FakeReceiver(refuse=2)
        reporter = connection.CloseReporter(loop, receiver)
        reporter.closed()
        reporter.closed()
        await settle(lambda: len(receiver.reports) == 3, "the retries")
        return receiver.reports

    assert run(main()) == [2, 2, 2]
