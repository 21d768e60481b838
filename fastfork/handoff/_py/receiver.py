"""The worker's end of the data channel, in Python: the twin of ``_c/receiver.pyx``."""

import os
import socket

from ..fdpass import cmsg_space, unpack_fds
from ..wire import (MAX_COUNT, MSG_ACK, MSG_CLOSED, RECV_BUF, SCM_MAX_FD, ProtocolError,
                    encode_count, encode_limit, parse_to_worker)

_CMSG_SPACE = cmsg_space(SCM_MAX_FD)


def borrow(fd):
    """A non-blocking socket object around ``fd`` (raises for a non-socket, like
    the Cython build's SO_TYPE check)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.setblocking(False)
    except BaseException:
        sock.detach()
        raise
    return sock


def _no_credit(credit_fd):
    if credit_fd != -1:
        raise ValueError("the pure-Python implementation has no shared credit page "
                         "(CREDIT_SIZE is 0): pass credit_fd=-1")


class Receiver:
    """The worker's end of the data channel: receive fd batches, acknowledge them.

    Owns ``fd``: ``close()`` closes it.  No shared credit page here (see
    ``dispatcher``): ``credit_fd`` must be -1, and ACKs carry the counts.

    At its fd limit the worker gets messages whose fds the kernel cut off
    (``wire``): their connections are taken all the same (credit goes back)
    and the cut-off ones counted in ``lost``; ``at_fd_limit`` is then True,
    the primary is told to send nothing, until the caller, having found room
    again, calls ``room_again()``.
    """

    wakeups = 0          # as the Cython Receiver's: no wake-up ACKs without a page

    def __init__(self, fd, credit_fd=-1):
        _no_credit(credit_fd)
        self._pid = os.getpid()
        self._sock = borrow(fd)
        self.received = 0         # connections delivered by receive()
        self.lost = 0             # connections whose fds the kernel cut off
        self.ended = False
        self.at_fd_limit = False  # the primary was told to send nothing
        # What a full channel buffer held back, for flush().
        self._owed = 0            # ACK counts not sent yet
        self._told_limit = False  # the LIMIT state the primary has

    def fileno(self):
        return self._sock.fileno()

    def receive(self, max_msgs=0):
        """Drain the channel without blocking and acknowledge what arrived.

        Returns ``(pairs, ended)``: ``pairs`` is a list of ``(listener_id, fd)``
        (the caller owns each fd), ``ended`` is True once the primary said END
        or closed the channel.  One ACK covers everything drained, cut-off
        connections included (see the class).

        ``max_msgs``: read at most that many messages (0: all).  What is left
        stays the primary's to take back if this worker's loop then blocks.
        """
        self._check_usable()
        pairs = []
        cut = 0                             # connections cut off in this drain
        left = max_msgs
        try:
            if max_msgs < 0:
                raise ValueError(f"max_msgs must be >= 0 (0: all), not {max_msgs}")
            while not self.ended:
                if max_msgs:
                    if left == 0:
                        break
                    left -= 1
                try:
                    data, ancdata, flags, _ = self._sock.recvmsg(
                        RECV_BUF, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                fds = unpack_fds(ancdata)
                if not data and not fds:
                    self.ended = True       # the primary closed the channel
                    break
                try:
                    cut += self._parse(data, flags, fds, pairs)
                except ProtocolError:
                    for fd in fds:
                        os.close(fd)
                    raise
            if pairs or cut:
                self.lost += cut
                self._owed += len(pairs) + cut
                self._send_owed()
        except BaseException:
            for _, fd in pairs:
                os.close(fd)
            raise
        return pairs, self.ended

    def hand_out(self, max_msgs, listeners):
        """``receive(max_msgs)``, each connection handed to its listener at once.

        ``listeners``: listener id -> an object with ``take`` (a callable
        that serves the fd and reads its request in this pass of the loop, or
        None) and ``deliver(fd)`` (any other way, ``take`` being None).  A
        connection for an id not in ``listeners`` (closed here while the
        primary still sent for it) is closed.  Returns ``(taken, later,
        dropped, ended)``: connections handed out, whether one went to a
        ``deliver``, connections closed for want of a listener, and
        ``receive``'s ``ended``.  If a listener raises, the connections not
        yet handed out are closed and the error goes to the caller.
        """
        pairs, ended = self.receive(max_msgs)
        taken = dropped = 0
        later = False
        rest = iter(pairs)
        try:
            for lid, fd in rest:
                listener = listeners.get(lid)
                if listener is None:
                    os.close(fd)
                    dropped += 1
                    continue
                if listener.take is not None:
                    listener.take(fd)
                else:
                    listener.deliver(fd)
                    later = True
                taken += 1
        except BaseException:
            for _, fd in rest:
                os.close(fd)
            raise
        return taken, later, dropped, ended

    def _parse(self, data, flags, fds, pairs):
        # How many of the message's connections the kernel cut off.
        lids = parse_to_worker(data, flags & socket.MSG_TRUNC, len(fds),
                               bool(flags & socket.MSG_CTRUNC))
        if lids is None:
            self.ended = True
            return 0
        pairs.extend(zip(lids, fds))
        self.received += len(fds)
        if len(lids) == len(fds):
            return 0
        # The kernel closed the fds it had no room for: those clients see a
        # reset.  Say so before the credit goes back.
        self.at_fd_limit = True
        return len(lids) - len(fds)

    def _send_message(self, message):
        # True: sent; False: the buffer is full (the primary is behind
        # reading); None: the primary is gone (it needs nothing more from us).
        try:
            self._sock.send(message)
        except (BrokenPipeError, ConnectionResetError):
            return None
        except BlockingIOError:
            return False
        return True

    def _send_owed(self):
        # The LIMIT state first, so that the primary knows before the credit
        # comes back; then the ACK counts.  What a full buffer refuses stays
        # owed: a lost ACK would be credit the primary never gets back, so
        # flush() sends it later.
        if self._told_limit != self.at_fd_limit:
            sent = self._send_message(encode_limit(self.at_fd_limit))
            if sent is False:
                return
            self._told_limit = self.at_fd_limit
            if sent is None:
                self._owed = 0
                return
        while self._owed > 0:
            count = min(self._owed, MAX_COUNT)
            sent = self._send_message(encode_count(MSG_ACK, count))
            if sent is False:
                return
            if sent is None:
                self._owed = 0
                return
            self._owed -= count

    def _check_usable(self):
        if os.getpid() != self._pid:
            raise RuntimeError("this Receiver belongs to the parent process")
        if self._sock.fileno() < 0:
            raise ValueError("I/O operation on a closed Receiver")

    def flush(self):
        """Send what a full channel buffer held back (ACK counts, the fd-limit
        state).  Returns True while something still is: call again later."""
        self._check_usable()
        self._send_owed()
        return self._owed > 0 or self._told_limit != self.at_fd_limit

    def tick(self, running):
        """The event loop proves it runs, or says it is idle: stored on the
        Cython build's shared page for the primary's stall detection.  This
        twin has no page, so nothing: its primary sees a stall only by what
        waits untaken in the channel (see ``Dispatcher``)."""
        self._check_usable()

    def room_again(self):
        """The caller found room for fds again: tell the primary it may send.
        Returns False if this receiver was not at its fd limit."""
        self._check_usable()
        if not self.at_fd_limit:
            return False
        self.at_fd_limit = False
        self._send_owed()
        return True

    def report_closed(self, count):
        """Tell the primary ``count`` received connections are closed (policy least).

        Returns how many could not be reported because the channel's buffer
        is full: the caller keeps them and tries again later, since a lost
        report would leave the primary counting them open for good.  A
        primary that is gone needs no report (0).
        """
        self._check_usable()
        if count < 0:
            raise ValueError(f"cannot report {count} connections closed")
        while count:
            sent = self._send_message(encode_count(MSG_CLOSED, min(count, MAX_COUNT)))
            if sent is None:
                return 0
            if sent is False:
                return count
            count -= min(count, MAX_COUNT)
        return 0

    def close(self):
        if os.getpid() == self._pid:
            self._sock.close()
        else:
            self._sock.detach()
