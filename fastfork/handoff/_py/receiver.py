"""The worker's end of the data channel, in Python: the twin of ``_c/receiver.pyx``."""

import os
import socket

from ..fdpass import cmsg_space, unpack_fds
from ..wire import (MAX_COUNT, MSG_ACK, MSG_CLOSED, RECV_BUF, SCM_MAX_FD, ProtocolError,
                    encode_counts, parse_to_worker)

_CMSG_SPACE = cmsg_space(SCM_MAX_FD)
_TRUNCATED = socket.MSG_CTRUNC | socket.MSG_TRUNC


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
    """

    wakeups = 0          # as the Cython Receiver's: no wake-up ACKs without a page

    def __init__(self, fd, credit_fd=-1):
        _no_credit(credit_fd)
        self._pid = os.getpid()
        self._sock = borrow(fd)
        self.received = 0
        self.ended = False

    def fileno(self):
        return self._sock.fileno()

    def receive(self):
        """Drain the channel without blocking and acknowledge what arrived.

        Returns ``(pairs, ended)``: ``pairs`` is a list of ``(listener_id, fd)``
        (the caller owns each fd), ``ended`` is True once the primary said END
        or closed the channel.  One ACK covers everything drained.
        """
        if os.getpid() != self._pid:
            raise RuntimeError("this Receiver belongs to the parent process")
        if self._sock.fileno() < 0:
            raise ValueError("I/O operation on a closed Receiver")
        pairs = []
        try:
            while not self.ended:
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
                    self._parse(data, flags, fds, pairs)
                except ProtocolError:
                    for fd in fds:
                        os.close(fd)
                    raise
            if pairs:
                self._ack(len(pairs))
        except BaseException:
            for _, fd in pairs:
                os.close(fd)
            raise
        return pairs, self.ended

    def _parse(self, data, flags, fds, pairs):
        lids = parse_to_worker(data, flags & _TRUNCATED, len(fds))
        if lids is None:
            self.ended = True
            return
        pairs.extend(zip(lids, fds))
        self.received += len(fds)

    def _ack(self, count):
        for message in encode_counts(MSG_ACK, count):
            try:
                self._sock.send(message)
            except (BrokenPipeError, ConnectionResetError):
                return          # primary gone: nothing to acknowledge to
            except BlockingIOError:
                # Acks are 4 bytes against a window of connections: a full
                # buffer means the primary stopped reading; it will see EOF.
                return

    def report_closed(self, count):
        """Tell the primary ``count`` received connections are closed (policy least).

        Returns how many could not be reported because the channel's buffer
        is full: the caller keeps them and tries again later, since a lost
        report would leave the primary counting them open for good.  A
        primary that is gone needs no report (0).
        """
        if os.getpid() != self._pid:
            raise RuntimeError("this Receiver belongs to the parent process")
        if self._sock.fileno() < 0:
            raise ValueError("I/O operation on a closed Receiver")
        if count < 0:
            raise ValueError(f"cannot report {count} connections closed")
        left = count
        for message in encode_counts(MSG_CLOSED, count) if count else ():
            try:
                self._sock.send(message)
            except (BrokenPipeError, ConnectionResetError):
                return 0
            except BlockingIOError:
                return left
            left -= min(left, MAX_COUNT)
        return 0

    def close(self):
        if os.getpid() == self._pid:
            self._sock.close()
        else:
            self._sock.detach()
