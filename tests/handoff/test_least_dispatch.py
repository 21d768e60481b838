"""Policy least through the Dispatcher and Receiver, driven directly, in both builds.

The rig of ``test_dispatch`` (socketpairs for data channels, a real TCP
listener on 127.0.0.1): here the workers also report closes (MSG_CLOSED).
"""

import socket

import pytest

from fastfork.handoff.wire import HEADER, MSG_ACK, MSG_CLOSED
from tests.implementations import Impl
from tests.handoff.rig import Rig, backlog_len, recv_exactly, wait_for


@pytest.fixture
def least(stack, impl):
    def make(**options):
        return Rig(stack, impl.backend, policy="least", **options)
    return make


def dispatch_one(rig):
    """Accept one more connection; returns the worker it went to, its reception done."""
    before = rig.d.dispatched
    rig.connect(1)
    rig.poll_until(lambda: rig.d.dispatched == before + 1, "one more dispatched")
    for worker in rig.workers:
        n = len(worker.conns)
        worker.receive()
        if len(worker.conns) > n:
            return worker
    raise AssertionError("dispatched, but no worker received it")


def close_one(rig, worker, wait=True):
    """The worker closes its oldest connection and reports it; ``wait``: until
    the primary has read the report (only when nothing waits to be dispatched,
    or the count may drop and rise again within one poll)."""
    _, sock = worker.conns.pop(0)
    sock.close()
    want = rig.d.worker_open(worker.slot) - 1
    assert worker.receiver.report_closed(1) == 0
    if wait:
        rig.poll_until(lambda: rig.d.worker_open(worker.slot) == want, "the close report")


def test_the_worker_with_fewest_open_gets_the_connection(least):
    rig = least(window=8)
    a, b, c = rig.add_worker(), rig.add_worker(), rig.add_worker()
    assert [dispatch_one(rig) for _ in range(3)] == [a, b, c]   # equal: round-robin
    close_one(rig, b)
    close_one(rig, c)
    # a keeps its connection (a slow request): b and c take turns.
    assert [dispatch_one(rig) for _ in range(2)] == [b, c]
    close_one(rig, b)
    assert dispatch_one(rig) is b
    assert [rig.d.worker_open(w.slot) for w in (a, b, c)] == [1, 1, 1]
    rig.poll_until(lambda: all(rig.d.worker_stats(w.slot)[1] == 0 for w in (a, b, c)),
                   "every arrival acknowledged")
    assert [rig.d.worker_stats(w.slot) for w in (a, b, c)] == [(1, 0), (3, 0), (2, 0)]


def test_the_cap_leaves_connections_in_the_backlog(least):
    rig = least(window=8, worker_connections=1)
    a, b = rig.add_worker(), rig.add_worker()
    assert [dispatch_one(rig) for _ in range(2)] == [a, b]
    rig.connect(2)
    wait_for(lambda: backlog_len(rig.listener) == 2, "2 connections left in the backlog")
    assert rig.d.poll(50) == []
    assert rig.d.accepted == 2 and backlog_len(rig.listener) == 2
    close_one(rig, b, wait=False)          # room for one: the first waiting goes to b
    rig.poll_until(lambda: rig.d.dispatched == 3, "3 dispatched")
    b.receive_until(1)
    assert recv_exactly(b.conns[0][1], 1) == b"\x02"
    assert backlog_len(rig.listener) == 1
    close_one(rig, a, wait=False)
    a.receive_until(1)
    assert recv_exactly(a.conns[0][1], 1) == b"\x03"


def test_a_frozen_worker_gets_at_most_its_window(least):
    rig = least(window=2)
    frozen, busy = rig.add_worker(), rig.add_worker()
    rig.connect(10)
    # The frozen worker never receives; the busy one receives and never
    # closes, so it soon has more open than the frozen one: only the credit
    # window keeps connections away from the frozen worker.
    wait_for(lambda: len(busy.conns) == 8, "8 connections at the busy worker",
             step=lambda: (rig.d.poll(5), busy.receive()))
    assert rig.d.accepted == 10 and backlog_len(rig.listener) == 0
    assert rig.d.worker_stats(frozen.slot) == (2, 2)
    assert (rig.d.worker_open(frozen.slot), rig.d.worker_open(busy.slot)) == (2, 8)


@pytest.mark.parametrize("policy, message", [
    pytest.param("least", HEADER.pack(MSG_CLOSED, 1), id="least-close-before-ack"),
    pytest.param("rr", HEADER.pack(MSG_CLOSED, 0), id="rr-counts-no-closes"),
])
def test_a_close_it_cannot_have_closes_the_slot(stack, impl, policy, message):
    rig = Rig(stack, impl.backend, policy=policy, window=8)
    slot, b = rig.raw_worker()
    rig.d.subscribe(slot, rig.lid)
    rig.connect(1)
    rig.poll_until(lambda: rig.d.dispatched == 1, "1 dispatched")
    b.send(message)
    closed = []
    rig.poll_until(lambda: closed.extend(rig.d.pop_closed()) or closed, "the slot closed")
    assert closed == [slot]
    assert rig.d.stats()["pending"] == 1      # it goes to the next worker
    assert rig.d.worker_open(slot) is None


def test_acks_and_closes_in_one_drain(least):
    rig = least(window=8)
    slot, b = rig.raw_worker()
    rig.d.subscribe(slot, rig.lid)
    rig.connect(3)
    rig.poll_until(lambda: rig.d.dispatched == 3, "3 dispatched")
    b.send(HEADER.pack(MSG_ACK, 3))
    b.send(HEADER.pack(MSG_CLOSED, 2))
    rig.poll_until(lambda: rig.d.worker_open(slot) == 1, "the close report")
    assert rig.d.worker_stats(slot) == (3, 0) and rig.d.pop_closed() == []


def test_worker_open_is_none_under_rr_and_for_unknown_slots(stack, impl):
    rig = Rig(stack, impl.backend, window=8)
    worker = rig.add_worker()
    assert rig.d.policy == "rr"
    assert rig.d.worker_open(worker.slot) is None
    assert rig.d.worker_open(99) is None
    with pytest.raises(ValueError, match="worker_connections needs policy least"):
        impl.backend.dispatcher.Dispatcher(8, policy="rr", worker_connections=2)
    with pytest.raises(ValueError, match="has no scheduler"):
        impl.backend.dispatcher.Dispatcher(8, policy="none")


def test_report_closed_splits_counts_and_keeps_what_does_not_fit(stack, impl):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stack.callback(a.close)
    receiver = impl.backend.receiver.Receiver(b.detach())
    stack.callback(receiver.close)
    assert receiver.report_closed(0) == 0
    assert receiver.report_closed(70000) == 0
    a.settimeout(5)
    assert [HEADER.unpack(a.recv(64)) for _ in range(2)] == [(MSG_CLOSED, 65535),
                                                            (MSG_CLOSED, 4465)]
    with pytest.raises(ValueError, match="cannot report -1"):
        receiver.report_closed(-1)
    # Nobody reads: once the buffer is full the count comes back to the caller.
    for _ in range(100000):
        left = receiver.report_closed(3)
        if left:
            break
    assert left == 3
    a.close()
    assert receiver.report_closed(5) == 0     # the primary is gone: nothing to report


@pytest.mark.parametrize("dispatcher, receiver", [("c", "py"), ("py", "c")],
                         ids=["c-dispatch-py-receiver", "py-dispatch-c-receiver"])
def test_interop(stack, dispatcher, receiver):
    # No credit page: the twin has none (see test_dispatch's test_interop).
    rig = Rig(stack, Impl(dispatcher).backend, Impl(receiver).backend, credit=False, window=4,
              policy="least", worker_connections=2)
    workers = [rig.add_worker(), rig.add_worker()]
    rig.connect(6)
    rig.receive_all(4)
    for worker in workers:
        for _, sock in worker.conns:
            sock.close()
        assert worker.receiver.report_closed(len(worker.conns)) == 0
    rig.receive_all(6)           # the 2 the cap had left in the backlog
    assert rig.d.accepted == 6
    assert sorted(rig.d.worker_open(w.slot) for w in workers) == [1, 1]
