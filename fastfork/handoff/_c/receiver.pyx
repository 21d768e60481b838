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

    At its fd limit the worker gets messages whose fds the kernel cut off
    (``wire``): their connections are taken all the same (credit goes back)
    and the cut-off ones counted in ``lost``; ``at_fd_limit`` is then True,
    the primary is told to send nothing, until the caller, having found room
    again, calls ``room_again()``.
    """

    cdef int _fd
    cdef pid_t _pid
    cdef readonly long long received     # connections delivered by receive()
    cdef readonly long long lost         # connections whose fds the kernel cut off
    cdef readonly long long wakeups      # ACKs sent only to wake the primary (shared credit)
    cdef readonly bint ended
    cdef readonly bint at_fd_limit       # the primary was told to send nothing
    cdef ff_credit_t *_credit
    # Without a page: what a full channel buffer held back, for flush().
    cdef long long _owed                 # ACK counts not sent yet
    cdef bint _told_limit                # the LIMIT state the primary has

    def __cinit__(self, *args, **kwargs):
        self._fd = -1
        self._credit = NULL

    def __init__(self, int fd, int credit_fd=-1):
        self._pid = _process_id
        _check_socket(fd)
        _set_nonblocking(fd)
        if credit_fd >= 0:
            self._credit = _map_credit(credit_fd)
        self._fd = fd
        self.received = self.lost = self.wakeups = self._owed = 0
        self.ended = self.at_fd_limit = self._told_limit = False

    def __dealloc__(self):
        if self._fd >= 0 and _process_id == self._pid:
            close(self._fd)
        _unmap_credit(self._credit)

    def fileno(self):
        return self._fd

    def receive(self, int max_msgs=0):
        """Drain the channel without blocking and acknowledge what arrived.

        Returns ``(pairs, ended)``: ``pairs`` is a list of ``(listener_id, fd)``
        (the caller owns each fd), ``ended`` is True once the primary said END
        or closed the channel.  One ACK covers everything drained, cut-off
        connections included (see the class).  Messages are read with one
        ``recvmmsg`` per readiness: fewer than asked for means the channel is
        empty, so no call is spent on EAGAIN.

        ``max_msgs``: read at most that many messages (0: all).  What is left
        stays the primary's to take back if this worker's loop then blocks.
        """
        return self._receive(max_msgs)

    def hand_out(self, int max_msgs, dict listeners):
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

        The data reader's way, once per pass of its loop: no tuple or Python
        frame per connection between the channel and an engine's gate.
        """
        cdef list pairs
        cdef Py_ssize_t i, n
        cdef int fd
        cdef long taken = 0, dropped = 0
        cdef bint later = False
        pairs, ended = self._receive(max_msgs)
        n = len(pairs)
        i = 0
        try:
            while i < n:
                lid, fd = pairs[i]
                i += 1
                listener = listeners.get(lid)
                if listener is None:
                    close(fd)
                    dropped += 1
                    continue
                take = listener.take
                if take is not None:
                    take(fd)
                else:
                    listener.deliver(fd)
                    later = True
                taken += 1
        except BaseException:
            while i < n:
                close(pairs[i][1])
                i += 1
            raise
        return taken, later, dropped, ended

    cdef tuple _receive(self, int max_msgs):
        cdef uint8_t bufs[FF_BATCH_MAX_MSGS * RECV_BUF]
        cdef int fds[FF_BATCH_MAX_MSGS * FF_SCM_MAX_FD]
        cdef int lens[FF_BATCH_MAX_MSGS]
        cdef int mflags[FF_BATCH_MAX_MSGS]
        cdef int nfds[FF_BATCH_MAX_MSGS]
        cdef int n, k, err, i, j, code
        cdef int want = FF_BATCH_MAX_MSGS, left = max_msgs
        cdef long long cut = 0               # connections cut off in this drain
        cdef uint8_t *buf
        cdef int *got
        cdef list pairs = []
        self._check_usable()
        try:
            if max_msgs < 0:
                raise ValueError(f"max_msgs must be >= 0 (0: all), not {max_msgs}")
            while not self.ended:
                if max_msgs:
                    want = min(FF_BATCH_MAX_MSGS, left)
                n = ff_recv_fds_batch(self._fd, bufs, RECV_BUF, want, lens,
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
                        code = self._parse(buf, lens[k], mflags[k], nfds[k])
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
                    if code == TO_WORKER_FDS_CUT:
                        # The kernel closed the fds it had no room for: those
                        # clients see a reset.  Say so before the credit goes back.
                        cut += _get_u16(buf + 2) - nfds[k]
                        self._at_limit()
                if n < want:
                    break                   # drained
                if max_msgs:
                    left -= n
                    if left == 0:
                        break
            if pairs or cut:
                self.lost += cut
                if self._credit != NULL:
                    ff_credit_add(&self._credit.taken, len(pairs) + cut)
                    self._wake_if_wanted()
                else:
                    self._owed += len(pairs) + cut
                    self._send_owed()
        except BaseException:
            for _, fd in pairs:
                close(fd)
            raise
        return pairs, self.ended

    cdef int _parse(self, const uint8_t *buf, ssize_t n, int mflags, int nfds) except -1:
        # The message's _check_to_worker code, once it is one to take.
        cdef int code = _check_to_worker(buf, n, mflags, nfds)
        if code == TO_WORKER_END:
            self.ended = True
        elif code != TO_WORKER_FDS and code != TO_WORKER_FDS_CUT:
            _raise_to_worker(code, buf, n, nfds)
        return code

    cdef int _at_limit(self) except -1:
        # Before the credit of a cut-off message goes back (credit.h, wire.py).
        self.at_fd_limit = True
        if self._credit != NULL:
            ff_credit_store_flag(&self._credit.at_limit, 1)
        return 0

    cdef int _wake_if_wanted(self) except -1:
        # After the counter moved (a full barrier): the primary set want
        # before its last look at the counters, so it may be asleep.  If the
        # wake-up finds the buffer full the primary has data to read, so it
        # is awake: nothing to keep.
        if ff_credit_take_want(&self._credit.want):
            self.wakeups += 1
            self._send_header(MSG_ACK, 0)
        return 0

    cdef int _send_header(self, int kind, int count) except -2:
        # 1: sent; 0: the buffer is full (the primary is behind reading);
        # -1: the primary is gone (it needs nothing more from us).
        cdef uint8_t buf[HEADER_SIZE]
        cdef int err
        _put_header(buf, kind, count)
        while send(self._fd, buf, HEADER_SIZE, MSG_NOSIGNAL | MSG_DONTWAIT) < 0:
            err = errno
            if _interrupted(err):
                continue
            if err == EPIPE or err == ESHUTDOWN or err == ECONNRESET:
                return -1
            if would_block(err):
                return 0
            _raise_errno(err)
        return 1

    cdef int _send_owed(self) except -1:
        # Without a page: the LIMIT state first, so that the primary knows
        # before the credit comes back; then the ACK counts.  What a full
        # buffer refuses stays owed: a lost ACK would be credit the primary
        # never gets back, so flush() sends it later.
        cdef int m, r
        if self._told_limit != self.at_fd_limit:
            r = self._send_header(MSG_LIMIT, 1 if self.at_fd_limit else 0)
            if r == 0:
                return 0
            self._told_limit = self.at_fd_limit
            if r < 0:
                self._owed = 0
                return 0
        while self._owed > 0:
            m = <int>min(self._owed, 0xFFFF)
            r = self._send_header(MSG_ACK, m)
            if r == 0:
                return 0
            if r < 0:
                self._owed = 0
                return 0
            self._owed -= m
        return 0

    cdef int _check_usable(self) except -1:
        if _process_id != self._pid:
            raise RuntimeError("this Receiver belongs to the parent process")
        if self._fd < 0:
            raise ValueError("I/O operation on a closed Receiver")
        return 0

    def flush(self):
        """Send what a full channel buffer held back (ACK counts, the fd-limit
        state).  Returns True while something still is: call again later."""
        self._check_usable()
        if self._credit != NULL:
            return False                    # the page never holds anything back
        self._send_owed()
        return self._owed > 0 or self._told_limit != self.at_fd_limit

    def tick(self, bint running):
        """The event loop proves it runs (``running``: it holds connections,
        and a late tick would mean it is blocked) or says it is idle (waiting
        for events: what is sent wakes it).  Stored on the shared page for the
        primary's stall detection; without a page (the twin's way) nothing."""
        self._check_usable()
        if self._credit != NULL:
            ff_credit_store_tick(&self._credit.tick, _monotonic_ns() if running else 0)

    def room_again(self):
        """The caller found room for fds again: tell the primary it may send.
        Returns False if this receiver was not at its fd limit."""
        self._check_usable()
        if not self.at_fd_limit:
            return False
        self.at_fd_limit = False
        if self._credit != NULL:
            ff_credit_store_flag(&self._credit.at_limit, 0)
            self._wake_if_wanted()          # it may sleep for want of a worker
        else:
            self._send_owed()
        return True

    def report_closed(self, long long count):
        """Tell the primary ``count`` received connections are closed (policy least).

        Returns how many could not be reported because the channel's buffer
        is full: the caller keeps them and tries again later, since a lost
        report would leave the primary counting them open for good.  A
        primary that is gone needs no report (0).
        """
        cdef int m, r
        self._check_usable()
        if count < 0:
            raise ValueError(f"cannot report {count} connections closed")
        if self._credit != NULL:
            if count:
                ff_credit_add(&self._credit.closed, count)
                self._wake_if_wanted()
            return 0
        while count:
            m = <int>min(count, 0xFFFF)
            r = self._send_header(MSG_CLOSED, m)
            if r < 0:
                return 0
            if r == 0:
                return count
            count -= m
        return 0

    def close(self):
        if self._fd >= 0:
            if _process_id == self._pid:
                close(self._fd)
            self._fd = -1
        _unmap_credit(self._credit)
        self._credit = NULL

