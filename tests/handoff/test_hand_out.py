"""``Receiver.hand_out``: the data reader's way of taking what the primary
sent, each connection handed to its listener from inside the receiver, in
both builds.  The channel is a real SEQPACKET socketpair written by hand in
the wire format; the connections are real socketpairs, whose other ends show
which were closed.
"""

import os
import socket

import pytest

from tests.handoff.rig import fds_payload, raw_fds_message


class Taker:
    """A listener whose connections an engine's gate takes (``take``)."""

    def __init__(self, fail_on=None):
        self.fds = []
        self._fail_on = fail_on
        self.take = self._take

    def _take(self, fd):
        if len(self.fds) == self._fail_on:
            raise RuntimeError("this gate is broken")
        self.fds.append(fd)


class Deliverer:
    """A listener that makes a socket of each connection (``deliver``)."""

    take = None

    def __init__(self):
        self.fds = []

    def deliver(self, fd):
        self.fds.append(fd)


@pytest.fixture
def channel(stack, build):
    """``(send, receiver)``: ``send(lids)`` sends one FDS message of a new
    connection per listener id and returns their far ends, in order."""
    primary_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stack.callback(primary_end.close)
    receiver = build.receiver.Receiver(worker_end.detach())
    stack.callback(receiver.close)

    def send(lids):
        far, near = [], []
        for _ in lids:
            a, b = socket.socketpair()
            stack.callback(a.close)
            stack.callback(b.close)
            far.append(a)
            near.append(b)
        primary_end.sendmsg(*raw_fds_message(fds_payload(lids), [b.fileno() for b in near]))
        for b in near:
            b.close()             # the message in flight holds each connection now
        return far
    return send, receiver


def closed(far):
    """Is the connection whose far end is ``far`` closed on the worker's side?"""
    far.settimeout(5)
    return far.recv(1) == b""


def adopt(stack, fds):
    for fd in fds:
        stack.callback(socket.socket(fileno=fd).close)


@pytest.mark.parametrize("lids, expected", [
    # (listener ids in one message) -> (taken, later, dropped)
    ([1, 1, 1], (3, False, 0)),       # all to a gate: read in this pass
    ([1, 2, 1], (3, True, 0)),        # one to a transport: read in the next
    ([2, 3, 1], (2, True, 1)),        # 3 is no listener here: closed
    ([3, 3], (0, False, 2)),
])
def test_each_connection_goes_to_its_listener(stack, channel, lids, expected):
    send, receiver = channel
    taker, deliverer = Taker(), Deliverer()
    far = send(lids)
    taken, later, dropped, ended = receiver.hand_out(0, {1: taker, 2: deliverer})
    adopt(stack, taker.fds + deliverer.fds)
    assert (taken, later, dropped, ended) == (*expected, False)
    assert len(taker.fds) == lids.count(1) and len(deliverer.fds) == lids.count(2)
    assert receiver.received == len(lids)
    for lid, end in zip(lids, far):
        if lid == 3:
            assert closed(end), "a connection for no listener must be closed"
    # The ones handed out are the listeners', open, each its own connection.
    for fds, lid in ((taker.fds, 1), (deliverer.fds, 2)):
        ends = [end for each, end in zip(lids, far) if each == lid]
        for fd, end in zip(fds, ends):
            os.write(fd, b"x")
            end.settimeout(5)
            assert end.recv(1) == b"x"


def test_a_listener_that_raises_loses_no_connection_after_it(stack, channel):
    send, receiver = channel
    taker = Taker(fail_on=1)          # the second connection it is given fails
    far = send([1, 1, 1, 1])
    with pytest.raises(RuntimeError, match="this gate is broken"):
        receiver.hand_out(0, {1: taker})
    adopt(stack, taker.fds)
    assert len(taker.fds) == 1
    # The one it raised on is the listener's (it had the fd); the two after it
    # are closed, not leaked.
    assert closed(far[2]) and closed(far[3])


def test_at_most_max_msgs_messages_and_the_rest_left_unread(stack, channel):
    send, receiver = channel
    taker = Taker()
    send([1, 1])
    send([1])
    assert receiver.hand_out(1, {1: taker}) == (2, False, 0, False)
    assert receiver.hand_out(1, {1: taker}) == (1, False, 0, False)
    assert receiver.hand_out(1, {1: taker}) == (0, False, 0, False)
    adopt(stack, taker.fds)
