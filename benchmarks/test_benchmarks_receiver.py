"""The worker side of the data channel: receive one batch of fds and acknowledge it."""

import os
import socket

import pytest

from fastfork.handoff.wire import HEADER, LID, MSG_ACK, MSG_FDS

BATCHES = (1, 16, 64)
ROUNDS = 200


@pytest.fixture
def fd_pool():
    """64 open fds for the primary end to send (each send makes new copies)."""
    fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(max(BATCHES))]
    yield fds
    for fd in fds:
        os.close(fd)


def _message(batch):
    return HEADER.pack(MSG_FDS, batch) + LID.pack(0) * batch


@pytest.mark.parametrize("batch", BATCHES)
def test_receive_ack(benchmark, impl, channel, fd_pool, batch):
    """Receiver.receive() of one message carrying `batch` fds, including its ack."""
    build = impl.backend
    primary_end, worker_end = channel
    receiver = build.receiver.Receiver(os.dup(worker_end.fileno()))
    message = _message(batch)
    acks = []

    def setup():
        socket.send_fds(primary_end, [message], fd_pool[:batch])

    results = []

    def receive():
        results.append(receiver.receive())

    def check_and_close():
        pairs, ended = results.pop()
        assert not ended and len(pairs) == batch and {lid for lid, _ in pairs} == {0}
        for _, fd in pairs:
            os.close(fd)
        acks.append(HEADER.unpack(primary_end.recv(16)))

    try:
        benchmark.pedantic(receive, setup=setup, teardown=check_and_close, rounds=ROUNDS)
        while results:       # --benchmark-disable runs one round and no teardown
            check_and_close()
        assert acks and all(ack == (MSG_ACK, batch) for ack in acks)
    finally:
        receiver.close()


@pytest.mark.parametrize("batch", BATCHES)
def test_recv_fds_ack(benchmark, channel, fd_pool, batch):
    """The same with socket.recv_fds and a hand-packed ack (standard-library floor)."""
    primary_end, worker_end = channel
    message = _message(batch)
    bufsize = len(message)
    ack = HEADER.pack(MSG_ACK, batch)
    results = []

    def setup():
        socket.send_fds(primary_end, [message], fd_pool[:batch])

    def receive():
        _, fds, _, _ = socket.recv_fds(worker_end, bufsize, batch)
        worker_end.send(ack)
        results.append(fds)

    def check_and_close():
        fds = results.pop()
        assert len(fds) == batch
        for fd in fds:
            os.close(fd)
        assert HEADER.unpack(primary_end.recv(16)) == (MSG_ACK, batch)

    benchmark.pedantic(receive, setup=setup, teardown=check_and_close, rounds=ROUNDS)
    while results:       # --benchmark-disable runs one round and no teardown
        check_and_close()
