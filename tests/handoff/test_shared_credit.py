"""Credit through a shared page (``csrc/credit.h``): the Cython build's way.

The worker counts what it received, and under least what closed, on a page
it shares with the primary; no ACK message goes back unless the primary,
about to sleep for want of credit, asked to be woken.  The twin has no page
(``CREDIT_SIZE`` 0) and says so when given one.  The rig is ``test_dispatch``'s.
"""

import contextlib
import mmap
import os
import select
import socket
import struct
import threading

import pytest

from fastfork.handoff import credit as credit_page
from tests.handoff.rig import DEADLINE, Rig, fd_room, recv_exactly, wait_for


@pytest.fixture
def shared(stack, impl):
    if not impl.backend.dispatcher.CREDIT_SIZE:
        pytest.skip("the pure-Python twin has no shared credit page (CREDIT_SIZE 0)")

    def make(**options):
        return Rig(stack, impl.backend, **options)   # with a page, as in production
    return make


def readable(sock):
    return bool(select.select([sock], [], [], 0)[0])


def page_of(worker):
    """The test's own mapping of ``worker``'s page: (taken, closed) and a writer."""
    view = mmap.mmap(worker.credit_fd, worker.rig.build.dispatcher.CREDIT_SIZE)
    worker.rig.stack.callback(view.close)
    return view


@contextlib.contextmanager
def asleep_in_poll(rig):
    """The primary in ``poll(-1)`` on a thread: nothing but a worker's wake-up
    can make it dispatch.  Ended on leaving, through a watched pipe."""
    stop_r, stop_w = os.pipe()
    rig.stack.callback(os.close, stop_r)
    rig.stack.callback(os.close, stop_w)
    rig.d.watch(stop_r)
    sleeping = threading.Thread(target=rig.d.poll, args=(-1,), daemon=True)
    sleeping.start()
    try:
        yield
    finally:
        os.write(stop_w, b"x")
        sleeping.join(DEADLINE)
    assert not sleeping.is_alive()


def test_credit_comes_back_with_no_ack_message(shared):
    rig = shared(window=4)
    worker = rig.add_worker()
    rig.connect(3)
    rig.poll_until(lambda: rig.d.dispatched == 3, "3 dispatched")
    assert rig.d.worker_stats(worker.slot) == (3, 3)
    got, _ = worker.receive()
    assert len(got) == 3
    # Counted on the page: nothing was sent back, and the primary sees it.
    assert not readable(worker.primary_end)
    assert worker.receiver.wakeups == 0
    assert struct.unpack_from("QQ", page_of(worker)) == (3, 0)
    assert rig.d.worker_stats(worker.slot) == (3, 0)
    # And the window is whole again: three more go out with no wait.  (Four
    # would use up the credit with the listener's backlog unknown: the
    # primary would ask to be woken, as it should under load.)
    rig.connect(3)
    worker.receive_until(6)
    assert worker.receiver.wakeups == 0


def test_a_primary_asleep_for_credit_is_woken(shared):
    rig = shared(window=2)
    worker = rig.add_worker()
    clients = rig.connect(5)
    rig.poll_until(lambda: rig.d.dispatched == 2, "a window dispatched")
    # Three wait in the kernel's backlog while the primary sleeps.
    with asleep_in_poll(rig):
        # Only the worker's wake-ups can get the other three sent.
        wait_for(lambda: len(worker.conns) >= 5, "all 5 received with the primary asleep",
                 step=worker.receive)
    assert 1 <= worker.receiver.wakeups <= 3
    assert sorted(recv_exactly(sock, 1)[0] for _, sock in worker.conns) == [0, 1, 2, 3, 4]
    for (_, sock), client in zip(worker.conns, clients):
        sock.sendall(b"k")
    assert [recv_exactly(c, 1) for c in clients] == [b"k"] * 5


def test_least_counts_closes_on_the_page(shared):
    rig = shared(window=8, policy="least")
    worker = rig.add_worker()
    rig.connect(3)
    worker.receive_until(3)
    rig.d.poll(0)
    assert rig.d.worker_open(worker.slot) == 3
    assert worker.receiver.report_closed(2) == 0
    assert not readable(worker.primary_end)
    assert rig.d.worker_open(worker.slot) == 1
    assert struct.unpack_from("QQ", page_of(worker)) == (3, 2)


def test_least_at_its_cap_is_woken_by_a_close(shared):
    rig = shared(window=8, policy="least", worker_connections=2)
    worker = rig.add_worker()
    rig.connect(3)
    worker.receive_until(2)
    rig.d.poll(0)
    assert rig.d.worker_open(worker.slot) == 2      # at its cap: the third waits
    with asleep_in_poll(rig):
        worker.conns[0][1].close()
        worker.receiver.report_closed(1)
        wait_for(lambda: len(worker.conns) >= 3, "the third sent after a close",
                 step=worker.receive)
    assert worker.receiver.wakeups >= 1


def test_the_fd_limit_flag_travels_on_the_page(shared):
    # At its fd limit the worker sets a flag on the page before it counts the
    # cut-off message taken (credit.h), and no message goes back; room_again
    # clears it and, the primary asleep for want of a worker, wakes it.
    rig = shared(window=4)
    worker = rig.add_worker()
    rig.connect(3)
    rig.poll_until(lambda: rig.d.dispatched == 3, "3 dispatched")
    with fd_room(1):
        got, _ = worker.receive()
    assert len(got) == 1 and worker.receiver.lost == 2
    assert not readable(worker.primary_end)
    page = page_of(worker)
    assert struct.unpack_from("QQI", page) == (3, 0, 1)     # taken, closed, at_limit
    assert rig.d.worker_at_fd_limit(worker.slot)
    assert rig.d.worker_stats(worker.slot) == (3, 0)
    clients = rig.connect(2)
    rig.d.poll(50)
    assert rig.d.dispatched == 3                            # they wait in the backlog
    with asleep_in_poll(rig):
        assert worker.receiver.room_again() is True
        wait_for(lambda: len(worker.conns) >= 3, "the two waiting sent once it has room",
                 step=worker.receive)
    assert worker.receiver.wakeups >= 1
    assert struct.unpack_from("QQI", page) == (5, 0, 0)
    assert not rig.d.worker_at_fd_limit(worker.slot)
    for (_, sock), client in zip(worker.conns[1:], clients):
        sock.sendall(b"r")
        assert recv_exactly(client, 1) == b"r"


def test_a_page_that_counts_more_than_was_sent_closes_the_worker(shared):
    rig = shared(window=4)
    liar = rig.add_worker()
    honest = rig.add_worker()
    rig.connect(2)
    rig.poll_until(lambda: rig.d.dispatched == 2, "2 dispatched")
    page = page_of(liar)
    struct.pack_into("Q", page, 0, 100)
    rig.poll_until(lambda: liar.slot in rig.d.pop_closed(), "the liar's channel closed")
    rig.d.remove_worker(liar.slot)
    # What it never read went to the other worker, as for any broken channel.
    honest.receive_until(2)


def test_a_file_too_small_for_a_page_is_refused(shared, stack):
    rig = shared()
    fd = os.memfd_create("small")
    stack.callback(os.close, fd)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stack.callback(a.close)
    stack.callback(b.close)
    with pytest.raises(ValueError, match="not a credit page"):
        rig.d.add_worker(a.fileno(), b.fileno(), fd)
    with pytest.raises(ValueError, match="not a credit page"):
        rig.build.receiver.Receiver(b.fileno(), fd)


def test_the_twin_refuses_a_page(impl, stack):
    if impl.backend.dispatcher.CREDIT_SIZE:
        pytest.skip("the Cython build takes a page (tested above)")
    fd = credit_page.create(128)
    stack.callback(os.close, fd)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stack.callback(a.close)
    stack.callback(b.close)
    d = impl.backend.dispatcher.Dispatcher()
    stack.callback(d.close)
    with pytest.raises(ValueError, match="no shared credit page"):
        d.add_worker(a.fileno(), b.fileno(), fd)
    with pytest.raises(ValueError, match="no shared credit page"):
        impl.backend.receiver.Receiver(b.fileno(), fd)
