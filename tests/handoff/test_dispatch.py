"""Dispatcher and Receiver driven directly, against both implementations.

No fork: the workers' data channels are socketpairs in this process, the
listener is a real TCP socket on 127.0.0.1 and the clients really connect.
The rig runs the production mode: the dispatcher gets each worker's end of
the channel (as the arbiter keeps it) and, in the Cython build, a shared
credit page.  Every wait polls for a condition with a deadline.
"""

import contextlib
import errno
import gc
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from fastfork.handoff.wire import (BATCH_BUCKETS, DEFAULT_WINDOW, HEADER, MSG_ACK, MSG_CLOSED,
                                    MSG_END, MSG_FDS, MSG_LIMIT, ProtocolError, encode_end)
from tests.handoff.rig import (DEADLINE, Rig, backlog_len, fd_room, fds_payload, open_fds,
                              raw_fds_message, recv_exactly, wait_for)
from tests.implementations import Impl

def test_round_robin_across_three_workers(rig_factory):
    rig = rig_factory(window=8)
    workers = [rig.add_worker() for _ in range(3)]
    rig.connect(6)
    rig.poll_until(lambda: rig.d.dispatched == 6, "6 dispatched")
    for index, worker in enumerate(workers):
        assert rig.d.worker_stats(worker.slot) == (2, 2)
        conns = worker.receive_until(2)
        tags = sorted(recv_exactly(sock, 1)[0] for _, sock in conns)
        assert tags == [index, index + 3]
        assert {lid for lid, _ in conns} == {rig.lid}
    assert rig.d.stats()["accepted"] == 6


def read_batches(sock):
    """Raw recvmsg on a worker's end: the fd count of each message waiting there."""
    sizes = []
    sock.setblocking(False)
    while True:
        try:
            data, anc, flags, _ = sock.recvmsg(1024, socket.CMSG_SPACE(253 * 4))
        except BlockingIOError:
            return sizes
        kind, count = HEADER.unpack_from(data)
        assert kind == MSG_FDS and not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
        fds = list(struct.unpack(f"{len(anc[0][2]) // 4}i", anc[0][2]))
        assert len(fds) == count
        for fd in fds:
            os.close(fd)
        sizes.append(count)


@pytest.mark.parametrize("batch_max, expected, counts", [
    (64, [5], (0, 0, 0, 1, 0, 0, 0, 0, 0)),       # one message of 5: the 5..8 bucket
    (2, [2, 2, 1], (1, 2, 0, 0, 0, 0, 0, 0, 0)),
])
def test_pending_connections_to_one_worker_go_in_one_message(stack, build, batch_max, expected,
                                                             counts):
    rig = Rig(stack, build, window=8, batch_max=batch_max)
    slot, b = rig.raw_worker()
    rig.connect(5)
    wait_for(lambda: backlog_len(rig.listener) == 5, "5 connections in the backlog")
    rig.d.subscribe(slot, rig.lid)
    assert rig.d.batch_counts() == (0,) * len(BATCH_BUCKETS)
    rig.poll_until(lambda: rig.d.dispatched == 5, "5 dispatched")
    assert read_batches(b) == expected
    # What the metrics' batch-size histogram reads.
    assert rig.d.batch_counts() == counts


def test_credit_window_stops_dispatch_and_leaves_the_backlog(rig_factory):
    rig = rig_factory(window=2)
    worker = rig.add_worker()
    rig.connect(5)
    rig.poll_until(lambda: rig.d.dispatched == 2, "2 dispatched")
    wait_for(lambda: backlog_len(rig.listener) == 3, "3 connections left in the backlog")
    # No credit: the listener is disarmed, so poll sleeps its whole timeout
    # instead of waking for a readable listener it would not accept from.
    start = time.monotonic()
    assert rig.d.poll(300) == []
    assert time.monotonic() - start >= 0.25
    # Sent: held by their message, not by the primary.
    assert rig.d.accepted == 2 and rig.d.held_fds() == 0
    assert rig.d.worker_stats(worker.slot) == (2, 2)
    assert backlog_len(rig.listener) == 3
    # The worker acknowledges: credit comes back and the backlog drains.
    # (poll keeps dispatching until its timeout, so the fifth may follow at once)
    worker.receive_until(4)
    rig.poll_until(lambda: rig.d.dispatched >= 4, "4 dispatched")
    assert backlog_len(rig.listener) <= 1
    worker.receive_until(5)
    rig.poll_until(lambda: rig.d.worker_stats(worker.slot) == (5, 0), "all acknowledged")
    assert sorted(recv_exactly(s, 1)[0] for _, s in worker.conns) == [0, 1, 2, 3, 4]


def test_remove_worker_redispatches_what_it_never_took(rig_factory):
    rig = rig_factory(window=8)
    frozen, healthy = rig.add_worker(), rig.add_worker()
    [client] = rig.connect(1)
    rig.poll_until(lambda: rig.d.dispatched == 1, "1 dispatched")
    assert rig.d.worker_stats(frozen.slot) == (1, 1)
    # Never taken: read back from the frozen worker's end, to the other worker.
    rig.d.remove_worker(frozen.slot)
    assert rig.d.redispatched == 1
    assert rig.d.worker_stats(healthy.slot) == (1, 1)
    with pytest.raises(KeyError):
        rig.d.worker_stats(frozen.slot)
    frozen.die()
    [(lid, sock)] = healthy.receive_until(1)
    assert lid == rig.lid
    assert recv_exactly(sock, 1) == b"\x00"
    sock.sendall(b"via the second worker")
    assert recv_exactly(client, 21) == b"via the second worker"
    client.sendall(b"and back")
    assert recv_exactly(sock, 8) == b"and back"
    rig.poll_until(lambda: rig.d.worker_stats(healthy.slot) == (1, 0), "the ack")
    assert rig.d.held_fds() == 0
    # A removed worker is not reported closed (its removal is the caller's
    # doing), and its slot is free again for a replacement.
    assert rig.d.pop_closed() == []
    assert rig.add_worker().slot == frozen.slot


def test_retire_sends_end(rig_factory):
    rig = rig_factory(window=8)
    old, new = rig.add_worker(), rig.add_worker()
    rig.connect(1)
    rig.poll_until(lambda: rig.d.dispatched == 1, "1 dispatched")
    rig.d.retire_worker(old.slot)
    got, ended = old.receive()              # the connection, then END, in one drain
    assert len(got) == 1 and ended and old.receiver.ended
    assert old.receive() == ([], True)
    rig.poll_until(lambda: rig.d.worker_stats(old.slot)[1] == 0, "the retired worker's ack")
    rig.connect(2)
    rig.poll_until(lambda: rig.d.dispatched == 3, "3 dispatched")
    assert rig.d.worker_stats(old.slot) == (1, 0)
    assert rig.d.worker_stats(new.slot) == (2, 2)
    rig.d.retire_worker(old.slot)           # twice is harmless
    assert rig.d.pop_closed() == []


@pytest.mark.parametrize("message", [
    pytest.param(b"\x03\x00", id="short"),
    pytest.param(HEADER.pack(MSG_ACK, 2), id="more-than-in-flight"),
    pytest.param(HEADER.pack(MSG_FDS, 0), id="wrong-type"),
    pytest.param(HEADER.pack(MSG_ACK, 1) + b"\x00" * 4, id="too-long"),
    pytest.param(b"\x03" * 100, id="oversized"),
    pytest.param(HEADER.pack(MSG_LIMIT, 2), id="limit-neither-0-nor-1"),
])
def test_malformed_ack_closes_the_slot(rig_factory, message):
    rig = rig_factory(window=8)
    slot, b = rig.raw_worker()
    rig.d.subscribe(slot, rig.lid)
    [client] = rig.connect(1)
    rig.poll_until(lambda: rig.d.dispatched == 1, "1 dispatched")
    b.send(message)
    closed = []
    rig.poll_until(lambda: closed.extend(rig.d.pop_closed()) or closed, "the slot closed")
    assert closed == [slot]
    # Its connection, never read, is taken back from its end and waits for
    # another worker.
    assert rig.d.held_fds() == 1 and rig.d.stats()["pending"] == 1
    rig.d.remove_worker(slot)
    replacement = rig.add_worker()
    [(_, sock)] = replacement.receive_until(1)
    assert rig.d.redispatched == 1
    sock.sendall(b"x")
    assert recv_exactly(client, 1) == b"x"


def test_remove_listener_drops_what_waits_for_it(rig_factory):
    rig = rig_factory(window=8)
    worker = rig.add_worker()
    [client] = rig.connect(1, tag=False)    # unread data would turn the close into a reset
    rig.poll_until(lambda: rig.d.dispatched == 1, "1 dispatched")
    worker.die()
    rig.d.remove_worker(worker.slot)        # nobody else to take it: it waits
    assert rig.d.stats()["pending"] == 1 and rig.d.held_fds() == 1
    rig.d.remove_listener(rig.lid)
    assert rig.d.held_fds() == 0
    assert recv_exactly(client, 1) == b""  # closed: nobody can serve it
    with pytest.raises(KeyError):
        rig.d.remove_listener(rig.lid)
    with pytest.raises(KeyError):
        rig.d.subscribe(worker.slot, rig.lid)


# -- the receiver ---------------------------------------------------------------------------

@pytest.fixture
def channel(stack, build):
    """(raw primary end, Receiver on the worker end)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stack.callback(a.close)
    receiver = build.receiver.Receiver(b.detach())
    stack.callback(receiver.close)
    return a, receiver


@pytest.mark.parametrize("payload, nfds", [
    pytest.param(fds_payload([0], count=2), 1, id="fewer-fds-than-announced"),
    pytest.param(fds_payload([0, 0], count=1), 1, id="more-lids-than-announced"),
    pytest.param(fds_payload([0]), 2, id="more-fds-than-announced"),
    pytest.param(fds_payload([0])[:5], 1, id="cut-lid"),
    pytest.param(b"\x09\x00\x01\x00\x00\x00", 1, id="unknown-type"),
    pytest.param(b"\x01\x00", 1, id="short"),
    pytest.param(b"", 1, id="empty-with-fds"),
    pytest.param(HEADER.pack(MSG_END, 0), 1, id="end-with-fds"),
    pytest.param(HEADER.pack(MSG_END, 3), 0, id="end-with-count"),
    pytest.param(fds_payload([0]) + b"\x00" * 600, 1, id="truncated"),
])
def test_receiver_rejects_malformed_messages_and_closes_fds(channel, payload, nfds):
    a, receiver = channel
    baseline = open_fds()
    # A good message first: what it brought is closed too, and not acknowledged.
    good_r, good_w = os.pipe()
    a.sendmsg(*raw_fds_message(fds_payload([0]), [good_r]))
    pipes = [os.pipe() for _ in range(nfds)]
    a.sendmsg(*raw_fds_message(payload, [r for r, _ in pipes]))
    for fd in [good_r, good_w] + [fd for pair in pipes for fd in pair]:
        os.close(fd)
    with pytest.raises(ProtocolError):
        receiver.receive()
    assert open_fds() == baseline
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        a.recv(64)                          # no ACK


def test_receiver_acks_once_for_everything_drained(channel):
    a, receiver = channel
    pipes = [os.pipe() for _ in range(5)]
    for lids, start in (([1, 2], 0), ([3], 2), ([4, 5], 3)):
        a.sendmsg(*raw_fds_message(fds_payload(lids),
                                   [pipes[start + i][0] for i in range(len(lids))]))
    try:
        pairs, ended = receiver.receive()
        assert [lid for lid, _ in pairs] == [1, 2, 3, 4, 5] and not ended
        assert receiver.received == 5
        for (_, fd), (_, w) in zip(pairs, pipes):
            assert os.get_inheritable(fd) is False          # received close-on-exec
            os.write(w, b"!")
            assert os.read(fd, 1) == b"!"
            os.close(fd)
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    assert a.recv(64) == HEADER.pack(MSG_ACK, 5)
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        a.recv(64)
    assert receiver.receive() == ([], False)
    a.close()
    assert receiver.receive() == ([], True)       # EOF ends it too
    assert receiver.ended


# max_msgs per receive() -> the listener ids each call takes, from 20
# one-connection messages (ids 0..19) then END.  20 is more than one recvmmsg
# reads (16), so a limit is kept across calls of the syscall too.
BOUNDED = {
    "one at a time": ([1, 1, 1], [[0], [1], [2]]),
    "past one recvmmsg": ([18, 0], [list(range(18)), [18, 19]]),
    "all, then the END is read": ([0], [list(range(20))]),
    "the END is a message too": ([20, 1], [list(range(20)), []]),
}


@pytest.mark.parametrize("limits, taken", list(BOUNDED.values()), ids=list(BOUNDED))
def test_receiver_takes_at_most_max_msgs_and_leaves_the_rest_queued(channel, limits, taken):
    # A worker whose loop is busy takes one message a pass: the rest stay in
    # the channel, where the primary can take them back if the loop blocks.
    a, receiver = channel
    pipes = [os.pipe() for _ in range(20)]
    try:
        for lid, (r, _) in enumerate(pipes):
            a.sendmsg(*raw_fds_message(fds_payload([lid]), [r]))
        a.send(encode_end())
        for limit, expected in zip(limits, taken):
            pairs, ended = receiver.receive(limit)
            for _, fd in pairs:
                os.close(fd)
            assert [lid for lid, _ in pairs] == expected
            assert receiver.received == sum(len(t) for t in taken[:taken.index(expected) + 1])
            assert ended == (limit == 0 or expected == [])
            assert sent_back(a) == ([(MSG_ACK, len(expected))] if expected else [])
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
    with pytest.raises(ValueError, match="max_msgs must be >= 0"):
        receiver.receive(-1)


def sent_back(sock):
    """The messages a receiver sent to the primary's end ``sock``, as (type, count)."""
    sock.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(HEADER.unpack(sock.recv(64)))
        except BlockingIOError:
            return messages


# (fds per message, the room the receiving process has, whether END follows)
# -> (listener ids delivered, connections lost).  Listener id = position sent.
CUT_OFF = {
    "one message, room for one": ([3], 1, False, [0], 2),
    "one message, no room at all": ([3], 0, False, [], 3),
    "the first fits, the second finds none": ([2, 3], 2, False, [0, 1], 3),
    "the second is cut part-way": ([1, 3], 2, False, [0, 1], 2),
    "END after a cut-off message still ends": ([3], 1, True, [0], 2),
}


@pytest.mark.parametrize("sizes, room, end, delivered, lost", list(CUT_OFF.values()),
                         ids=list(CUT_OFF))
def test_receiver_takes_a_cut_off_message_and_counts_it_lost(channel, sizes, room, end,
                                                            delivered, lost):
    # Past the worker's fd limit the kernel installs what it can, closes the
    # rest and sets MSG_CTRUNC.  The message is still the primary's: all its
    # connections are taken (the credit goes back), the cut-off ones lost,
    # and the primary is told, before that credit, to send nothing more.
    a, receiver = channel
    pipes, lid = [], 0
    for size in sizes:
        ends = [os.pipe() for _ in range(size)]
        pipes += ends
        a.sendmsg(*raw_fds_message(fds_payload(range(lid, lid + size)), [r for r, _ in ends]))
        lid += size
    if end:
        a.send(encode_end())
    for fd in [fd for pair in pipes for fd in pair]:
        os.close(fd)        # the message in flight holds the read ends
    with fd_room(room):
        pairs, ended = receiver.receive()
    try:
        assert [lid for lid, _ in pairs] == delivered and ended == end
        assert (receiver.received, receiver.lost, receiver.at_fd_limit) == (
            len(delivered), lost, True)
    finally:
        for _, fd in pairs:
            os.close(fd)
    total = sum(sizes)
    assert sent_back(a) == [(MSG_LIMIT, 1), (MSG_ACK, total)]
    # Room again: the caller says so, the primary hears it once.
    assert receiver.room_again() is True and not receiver.at_fd_limit
    assert receiver.room_again() is False
    assert sent_back(a) == [(MSG_LIMIT, 0)]


def test_receiver_keeps_an_ack_the_full_channel_refused(channel):
    # A lost ACK would be credit the primary never gets back (it would count
    # the worker full until it died): it is kept and sent by flush().
    a, receiver = channel
    while not receiver.report_closed(1):    # nobody reads: fill the buffer
        pass
    r, w = os.pipe()
    a.sendmsg(*raw_fds_message(fds_payload([7]), [r]))
    os.close(r)
    os.close(w)
    [(lid, fd)] = receiver.receive()[0]
    os.close(fd)
    assert lid == 7
    assert receiver.flush() is True          # still full: held back
    backlog = sent_back(a)                   # the primary catches up
    assert backlog and set(backlog) == {(MSG_CLOSED, 1)}
    assert receiver.flush() is False
    assert sent_back(a) == [(MSG_ACK, 1)]
    assert receiver.flush() is False and sent_back(a) == []


def test_receiver_fileno_and_close(build):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a:
        fd = b.detach()
        receiver = build.receiver.Receiver(fd)
        assert receiver.fileno() == fd
        receiver.close()
        receiver.close()
        assert receiver.fileno() == -1
        with pytest.raises(OSError):
            os.fstat(fd)
        with pytest.raises(ValueError):
            receiver.receive()
    r, w = os.pipe()
    try:
        with pytest.raises(OSError):
            build.receiver.Receiver(r)                 # not a socket
    finally:
        os.close(r)
        os.close(w)


# -- lifetime -------------------------------------------------------------------------------

def test_close_leaves_no_fd_behind(stack, build):
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    stack.callback(listener.close)
    ends = []
    for _ in range(2):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stack.callback(a.close)
        stack.callback(b.close)
        ends.append((a, b))
    clients = [socket.create_connection(listener.getsockname(), timeout=DEADLINE)
               for _ in range(4)]
    for client in clients:
        stack.callback(client.close)
    baseline = open_fds()
    d = build.dispatcher.Dispatcher(window=2, stall_ms=0)    # nobody reads: no stalls
    stack.callback(d.close)
    lid = d.add_listener(listener.fileno())
    slots = [d.add_worker(a.fileno(), b.fileno()) for a, b in ends]
    for slot in slots:
        d.subscribe(slot, lid)
    wait_for(lambda: d.dispatched == 4, "4 dispatched", step=lambda: d.poll(5))
    assert d.held_fds() == 0                # all 4 held by their messages
    d.remove_worker(slots[1])               # its 2 read back: no other worker has credit
    assert d.held_fds() == 2 and d.stats()["pending"] == 2
    d.close()
    d.close()
    # The 2 read back are closed; the 2 still queued to the other worker
    # are its channel's, not fds of this process.
    assert open_fds() == baseline
    for sock in [listener] + [a for a, _ in ends]:
        os.fstat(sock.fileno())             # the caller's sockets are still open
    with pytest.raises(ValueError):
        d.poll(0)


def test_close_without_registrations(build):
    baseline = open_fds()
    d = build.dispatcher.Dispatcher()
    # The epoll fd, and one window of spares kept for taking connections back.
    assert len(open_fds() - baseline) == 1 + DEFAULT_WINDOW
    d.close()
    assert open_fds() == baseline


def test_dropping_an_unclosed_dispatcher_keeps_the_callers_fds(stack, build):
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    stack.callback(listener.close)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stack.callback(a.close)
    stack.callback(b.close)
    client = socket.create_connection(listener.getsockname(), timeout=DEADLINE)
    stack.callback(client.close)
    baseline = open_fds()
    d = build.dispatcher.Dispatcher(window=4, stall_ms=0)    # nobody reads: no stalls
    slot = d.add_worker(a.fileno(), b.fileno())
    d.subscribe(slot, d.add_listener(listener.fileno()))
    wait_for(lambda: d.dispatched == 1, "1 dispatched", step=lambda: d.poll(5))  # noqa: F821 (read before the del)
    d.remove_worker(slot)                   # read back: now the primary holds it
    assert d.held_fds() == 1
    del d                                   # never closed
    gc.collect()
    # Its epoll fd and its copy of the connection are gone; the caller's
    # listener and channel are not.
    assert open_fds() == baseline


def test_bad_arguments(stack, build):
    with pytest.raises(ValueError):
        build.dispatcher.Dispatcher(window=0)
    with pytest.raises(ValueError):
        build.dispatcher.Dispatcher(batch_max=254)
    with pytest.raises(ValueError):
        build.dispatcher.Dispatcher(pause_ms=-1)
    with pytest.raises(ValueError, match="stall_ms must be >= 0"):
        build.dispatcher.Dispatcher(stall_ms=-1)
    rig = Rig(stack, build)
    worker = rig.add_worker()
    with pytest.raises(FileExistsError):
        rig.d.add_listener(rig.listener.fileno())      # already registered
    with pytest.raises(FileExistsError):
        rig.d.watch(worker.primary_end.fileno())
    with pytest.raises(KeyError):
        rig.d.subscribe(worker.slot, rig.lid + 1)
    with pytest.raises(KeyError):
        rig.d.remove_worker(worker.slot + 1)
    with pytest.raises(TypeError):
        rig.d.add_worker(worker.primary_end.fileno())   # no peer: there is no such mode
    with pytest.raises(ValueError, match="peer must be the worker's end"):
        rig.d.add_worker(worker.primary_end.fileno(), -1)
    r, w = os.pipe()
    try:
        with pytest.raises(OSError):
            rig.d.add_worker(r, worker.peer)            # not a socket
        with pytest.raises(OSError):
            rig.d.add_worker(worker.primary_end.fileno(), r)   # a peer that is not one
    finally:
        os.close(r)
        os.close(w)
    # Nothing above broke the state.
    [client] = rig.connect(1)
    [(_, sock)] = worker.receive_until(1)
    sock.sendall(b"!")
    assert recv_exactly(client, 1) == b"!"


def test_watch_reports_readable_fds(rig_factory):
    rig = rig_factory()
    r, w = os.pipe()
    rig.stack.callback(os.close, r)
    rig.stack.callback(os.close, w)
    rig.d.watch(r)
    assert rig.d.poll(0) == []
    os.write(w, b"x")
    assert rig.d.poll(1000) == [r]
    rig.d.unwatch(r)
    rig.d.unwatch(r)
    start = time.monotonic()
    assert rig.d.poll(50) == []
    assert time.monotonic() - start >= 0.04


def test_forked_child_must_not_use_it(rig_factory):
    rig = rig_factory()
    rig.add_worker()
    pid = os.fork()
    if pid == 0:                            # pragma: no cover (child)
        code = 1
        try:
            for call in (lambda: rig.d.poll(0), lambda: rig.d.add_worker(3, 4),
                         lambda: rig.d.subscribe(0, 0), lambda: rig.d.retire_worker(0),
                         lambda: rig.d.watch(0), lambda: rig.d.stats()):
                try:
                    call()
                except RuntimeError:
                    continue
                os._exit(2)
            rig.d.close()                   # allowed, and closes only the child's copies
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rig.connect(1)                          # the parent's dispatcher is intact
    rig.workers[0].receive_until(1)


def test_out_of_fds_pauses_without_spinning(rig_factory):
    rig = rig_factory(window=8, pause_ms=1000)
    worker = rig.add_worker()
    rig.connect(2)
    wait_for(lambda: backlog_len(rig.listener) == 2, "2 connections in the backlog")
    with fd_room(0):
        rig.d.poll(100)
        assert rig.d.pauses == 1 and rig.d.last_pause_errno == errno.EMFILE
        assert rig.d.stats()["paused"] and rig.d.accepted == 0
        # While paused the listeners are disarmed: poll sleeps out its timeout
        # instead of waking for the readable listener (a spinning poll would
        # burn the whole 300 ms of CPU; the bound is generous on purpose).
        before = resource.getrusage(resource.RUSAGE_SELF)
        rig.d.poll(300)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert cpu < 0.1, f"poll used {cpu:.3f}s of CPU while paused"
        assert rig.d.pauses == 1 and rig.d.accepted == 0
    assert backlog_len(rig.listener) == 2
    worker.receive_until(2)
    assert rig.d.accepted == 2 and rig.d.stats()["last_pause_errno"] == errno.EMFILE


# -- signals --------------------------------------------------------------------------------

class Boom(Exception):
    pass


@contextlib.contextmanager
def signalling(handler):
    """Install ``handler`` for SIGUSR1 and send SIGUSR1 to this thread every 20 ms
    until the block ends; restore the old handler afterwards."""
    old = signal.signal(signal.SIGUSR1, handler)
    done = threading.Event()
    main = threading.get_ident()

    def pester():
        while not done.wait(0.02):
            signal.pthread_kill(main, signal.SIGUSR1)

    thread = threading.Thread(target=pester)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        signal.signal(signal.SIGUSR1, old)
    assert signal.getsignal(signal.SIGUSR1) is old


def test_signal_handler_exception_propagates_from_poll(rig_factory):
    rig = rig_factory()
    rig.add_worker()
    raised = []

    def handler(signum, frame):
        if not raised:                      # once: never inside the cleanup
            raised.append(signum)
            raise Boom()

    start = time.monotonic()
    with pytest.raises(Boom):
        with signalling(handler):
            while time.monotonic() - start < DEADLINE:
                rig.d.poll(DEADLINE * 1000)
    assert time.monotonic() - start < DEADLINE
    rig.connect(1)
    rig.workers[0].receive_until(1)         # still usable


def test_c_poll_returns_early_on_a_signal(stack):
    # The Cython build returns from poll() after EINTR so the caller's loop can
    # act on what its handlers recorded; the twin retries (PEP 475) and relies
    # on a watched wakeup fd instead.
    rig = Rig(stack, Impl("c").backend)
    seen = []
    start = time.monotonic()
    with signalling(lambda signum, frame: seen.append(signum)):
        assert rig.d.poll(DEADLINE * 1000) == []
    assert seen and time.monotonic() - start < DEADLINE


# -- the two builds together -------------------------------------------------------------------

@pytest.mark.parametrize("dispatcher, receiver", [("c", "py"), ("py", "c")],
                         ids=["c-dispatch-py-receiver", "py-dispatch-c-receiver"])
def test_interop(stack, dispatcher, receiver):
    # No credit page: the twin has none, so credit comes back in ACK messages.
    # That is the production path under FASTFORK_NO_EXTENSIONS=1 (the twin on
    # both ends); the Cython build keeps it so that it can serve the twin's
    # receiver, which is what this test mixes.
    rig = Rig(stack, Impl(dispatcher).backend, Impl(receiver).backend, credit=False, window=2)
    workers = [rig.add_worker(), rig.add_worker()]
    clients = rig.connect(6)
    rig.receive_all(6)
    rig.poll_until(lambda: all(rig.d.worker_stats(w.slot)[1] == 0 for w in workers),
                   "all acknowledged")
    for worker in workers:
        for _, sock in worker.conns:
            tag = recv_exactly(sock, 1)[0]
            sock.sendall(b"hi %d" % tag)
            assert recv_exactly(clients[tag], 4) == b"hi %d" % tag
        rig.d.retire_worker(worker.slot)
        assert worker.receive() == ([], True)
    assert rig.d.stats() == {"accepted": 6, "dispatched": 6, "redispatched": 0,
                             "pending": 0, "pauses": 0, "last_pause_errno": 0,
                             "paused": False, "stalls": 0, "taken_back": 0, "stalled": 0}


@pytest.mark.parametrize("dispatcher, receiver", [("c", "py"), ("py", "c")],
                         ids=["c-dispatch-py-receiver", "py-dispatch-c-receiver"])
def test_interop_fd_limit(stack, dispatcher, receiver):
    # The LIMIT messages, as the twin sends them (no page: see test_interop).
    rig = Rig(stack, Impl(dispatcher).backend, Impl(receiver).backend, credit=False, window=4)
    worker = rig.add_worker()
    rig.connect(2)
    rig.poll_until(lambda: rig.d.dispatched == 2, "2 dispatched")
    with fd_room(0):
        assert worker.receive() == ([], False)
    rig.poll_until(lambda: rig.d.worker_at_fd_limit(worker.slot), "LIMIT 1 read")
    assert rig.d.worker_stats(worker.slot) == (2, 0) and worker.receiver.lost == 2
    worker.receiver.room_again()
    rig.poll_until(lambda: not rig.d.worker_at_fd_limit(worker.slot), "LIMIT 0 read")
    rig.connect(1)
    worker.receive_until(1)


# -- garbage collection ---------------------------------------------------------------------

GC_CYCLE = """
import gc, os, socket
from fastfork.handoff._c import dispatcher as _cdispatch

listener = socket.create_server(("127.0.0.1", 0))
d = _cdispatch.Dispatcher()                 # tracked first: cleared first below
d.add_listener(listener.fileno())
primary_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
slot = d.add_worker(primary_end.fileno(), worker_end.fileno())
d.subscribe(slot, 0)
client = socket.create_connection(listener.getsockname())
while d.stats()["dispatched"] < 1:
    d.poll(100)
d.remove_worker(slot)                       # never read: the connection goes back
assert d.stats()["pending"] == 1            # to the pending queue, held there
garbage = [d]
garbage.append(garbage)                     # d is now reachable only from a cycle
del d, garbage
gc.collect()                                # tp_clear on d, then its __dealloc__
client.settimeout(5)
print("closed" if client.recv(1) == b"" else "open", flush=True)
"""


def test_c_dispatcher_collected_from_a_cycle_closes_what_it_held():
    # The collector used to clear the Dispatcher's Python fields (None) before
    # its __dealloc__ ran, which then used None as the pending queue: a write
    # past Py_None (a crash later, in whatever touched None) and a leaked fd.
    impl = Impl("c")
    impl.backend                           # fails (or skips) without the build
    out = subprocess.run([sys.executable, "-X", "faulthandler", "-c", GC_CYCLE],
                         env=impl.env(), capture_output=True, text=True, timeout=DEADLINE * 2)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "closed\n"
