"""Passing connections from the primary to a worker over the data channel.

Every round moves the same 64 connections (already waiting in a listening
socket's backlog) through the whole channel path: accept, send with
SCM_RIGHTS in batches of 1, 16 or 64 (the primary closing its copy once
sent), receive in the worker, and give the credit back (a shared page in the
Cython build, ACKs in the twin), as a cluster does.  A round's time divided by 64 is
the cost per fd.  ``socket.send_fds`` does the same steps by hand with the
standard library, as the floor a pure-Python primary could reach.
"""

import os
import socket

import pytest

from fastfork.handoff import credit
from fastfork.handoff.wire import HEADER, LID, MSG_ACK, MSG_FDS

FDS_PER_ROUND = 64
BATCHES = (1, 16, 64)
ROUNDS = 40
# poll(0)/receive() turns a round may take before it counts as stuck: a
# batch-1 round needs 64, and a lagging loopback handshake a few more.
MAX_TURNS = 10_000


class _Rounds:
    """The rounds' clients and received fds, closed by teardown or at the end
    (``--benchmark-disable`` runs one round and skips teardown)."""

    def __init__(self, address):
        self.address = address
        self.sizes = []          # fds received per finished round
        self._open = []

    def setup(self):
        clients = [socket.create_connection(self.address) for _ in range(FDS_PER_ROUND)]
        received = []
        self._open.append((clients, received))
        return (clients, received), {}

    def teardown(self, clients, received):
        self._open.remove((clients, received))
        self.sizes.append(len(received))
        for fd in received:
            os.close(fd)
        for sock in clients:
            sock.close()

    def close_all(self):
        while self._open:
            self.teardown(*self._open[0])


@pytest.mark.parametrize("batch", BATCHES)
def test_fdpass_dispatcher(benchmark, impl, listener, channel, batch):
    """64 connections through Dispatcher.poll and Receiver.receive, in batches of
    `batch` (per round)."""
    build = impl.backend
    primary_end, worker_end = channel
    # window = batch_max = batch: the dispatcher sends exactly `batch` fds per
    # message and waits for their ack before accepting more.
    dispatcher = build.dispatcher.Dispatcher(window=batch, batch_max=batch)
    lid = dispatcher.add_listener(listener.fileno())
    page = credit.create(build.dispatcher.CREDIT_SIZE) if build.dispatcher.CREDIT_SIZE else -1
    try:
        slot = dispatcher.add_worker(primary_end.fileno(), worker_end.fileno(), page)
        dispatcher.subscribe(slot, lid)
        receiver = build.receiver.Receiver(os.dup(worker_end.fileno()), page)
    finally:
        if page >= 0:
            os.close(page)          # mapped by both ends
    rounds = _Rounds(listener.getsockname())

    def one_round(clients, received):
        for _ in range(MAX_TURNS):
            dispatcher.poll(0)
            pairs, _ = receiver.receive()
            received.extend(fd for _, fd in pairs)
            if len(received) >= FDS_PER_ROUND:
                break
        dispatcher.poll(0)       # takes the last credit back

    try:
        benchmark.extra_info["fds_per_round"] = FDS_PER_ROUND
        benchmark.pedantic(one_round, setup=rounds.setup, teardown=rounds.teardown,
                           rounds=ROUNDS)
        rounds.close_all()
        assert rounds.sizes and set(rounds.sizes) == {FDS_PER_ROUND}, rounds.sizes
        # Every connection was acknowledged and released by the primary.
        assert dispatcher.worker_stats(slot) == (FDS_PER_ROUND * len(rounds.sizes), 0)
    finally:
        rounds.close_all()
        receiver.close()
        dispatcher.close()


@pytest.mark.parametrize("batch", BATCHES)
def test_fdpass_send_fds(benchmark, listener, channel, batch):
    """The same 64 connections with socket.send_fds/recv_fds by hand, in batches of
    `batch` (per round)."""
    primary_end, worker_end = channel
    header = HEADER.pack(MSG_FDS, batch) + LID.pack(0) * batch
    ack = HEADER.pack(MSG_ACK, batch)
    bufsize = len(header)
    rounds = _Rounds(listener.getsockname())

    def one_round(clients, received):
        for _ in range(FDS_PER_ROUND // batch):
            fds = [listener._accept()[0] for _ in range(batch)]
            socket.send_fds(primary_end, [header], fds)
            _, got, _, _ = socket.recv_fds(worker_end, bufsize, batch)
            received.extend(got)
            worker_end.send(ack)
            primary_end.recv(HEADER.size)
            for fd in fds:
                os.close(fd)

    try:
        benchmark.extra_info["fds_per_round"] = FDS_PER_ROUND
        benchmark.pedantic(one_round, setup=rounds.setup, teardown=rounds.teardown,
                           rounds=ROUNDS)
        rounds.close_all()
        assert rounds.sizes and set(rounds.sizes) == {FDS_PER_ROUND}, rounds.sizes
    finally:
        rounds.close_all()
