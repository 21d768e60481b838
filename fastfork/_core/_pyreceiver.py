"""Pure-Python twin of the Cython ``Receiver``: the worker's end of the data channel."""

import os
import socket

from ..channels.fdpass import cmsg_space, unpack_fds
from ..channels.wire import (HEADER, LID, MSG_ACK, MSG_CLOSED, MSG_END, MSG_FDS, SCM_MAX_FD,
                             ProtocolError)

_RECV_BUF = HEADER.size + LID.size * SCM_MAX_FD
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
    ``_pydispatch``): ``credit_fd`` must be -1, and ACKs carry the counts.
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
                        _RECV_BUF, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
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
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
            raise ProtocolError("truncated message on the data channel")
        if len(data) < HEADER.size:
            raise ProtocolError(f"short message ({len(data)} bytes) on the data channel")
        kind, count = HEADER.unpack_from(data)
        if kind == MSG_END:
            if fds or count:
                raise ProtocolError("END message with a payload")
            self.ended = True
            return
        if kind != MSG_FDS:
            raise ProtocolError(f"unknown message type {kind} on the data channel")
        if len(data) != HEADER.size + LID.size * count or len(fds) != count:
            raise ProtocolError(
                f"FDS message announces {count} fds, carries {len(fds)} "
                f"in {len(data)} bytes")
        for i, fd in enumerate(fds):
            pairs.append((LID.unpack_from(data, HEADER.size + i * LID.size)[0], fd))
        self.received += count

    def _ack(self, count):
        while count:
            n = min(count, 0xFFFF)
            try:
                self._sock.send(HEADER.pack(MSG_ACK, n))
            except (BrokenPipeError, ConnectionResetError):
                return          # primary gone: nothing to acknowledge to
            except BlockingIOError:
                # Acks are 4 bytes against a window of connections: a full
                # buffer means the primary stopped reading; it will see EOF.
                return
            count -= n

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
        while count:
            n = min(count, 0xFFFF)
            try:
                self._sock.send(HEADER.pack(MSG_CLOSED, n))
            except (BrokenPipeError, ConnectionResetError):
                return 0
            except BlockingIOError:
                return count
            count -= n
        return 0

    def close(self):
        if os.getpid() == self._pid:
            self._sock.close()
        else:
            self._sock.detach()
