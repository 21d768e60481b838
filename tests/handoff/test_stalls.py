"""Routing around a blocked worker (scheduler rules 12 and 13), through the
Dispatcher and Receiver driven directly, in both builds.

A worker of the rig runs only when the test makes it receive, so a worker
that the test leaves alone is a blocked loop.  Without a credit page (the
twin) the primary sees a stall only by what waits unread; with one (the
Cython build) also by the loop's tick (``Receiver.tick``).
"""

import time

import pytest

from fastfork.handoff.wire import STALL_PROBE_MS, STALL_UNTAKEN_FACTOR
from tests.handoff.rig import recv_exactly, wait_for

STALL_MS = 20


@pytest.fixture
def stalls(rig_factory):
    def make(**options):
        options.setdefault("stall_ms", STALL_MS)
        return rig_factory(**options)
    return make


def serve_all(rig, worker):
    """``worker`` answers every connection it holds with its tag (each client
    sent one byte, its index), so the test knows who served whom."""
    served = []
    for _, sock in worker.conns:
        tag = recv_exactly(sock, 1)[0]
        sock.sendall(b"%d" % worker.slot)
        served.append(tag)
    return served


def test_what_a_blocked_worker_left_unread_goes_to_another(stalls):
    rig = stalls(window=4)
    a, b = rig.add_worker(), rig.add_worker()
    rig.connect(4)                          # round-robin: a, b, a, b
    # Nothing is sent but in the dispatcher's poll: a's first goes after this
    # (in one of the polls below, not necessarily the last on a busy machine).
    before = time.monotonic()
    rig.poll_until(lambda: rig.d.dispatched == 4, "4 dispatched")
    b.receive()
    assert len(b.conns) == 2
    # a never reads: after STALL_UNTAKEN_FACTOR * STALL_MS its two come back
    # and go to b.
    b.receive_until(4)
    assert time.monotonic() - before >= STALL_UNTAKEN_FACTOR * STALL_MS / 1000.0
    assert rig.d.worker_stalls(a.slot) == (True, 1, 2)
    assert rig.d.worker_stats(a.slot) == (0, 0)        # both taken back: none its
    stats = rig.d.stats()
    assert (stats["stalls"], stats["taken_back"], stats["stalled"]) == (1, 2, 1)
    assert stats["redispatched"] == 2 and rig.d.held_fds() == 0
    # Every client is served, each by b.
    assert sorted(serve_all(rig, b)) == [0, 1, 2, 3]
    for client in rig.clients:
        assert recv_exactly(client, 1) == b"%d" % b.slot
    # a receives nothing: what it was sent is gone from its channel.
    assert a.receive() == ([], False)


def test_nothing_is_taken_back_that_no_other_worker_has_room_for(stalls):
    # Taken back, a connection waits in the primary's queue until a worker
    # can take it, on an fd the primary needs to read a dying worker's
    # channel back whole (at its fd limit the kernel closes what does not
    # fit): so what a stalled worker holds stays in its channel until another
    # has room for all of it.
    rig = stalls(window=2)
    a, b = rig.add_worker(), rig.add_worker()
    rig.connect(4)                          # a, b, a, b: both windows full
    rig.poll_until(lambda: rig.d.dispatched == 4, "4 dispatched")
    rig.poll_until(lambda: rig.d.worker_stalls(a.slot)[0] and rig.d.worker_stalls(b.slot)[0],
                   "both found stalled")
    assert rig.d.stats()["taken_back"] == 0 and rig.d.held_fds() == 0
    # b runs again and takes its two: now it has room for a's two.
    b.receive_until(4)
    assert rig.d.worker_stalls(a.slot)[2] == 2 and rig.d.held_fds() == 0
    assert a.receive() == ([], False)


def test_a_stalled_worker_is_sent_nothing(stalls):
    rig = stalls(window=8)
    a, b = rig.add_worker(), rig.add_worker()
    rig.connect(2)
    rig.poll_until(lambda: rig.d.dispatched == 2, "2 dispatched")
    b.receive_until(2)                      # a's one came back to b
    assert rig.d.worker_stalls(a.slot)[0]
    rig.connect(4)
    b.receive_until(6)
    assert rig.d.worker_stats(a.slot) == (0, 0)
    assert a.receive() == ([], False)


def test_a_stalled_worker_is_tried_again_and_is_back_once_it_takes(stalls):
    rig = stalls(window=8)
    a, b = rig.add_worker(), rig.add_worker()
    rig.connect(2)
    rig.poll_until(lambda: rig.d.dispatched == 2, "2 dispatched")
    b.receive_until(2)
    stalled_at = time.monotonic()
    assert rig.d.worker_stalls(a.slot)[0]

    # New connections, one at a time, while a takes what it gets: after
    # STALL_PROBE_MS with no sign of life it is tried again, takes it, and
    # is picked as before.
    def step():
        if rig.d.stats()["pending"] == 0 and len(rig.clients) < 200:
            rig.connect(1)
        rig.d.poll(5)
        a.receive()
        b.receive()
    wait_for(lambda: a.conns, "a connection for a", step=step)
    assert time.monotonic() - stalled_at >= STALL_PROBE_MS / 1000.0 * 0.9
    rig.poll_until(lambda: not rig.d.worker_stalls(a.slot)[0], "a back")
    assert rig.d.worker_stalls(a.slot)[1] == 1         # the one stall, not one per try


def test_a_ticking_worker_that_stops_ticking_is_stalled(stalls, impl):
    """With a credit page, a loop that holds connections ticks; a late tick
    is a stall before anything waits unread, and a fresh one ends it."""
    rig = stalls(window=8)
    if not rig.credit:
        pytest.skip("the pure-Python twin has no credit page to tick on")
    a, b = rig.add_worker(), rig.add_worker()
    a.receiver.tick(True)                   # a holds connections, its loop runs
    rig.poll_until(lambda: rig.d.worker_stalls(a.slot)[0], "a late tick seen")
    assert rig.d.worker_stats(a.slot) == (0, 0)     # nothing was sent to find it out
    rig.connect(3)
    b.receive_until(3)
    assert rig.d.worker_stats(a.slot) == (0, 0)
    a.receiver.tick(True)                   # the loop runs again
    rig.poll_until(lambda: not rig.d.worker_stalls(a.slot)[0], "a back")
    a.receiver.tick(False)                  # idle: holds nothing, waits for events
    rig.connect(2)
    rig.receive_all(5)
    assert len(a.conns) == 1
    assert rig.d.worker_stalls(a.slot)[1] == 1


def test_least_counts_what_came_back_as_never_open(stalls):
    rig = stalls(window=4, policy="least")
    a, b = rig.add_worker(), rig.add_worker()
    rig.connect(4)
    rig.poll_until(lambda: rig.d.dispatched == 4, "4 dispatched")
    b.receive()
    b.receive_until(4)
    assert rig.d.worker_stalls(a.slot)[2] == 2
    assert rig.d.worker_open(a.slot) == 0
    assert rig.d.worker_open(b.slot) == 4


def test_no_stall_detection_at_0(rig_factory):
    rig = rig_factory(window=4, stall_ms=0)
    a, b = rig.add_worker(), rig.add_worker()
    b.receive()
    rig.connect(2)
    rig.poll_until(lambda: rig.d.dispatched == 2, "2 dispatched")
    deadline = time.monotonic() + 2 * STALL_UNTAKEN_FACTOR * STALL_MS / 1000.0
    while time.monotonic() < deadline:
        rig.d.poll(5)
    assert rig.d.worker_stalls(a.slot) == (False, 0, 0)
    assert rig.d.worker_stats(a.slot) == (1, 1)
    assert len(a.receive()[0]) == 1


def test_with_no_other_worker_what_it_left_stays_until_one_can_take_it(stalls):
    rig = stalls(window=4)
    a = rig.add_worker()
    rig.connect(1)
    rig.poll_until(lambda: rig.d.worker_stalls(a.slot)[0], "a found stalled")
    # Nobody else could serve it: it stays in a's channel, not in the primary.
    assert rig.d.worker_stats(a.slot) == (1, 1) and rig.d.held_fds() == 0
    assert rig.d.worker_stalls(a.slot) == (True, 1, 0)
    b = rig.add_worker()
    b.receive_until(1)
    assert rig.d.worker_stalls(a.slot)[2] == 1
    assert a.receive() == ([], False)
