# cython: language_level=3
"""The worker's ``Receiver`` in C: take the connections the primary passed.

``_py/receiver.py`` is the pure-Python twin: same class, methods, attributes
and behaviour; the same tests run against both.  The primary's end is
``dispatcher.pyx``; the format is ``wire.py``'s, checked when this loads.
"""

include "common.pxi"

_check_wire(__name__)


cdef class Receiver:
    """The worker's end of the data channel: receive fd batches, acknowledge them.

    Owns ``fd``: ``close()`` closes it.  ``credit_fd``: the page shared with
    the primary (see ``Dispatcher.add_worker``), mapped here (the fd stays the
    caller's): what is received and closed is counted there, and an ACK is
    sent only when the primary asks to be woken.
    """

    cdef int _fd
    cdef pid_t _pid
    cdef readonly long long received
    cdef readonly long long wakeups      # ACKs sent only to wake the primary (shared credit)
    cdef readonly bint ended
    cdef ff_credit_t *_credit

    def __cinit__(self, *args, **kwargs):
        self._fd = -1
        self._credit = NULL

    def __init__(self, int fd, int credit_fd=-1):
        self._pid = getpid()
        _check_socket(fd)
        _set_nonblocking(fd)
        if credit_fd >= 0:
            self._credit = _map_credit(credit_fd)
        self._fd = fd
        self.received = 0
        self.wakeups = 0
        self.ended = False

    def __dealloc__(self):
        if self._fd >= 0 and getpid() == self._pid:
            close(self._fd)
        _unmap_credit(self._credit)

    def fileno(self):
        return self._fd

    def receive(self):
        """Drain the channel without blocking and acknowledge what arrived.

        Returns ``(pairs, ended)``: ``pairs`` is a list of ``(listener_id, fd)``
        (the caller owns each fd), ``ended`` is True once the primary said END
        or closed the channel.  One ACK covers everything drained.  Messages
        are read with one ``recvmmsg`` per readiness: fewer than asked for
        means the channel is empty, so no call is spent on EAGAIN.
        """
        cdef uint8_t bufs[FF_BATCH_MAX_MSGS * RECV_BUF]
        cdef int fds[FF_BATCH_MAX_MSGS * FF_SCM_MAX_FD]
        cdef int lens[FF_BATCH_MAX_MSGS]
        cdef int mflags[FF_BATCH_MAX_MSGS]
        cdef int nfds[FF_BATCH_MAX_MSGS]
        cdef int n, k, err, i, j
        cdef uint8_t *buf
        cdef int *got
        cdef list pairs = []
        if getpid() != self._pid:
            raise RuntimeError("this Receiver belongs to the parent process")
        if self._fd < 0:
            raise ValueError("I/O operation on a closed Receiver")
        try:
            while not self.ended:
                n = ff_recv_fds_batch(self._fd, bufs, RECV_BUF, FF_BATCH_MAX_MSGS, lens,
                                      mflags, fds, nfds, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)
                if n < 0:
                    err = errno
                    if would_block(err):
                        break
                    if _interrupted(err):
                        continue
                    _raise_errno(err)
                for k in range(n):
                    buf = bufs + k * RECV_BUF
                    got = fds + k * FF_SCM_MAX_FD
                    if self.ended:
                        # Nothing follows END (or EOF): whatever did is not ours.
                        for i in range(nfds[k]):
                            close(got[i])
                        continue
                    if lens[k] == 0 and nfds[k] == 0:
                        self.ended = True   # the primary closed the channel
                        continue
                    try:
                        self._parse(buf, lens[k], mflags[k], nfds[k])
                    except ProtocolError:
                        for j in range(k, n):
                            for i in range(nfds[j]):
                                close(fds[j * FF_SCM_MAX_FD + i])
                        raise
                    for i in range(nfds[k]):
                        try:
                            pairs.append((_get_u16(buf + HEADER_SIZE + i * LID_SIZE), got[i]))
                        except BaseException:
                            for j in range(i, nfds[k]):
                                close(got[j])
                            for j in range(k + 1, n):
                                for i in range(nfds[j]):
                                    close(fds[j * FF_SCM_MAX_FD + i])
                            raise
                    self.received += nfds[k]
                if n < FF_BATCH_MAX_MSGS:
                    break
            if pairs:
                if self._credit != NULL:
                    ff_credit_add(&self._credit.taken, len(pairs))
                    self._wake_if_wanted()
                else:
                    self._ack(len(pairs))
        except BaseException:
            for _, fd in pairs:
                close(fd)
            raise
        return pairs, self.ended

    cdef int _parse(self, const uint8_t *buf, ssize_t n, int mflags, int nfds) except -1:
        cdef int code = _check_to_worker(buf, n, mflags, nfds)
        if code == TO_WORKER_END:
            self.ended = True
        elif code != TO_WORKER_FDS:
            _raise_to_worker(code, buf, n, nfds)
        return 0

    cdef int _wake_if_wanted(self) except -1:
        # After the counter moved (a full barrier): the primary set want
        # before its last look at the counters, so it may be asleep.
        if ff_credit_take_want(&self._credit.want):
            self.wakeups += 1
            self._ack(0)
        return 0

    cdef int _ack(self, Py_ssize_t count) except -1:
        cdef uint8_t buf[HEADER_SIZE]
        cdef int m, err
        while True:
            m = <int>min(count, 0xFFFF)
            _put_header(buf, MSG_ACK, m)
            if send(self._fd, buf, HEADER_SIZE, MSG_NOSIGNAL | MSG_DONTWAIT) < 0:
                err = errno
                if _interrupted(err):
                    continue
                if (err == EPIPE or err == ESHUTDOWN or err == ECONNRESET
                        or would_block(err)):
                    # Primary gone, or (full buffer) it stopped reading: it will
                    # see EOF or the worker's exit and re-dispatch.  Acks are 4
                    # bytes against a window of connections.  (A wake-up: the
                    # primary has data to read, so it is awake.)
                    return 0
                _raise_errno(err)
            count -= m
            if count <= 0:
                return 0

    def report_closed(self, long long count):
        """Tell the primary ``count`` received connections are closed (policy least).

        Returns how many could not be reported because the channel's buffer
        is full: the caller keeps them and tries again later, since a lost
        report would leave the primary counting them open for good.  A
        primary that is gone needs no report (0).
        """
        cdef uint8_t buf[HEADER_SIZE]
        cdef int m, err
        if getpid() != self._pid:
            raise RuntimeError("this Receiver belongs to the parent process")
        if self._fd < 0:
            raise ValueError("I/O operation on a closed Receiver")
        if count < 0:
            raise ValueError(f"cannot report {count} connections closed")
        if self._credit != NULL:
            if count:
                ff_credit_add(&self._credit.closed, count)
                self._wake_if_wanted()
            return 0
        while count:
            m = <int>min(count, 0xFFFF)
            _put_header(buf, MSG_CLOSED, m)
            if send(self._fd, buf, HEADER_SIZE, MSG_NOSIGNAL | MSG_DONTWAIT) < 0:
                err = errno
                if _interrupted(err):
                    continue
                if err == EPIPE or err == ESHUTDOWN or err == ECONNRESET:
                    return 0
                if would_block(err):
                    return count
                _raise_errno(err)
            count -= m
        return 0

    def close(self):
        if self._fd >= 0:
            if getpid() == self._pid:
                close(self._fd)
            self._fd = -1
        _unmap_credit(self._credit)
        self._credit = NULL

