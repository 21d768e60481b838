"""The primary's hand-off, driven directly, in both builds.

With the worker's end of the data channel given to ``add_worker`` (as the
arbiter does, and as it must), the primary closes its copy of each
connection as soon as it is sent, and takes back from that end whatever a
dead worker never read.
Also here: the edge-triggered listener accepting what waited for credit, and
acks read many to a call.  The rig is ``test_dispatch``'s.
"""

import errno
import os
import resource
import socket

import pytest

from fastfork.handoff.fdpass import cmsg_space, unpack_fds
from fastfork.handoff.wire import HEADER, LID, MSG_ACK, MSG_FDS, SCM_MAX_FD
from tests.handoff.rig import Rig, backlog_len, fd_room, open_fds, recv_exactly, wait_for


@pytest.fixture
def handoff(stack, impl):
    def make(**options):
        return Rig(stack, impl.backend, **options)
    return make


def tags(conns):
    return [recv_exactly(sock, 1)[0] for _, sock in conns]


def read_one_message(worker):
    """Take one FDS message off ``worker``'s end by hand, as a worker that read
    it and then died would have: its fds are the test's now (returned)."""
    with socket.socket(fileno=os.dup(worker.receiver.fileno())) as end:
        data, anc, _, _ = end.recvmsg(HEADER.size + LID.size * SCM_MAX_FD,
                                      cmsg_space(SCM_MAX_FD))
    fds = unpack_fds(anc)
    assert HEADER.unpack_from(data) == (MSG_FDS, len(fds))
    return [worker.rig.adopt(fd) for fd in fds]


def test_the_primary_keeps_no_copy_once_sent(handoff):
    rig = handoff(window=8)
    worker = rig.add_worker()
    clients = rig.connect(3)
    rig.poll_until(lambda: rig.d.dispatched == 3, "3 dispatched")
    # Sent, not yet received: in flight for credit, but no fd held here.
    assert rig.d.worker_stats(worker.slot) == (3, 3)
    assert rig.d.held_fds() == 0
    conns = worker.receive_until(3)
    assert tags(conns) == [0, 1, 2]
    for (_, sock), client in zip(conns, clients):
        sock.sendall(b"ok")
        assert recv_exactly(client, 2) == b"ok"
    rig.poll_until(lambda: rig.d.worker_stats(worker.slot) == (3, 0), "the ack")


def test_what_a_dead_worker_never_read_goes_to_another_in_order(handoff):
    rig = handoff(window=8)
    dead = rig.add_worker()
    clients = rig.connect(4)
    rig.poll_until(lambda: rig.d.dispatched == 4, "4 dispatched")
    dead.die()                  # its process is gone; its end stays open in the primary
    healthy = rig.add_worker()
    assert rig.d.pop_closed() == []         # no EOF: the primary holds the worker's end
    rig.d.remove_worker(dead.slot)          # what the arbiter does once it reaps it
    assert rig.d.stats()["pending"] + rig.d.dispatched >= 4
    conns = healthy.receive_until(4)
    assert tags(conns) == [0, 1, 2, 3]
    assert rig.d.redispatched == 4
    conns[2][1].sendall(b"third")
    assert recv_exactly(clients[2], 5) == b"third"
    assert rig.d.held_fds() == 0


def test_what_the_worker_read_is_not_sent_twice(handoff):
    rig = handoff(window=8)
    dead = rig.add_worker()
    clients = rig.connect(1)
    rig.poll_until(lambda: rig.d.dispatched == 1, "the first dispatched")
    clients += rig.connect(2)
    rig.poll_until(lambda: rig.d.dispatched == 3, "the next two dispatched")
    # The first went in a message of its own, which the worker read and then
    # died with: that connection was the worker's, the other two never were.
    [taken] = read_one_message(dead)
    assert recv_exactly(taken, 1) == bytes([0])
    dead.die()
    healthy = rig.add_worker()
    rig.d.remove_worker(dead.slot)
    conns = healthy.receive_until(2)
    assert tags(conns) == [1, 2]
    assert rig.d.redispatched == 2


def test_taking_back_a_full_window_at_the_fd_limit(handoff):
    rig = handoff(window=8)
    dead = rig.add_worker()
    rig.connect(8)
    rig.poll_until(lambda: rig.d.dispatched == 8, "a full window dispatched")
    before = len(open_fds())
    dead.die()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 1, hard))
        while True:                         # no fd left below the limit
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        # Only the spares make room for the eight: none may be dropped.
        rig.d.remove_worker(dead.slot)
        assert rig.d.held_fds() == 8 and rig.d.stats()["pending"] == 8
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    healthy = rig.add_worker()
    assert tags(healthy.receive_until(8)) == list(range(8))
    rig.d.poll(0)
    # Once they went on, the spares are taken again: the dead worker's
    # receiver is gone, the healthy one has three fds (four with its credit
    # page), the eight connections are its own, and the primary holds no
    # connection.
    assert rig.d.held_fds() == 0
    assert len(open_fds()) == before - 1 + (4 if rig.credit else 3) + 8


def test_the_backlog_left_when_credit_ran_out_is_accepted_when_it_returns(handoff):
    # Edge-triggered: no new connection arrives to wake the listener, so the
    # dispatcher itself must come back to the connections the kernel still holds.
    rig = handoff(window=2)
    worker = rig.add_worker()
    rig.connect(5)
    rig.poll_until(lambda: rig.d.dispatched == 2, "one window dispatched")
    wait_for(lambda: backlog_len(rig.listener) == 3, "3 left in the backlog")
    worker.receive_until(2)                 # acks: credit for two more
    rig.poll_until(lambda: rig.d.dispatched == 4, "two more dispatched")
    worker.receive_until(4)
    rig.poll_until(lambda: rig.d.dispatched == 5, "the last dispatched")
    assert tags(worker.receive_until(5)) == [0, 1, 2, 3, 4]
    assert backlog_len(rig.listener) == 0


def test_many_acks_read_in_one_readiness(stack, impl):
    # More separate ACKs than one recvmmsg takes (16): all must count.  ACKs
    # that carry counts are the twin's credit (production under
    # FASTFORK_NO_EXTENSIONS=1), and what the Cython dispatcher reads from a
    # twin's receiver: no credit page here.
    rig = Rig(stack, impl.backend, window=40)
    slot, worker_end = rig.raw_worker()
    rig.d.subscribe(slot, rig.lid)
    rig.connect(37)
    rig.poll_until(lambda: rig.d.dispatched == 37, "37 dispatched")
    received = 0
    worker_end.settimeout(5)
    while received < 37:
        data, anc, _, _ = worker_end.recvmsg(HEADER.size + LID.size * SCM_MAX_FD,
                                             cmsg_space(SCM_MAX_FD))
        for fd in unpack_fds(anc):
            rig.adopt(fd)
            received += 1
    for _ in range(37):
        worker_end.send(HEADER.pack(MSG_ACK, 1))
    rig.poll_until(lambda: rig.d.worker_stats(slot) == (37, 0), "37 acks counted")
    assert rig.d.held_fds() == 0 and rig.d.pop_closed() == []


def test_a_worker_at_its_fd_limit_is_sent_nothing_until_it_has_room(handoff):
    # Issue 24, fault 1.  Past its fd limit a worker gets its fds cut off; it
    # must still give the credit back (else the primary counts it full for
    # good) and say it is at its limit, so that the primary sends elsewhere,
    # and sends to it again once it says it has room.
    rig = handoff(window=8)
    full = rig.add_worker()
    clients = rig.connect(4)
    rig.poll_until(lambda: rig.d.dispatched == 4, "4 sent to the only worker")
    with fd_room(1):
        [(_, first)], _ = full.receive()
    assert recv_exactly(first, 1) == b"\x00"           # the one installed: the first sent
    assert (full.receiver.lost, full.receiver.at_fd_limit) == (3, True)
    rig.poll_until(lambda: rig.d.worker_at_fd_limit(full.slot), "the primary told")
    assert rig.d.worker_stats(full.slot) == (4, 0)      # all four taken: credit back
    # The three the kernel closed: their clients see the connection end.
    for client in clients[1:]:
        try:
            assert recv_exactly(client, 1) == b""
        except ConnectionResetError:
            pass                            # their unread tag byte makes it a reset
    other = rig.add_worker()
    rig.connect(3)
    other.receive_until(3)
    assert rig.d.worker_stats(full.slot) == (4, 0)      # nothing more to the full one
    assert rig.d.worker_at_fd_limit(full.slot) and not rig.d.worker_at_fd_limit(other.slot)
    assert full.receiver.room_again() is True
    rig.poll_until(lambda: not rig.d.worker_at_fd_limit(full.slot), "room again heard")
    rig.connect(2)
    rig.receive_all(1 + 3 + 2)
    assert rig.d.worker_stats(full.slot)[0] == 5        # round-robin: one of the two
    assert recv_exactly(full.conns[-1][1], 1)[0] in (7, 8)


def test_a_forked_child_may_not_use_its_parents_ends(handoff):
    """Both ends refuse a child of fork (each would act on the parent's
    channel), and the parent's keep working: the check reads a pid that each
    fork() sets again in the child, not getpid() per call."""
    rig = handoff(window=8)
    worker = rig.add_worker()
    rig.connect(1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                  # the child: report what each end did, then leave
        results = []
        for use in (lambda: worker.receiver.receive(), lambda: rig.d.poll(0)):
            try:
                use()
                results.append("used")
            except RuntimeError as exc:
                results.append("refused" if "parent process" in str(exc) else repr(exc))
            except BaseException as exc:
                results.append(repr(exc))
        os.write(write, ",".join(results).encode())
        os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            reported = pipe.read().decode()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reported == "refused,refused"
    conns = worker.receive_until(1)
    assert tags(conns) == [0]
