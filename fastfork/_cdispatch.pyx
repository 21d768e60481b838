# cython: language_level=3
"""The data channel's hot path in C: ``Dispatcher`` (primary) and ``Receiver`` (worker).

``fastfork._dispatch_py`` is the pure-Python twin: same classes, methods,
attributes and behaviour; the same tests run against both.

Design notes (they apply to the twin too)
-----------------------------------------
* One epoll instance holds the listening sockets, the primary's ends of the
  workers' data channels and the fds the caller ``watch``es.  Each registration
  carries ``kind << 32 | id`` in ``epoll_data`` so an event needs no lookup.
* A listener is armed (EPOLLIN) only while some subscribed worker has credit
  and accepting is not paused; otherwise it is registered with events=0 so
  the backlog stays in the kernel and a readable listener cannot make epoll
  spin.  Re-armed by ``poll`` as soon as credit comes back.
* Accepting: ``accept4(NONBLOCK|CLOEXEC)`` until EAGAIN or until the credit
  runs out; each connection goes to the worker the scheduler picks; the
  connections of one worker are sent in one ``sendmsg`` per ``batch_max``.
* The primary keeps its copy of every connection until the worker
  acknowledges it (per-worker FIFO of capacity ``window``): if the worker dies
  first, the copy goes to the pending queue and from there to another worker.
* The GIL is released in exactly one place, around ``epoll_wait``.
"""

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport (errno, EAGAIN, EINTR, ECONNABORTED, EPROTO, EPERM, ENETDOWN,
                         ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP,
                         ENETUNREACH, EMFILE, ENFILE, ENOBUFS, ENOMEM, EPIPE,
                         ECONNRESET, ESHUTDOWN)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset, strerror
from posix.fcntl cimport fcntl, F_GETFL, F_SETFL, O_NONBLOCK
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.types cimport pid_t
from posix.unistd cimport close, getpid

from ._cscheduler cimport RoundRobinScheduler, FF_MAX_LISTENERS

from .wire import (DEFAULT_BATCH_MAX, DEFAULT_WINDOW, ProtocolError, check_batch_max,
                   check_window)

IMPLEMENTATION = "cython"

# -- C declarations (every block nogil: none of these touch Python) ---------------

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    int accept4(int fd, sockaddr *addr, socklen_t *addrlen, int flags)
    ssize_t send(int fd, const void *buf, size_t len, int flags)
    ssize_t recv(int fd, void *buf, size_t len, int flags)
    int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        SOL_SOCKET
        SO_TYPE
        MSG_NOSIGNAL
        MSG_DONTWAIT
        MSG_TRUNC
        MSG_CTRUNC
        MSG_CMSG_CLOEXEC

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLLIN

cdef extern from *:
    """
    #include <errno.h>
    /* EAGAIN and EWOULDBLOCK are one value on Linux, two elsewhere. */
    static inline int ff_would_block(int err) {
        return err == EAGAIN || err == EWOULDBLOCK;
    }
    """
    bint _would_block "ff_would_block"(int err) noexcept nogil

cdef extern from "<limits.h>" nogil:
    enum:
        INT_MAX

cdef extern from "fdpass.h" nogil:
    enum:
        FF_SCM_MAX_FD
    ssize_t ff_send_fds(int sock, const void *buf, size_t len,
                        const int *fds, int nfds, int flags)
    ssize_t ff_recv_fds(int sock, void *buf, size_t len, int *fds, int maxfds,
                        int *nfds, int *msg_flags, int flags)

cdef extern from *:
    """
    #ifndef FASTFORK_DEBUG
    #define FASTFORK_DEBUG 0
    #endif
    """
    int FASTFORK_DEBUG

DEBUG = bool(FASTFORK_DEBUG)

# -- wire format (fastfork/wire.py) ---------------------------------------------------

cdef enum:
    MSG_FDS = 1
    MSG_END = 2
    MSG_ACK = 3
    HEADER_SIZE = 4
    LID_SIZE = 2
    RECV_BUF = HEADER_SIZE + LID_SIZE * FF_SCM_MAX_FD
    ACK_BUF = 64          # an ACK is 4 bytes; anything longer is a protocol error

cdef enum:
    KIND_LISTENER = 0
    KIND_WORKER = 1
    KIND_WATCH = 2

cdef enum:
    MAX_EVENTS = 256      # more ready fds than this are reported by the next epoll_wait


cdef inline void _put_header(uint8_t *buf, int kind, int count) noexcept nogil:
    cdef uint16_t c = <uint16_t>count
    buf[0] = <uint8_t>kind
    buf[1] = 0
    memcpy(buf + 2, &c, 2)


cdef inline int _get_u16(const uint8_t *buf) noexcept nogil:
    cdef uint16_t c
    memcpy(&c, buf, 2)
    return c


# -- helpers -------------------------------------------------------------------------

cdef int _raise_errno(int err) except -1:
    """The one place that maps an errno to OSError (and its subclasses)."""
    raise OSError(err, strerror(err).decode("utf-8", "replace"))


cdef inline double _monotonic() noexcept nogil:
    # Same clock as time.monotonic(), which the twin uses.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef int _check_socket(int fd) except -1:
    # Same check as socket.socket(fileno=fd) in the twin: EBADF, ENOTSOCK.
    cdef int stype = 0
    cdef socklen_t size = sizeof(stype)
    if getsockopt(fd, SOL_SOCKET, SO_TYPE, &stype, &size) < 0:
        _raise_errno(errno)
    return 0


cdef int _set_nonblocking(int fd) except -1:
    cdef int flags = fcntl(fd, F_GETFL)
    if flags < 0:
        _raise_errno(errno)
    if not flags & O_NONBLOCK and fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0:
        _raise_errno(errno)
    return 0


cdef inline bint _accept_skip(int err) noexcept nogil:
    # accept4() errors that concern one connection only: skip it and go on.
    return (err == ECONNABORTED or err == EPROTO or err == EPERM or err == ENETDOWN
            or err == ENOPROTOOPT or err == EHOSTDOWN or err == ENONET
            or err == EHOSTUNREACH or err == EOPNOTSUPP or err == ENETUNREACH)


cdef inline bint _accept_pause(int err) noexcept nogil:
    # accept4() errors that mean "out of a resource": stop accepting for a while.
    return err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM


cdef inline uint64_t _tag(int kind, int ident) noexcept nogil:
    return ((<uint64_t>kind) << 32) | <uint32_t>ident


# -- the primary ---------------------------------------------------------------------

ctypedef struct conn_t:
    int fd
    int lid

ctypedef struct worker_t:
    int fd              # the primary's end of the data channel (not ours to close)
    bint present        # between add_worker and remove_worker
    bint open           # the channel is usable
    long long dispatched
    int head            # in-flight FIFO: ring[head .. head+count) of capacity window
    int count
    int nout            # connections staged for the next send (outbox)


cdef class Dispatcher:
    """The primary's hot path: accept, pick a worker, pass the fd, track acks."""

    cdef readonly int window
    cdef readonly int batch_max
    cdef readonly int pause_ms
    cdef readonly long long accepted
    cdef readonly long long dispatched
    cdef readonly long long redispatched
    cdef readonly long long pauses
    cdef readonly int last_pause_errno

    cdef pid_t _pid
    cdef int _epfd
    cdef bint _closed
    cdef RoundRobinScheduler _sched
    cdef int _lfd[FF_MAX_LISTENERS]      # lid -> listening fd, -1 if free
    cdef bint _armed[FF_MAX_LISTENERS]
    cdef worker_t *_workers              # slot -> worker, _nslots in use
    cdef int _nslots
    cdef int _wcap
    cdef conn_t *_rings                  # slot * window: in-flight FIFOs
    cdef conn_t *_outbox                 # slot * window: staged for sending
    cdef int *_touched                   # slots with a staged batch, in pick order
    cdef int _ntouched
    cdef conn_t *_pending                # ring buffer of connections waiting for credit
    cdef int _phead
    cdef int _plen
    cdef int _pcap
    cdef epoll_event *_events
    cdef double _paused_until
    cdef long long _held                 # connection fds we hold (debug counter)
    cdef list _closed_slots
    cdef set _watched

    def __cinit__(self, *args, **kwargs):
        cdef int i
        self._epfd = -1
        self._closed = False
        self._workers = NULL
        self._rings = NULL
        self._outbox = NULL
        self._touched = NULL
        self._pending = NULL
        self._events = NULL
        self._nslots = self._wcap = self._ntouched = 0
        self._phead = self._plen = self._pcap = 0
        self._held = 0
        self._paused_until = 0.0
        for i in range(FF_MAX_LISTENERS):
            self._lfd[i] = -1
            self._armed[i] = False

    def __init__(self, window=DEFAULT_WINDOW, batch_max=DEFAULT_BATCH_MAX, pause_ms=100):
        self.window = check_window(window)
        self.batch_max = check_batch_max(batch_max)
        pause_ms = int(pause_ms)
        if pause_ms < 0:
            raise ValueError(f"pause_ms must be >= 0, got {pause_ms}")
        self.pause_ms = pause_ms
        self._pid = getpid()
        self._sched = RoundRobinScheduler(self.window)
        self._closed_slots = []
        self._watched = set()
        self._events = <epoll_event *>realloc(NULL, MAX_EVENTS * sizeof(epoll_event))
        if self._events == NULL:
            raise MemoryError()
        self._epfd = epoll_create1(EPOLL_CLOEXEC)
        if self._epfd < 0:
            _raise_errno(errno)

    def __dealloc__(self):
        # Also reached for a half-built object (a failed __init__): every
        # field starts empty in __cinit__.  No Python calls here.
        if not self._closed:
            self._close_connections()
            if self._epfd >= 0:
                close(self._epfd)
        free(self._workers)
        free(self._rings)
        free(self._outbox)
        free(self._touched)
        free(self._pending)
        free(self._events)

    # -- registration -------------------------------------------------------------
    def add_listener(self, int fd):
        """Start dispatching connections from listening socket ``fd``; returns its id.

        ``fd`` stays the caller's: call ``remove_listener`` before closing it.
        """
        cdef int lid
        cdef epoll_event ev
        self._check()
        for lid in range(FF_MAX_LISTENERS):
            if self._lfd[lid] < 0:
                break
        else:
            raise ValueError("at most 64 listening sockets per primary")
        _check_socket(fd)
        _set_nonblocking(fd)
        memset(&ev, 0, sizeof(ev))
        ev.events = 0                       # armed by poll() once a worker has credit
        ev.data.u64 = _tag(KIND_LISTENER, lid)
        if epoll_ctl(self._epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            _raise_errno(errno)
        self._lfd[lid] = fd
        self._armed[lid] = False
        return lid

    def remove_listener(self, int lid):
        """Stop accepting on ``lid``; connections waiting for credit on it are closed."""
        cdef int fd
        self._check()
        if not 0 <= lid < FF_MAX_LISTENERS or self._lfd[lid] < 0:
            raise KeyError(f"no listener {lid}")
        fd = self._lfd[lid]
        self._lfd[lid] = -1
        self._armed[lid] = False
        self._flush_pending()               # drops what waited for this listener
        if epoll_ctl(self._epfd, EPOLL_CTL_DEL, fd, NULL) < 0:
            _raise_errno(errno)

    def add_worker(self, int fd):
        """Register the primary's end of a worker's data channel; returns its slot.

        ``fd`` stays the caller's: close it only after ``remove_worker``.
        """
        cdef int slot = 0
        cdef epoll_event ev
        cdef worker_t *w
        self._check()
        while slot < self._nslots and self._workers[slot].present:
            slot += 1
        _check_socket(fd)
        _set_nonblocking(fd)
        if slot >= self._wcap:
            self._grow_workers(slot + 1)
        memset(&ev, 0, sizeof(ev))
        ev.events = EPOLLIN
        ev.data.u64 = _tag(KIND_WORKER, slot)
        if epoll_ctl(self._epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            _raise_errno(errno)
        self._sched.c_add(slot)             # cannot fail: the slot is free
        w = &self._workers[slot]
        memset(w, 0, sizeof(worker_t))
        w.fd = fd
        w.present = True
        w.open = True
        if slot >= self._nslots:
            self._nslots = slot + 1
        return slot

    def subscribe(self, int slot, int lid):
        """Let the worker in ``slot`` receive connections from listener ``lid``."""
        self._check()
        if not 0 <= lid < FF_MAX_LISTENERS or self._lfd[lid] < 0:
            raise KeyError(f"no listener {lid}")
        if self._is_open(slot):
            self._sched.c_subscribe(slot, lid)
            self._flush_pending()

    def retire_worker(self, int slot):
        """Send nothing more to ``slot``; tell it so with an END message.

        Connections already sent stay tracked: the worker still acknowledges
        them, and if it dies first they go to another worker.
        """
        cdef uint8_t buf[HEADER_SIZE]
        cdef ssize_t r
        self._check()
        if not self._is_open(slot):
            return
        self._sched.c_retire(slot)
        _put_header(buf, MSG_END, 0)
        while True:
            r = send(self._workers[slot].fd, buf, HEADER_SIZE, MSG_NOSIGNAL | MSG_DONTWAIT)
            if r < 0 and errno == EINTR:
                continue
            break
        if r < 0:
            self._close_worker(slot)

    def remove_worker(self, int slot):
        """Forget ``slot`` (worker gone); its unacknowledged connections are re-dispatched."""
        self._check()
        if not self._is_present(slot):
            raise KeyError(f"no worker in slot {slot}")
        self._close_worker(slot)
        self._closed_slots = [s for s in self._closed_slots if s != slot]
        self._workers[slot].present = False
        self._workers[slot].fd = -1
        self._flush_pending()

    def watch(self, int fd):
        """Make ``poll`` report ``fd`` when it is readable (control channels, wakeup pipe)."""
        cdef epoll_event ev
        self._check()
        memset(&ev, 0, sizeof(ev))
        ev.events = EPOLLIN
        ev.data.u64 = _tag(KIND_WATCH, fd)
        if epoll_ctl(self._epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            _raise_errno(errno)
        self._watched.add(fd)

    def unwatch(self, int fd):
        self._check()
        if fd in self._watched:
            self._watched.discard(fd)
            if epoll_ctl(self._epfd, EPOLL_CTL_DEL, fd, NULL) < 0:
                _raise_errno(errno)

    # -- the loop -------------------------------------------------------------------
    def poll(self, double timeout_ms):
        """Dispatch until a watched fd is readable or ``timeout_ms`` has passed
        (-1: no limit); return the watched fds that are readable.

        Accepting, dispatching and reading acks all happen inside, without
        returning to Python, so under load the caller's loop runs only when
        it has something to do.  Returns early, possibly with an empty list,
        when a signal interrupts the wait (after running Python's signal
        handlers; an exception they raise propagates).
        """
        cdef int timeout, n, i, err = 0, kind, ident, pause_left
        cdef double now, deadline = -1
        cdef list ready = []
        self._check()
        if timeout_ms >= 0:
            deadline = _monotonic() + timeout_ms / 1000.0
        while True:
            self._flush_pending()
            self._rearm()
            now = _monotonic()
            if deadline < 0:
                timeout = -1
            elif deadline - now >= INT_MAX / 1000.0:
                timeout = INT_MAX
            else:
                timeout = <int>((deadline - now) * 1000.0)
                if timeout < (deadline - now) * 1000.0:
                    timeout += 1            # round up, like select.epoll.poll
            if self._paused_until > now:
                pause_left = <int>((self._paused_until - now) * 1000) + 1
                timeout = pause_left if timeout < 0 else min(timeout, pause_left)
            # Release the GIL only here: this is where the primary blocks, and
            # while it waits the rest of the process (threads, the caller's
            # helpers) must be able to run.  All other work is short and non-blocking.
            with nogil:
                n = epoll_wait(self._epfd, self._events, MAX_EVENTS, timeout)
                if n < 0:
                    err = errno
            if n < 0:
                if err != EINTR:
                    _raise_errno(err)
                # A signal: run Python's handlers now (an exception propagates),
                # then return so the caller's loop can act on what they recorded.
                PyErr_CheckSignals()
                break
            for i in range(n):
                kind = <int>(self._events[i].data.u64 >> 32)
                ident = <int>(<uint32_t>self._events[i].data.u64)
                if kind == KIND_WORKER:
                    if self._is_open(ident):
                        self._read_acks(ident)
                elif kind == KIND_WATCH:
                    ready.append(ident)
            self._flush_pending()
            for i in range(n):
                kind = <int>(self._events[i].data.u64 >> 32)
                ident = <int>(<uint32_t>self._events[i].data.u64)
                if kind == KIND_LISTENER and self._lfd[ident] >= 0:
                    self._accept_and_dispatch(ident)
            if ready or (deadline >= 0 and _monotonic() >= deadline):
                break
        self._rearm()
        if FASTFORK_DEBUG:
            self._verify()
        return ready

    def pop_closed(self):
        """Slots whose data channel closed or broke the protocol since the last call."""
        self._check()
        closed = self._closed_slots
        self._closed_slots = []
        return closed

    def worker_stats(self, int slot):
        """``(dispatched, inflight)`` for one worker."""
        self._check()
        if not self._is_present(slot):
            raise KeyError(f"no worker in slot {slot}")
        return self._workers[slot].dispatched, self._workers[slot].count

    def stats(self):
        self._check()
        return {"accepted": self.accepted, "dispatched": self.dispatched,
                "redispatched": self.redispatched, "pending": self._plen,
                "pauses": self.pauses, "last_pause_errno": self.last_pause_errno,
                "paused": self._paused_until > _monotonic()}

    def held_fds(self):
        """How many connection fds the primary holds (in flight + pending)."""
        self._check()
        if FASTFORK_DEBUG:
            self._verify()
        return self._held

    def close(self):
        """Close the epoll fd and every connection the primary still holds.

        Sockets given to ``add_listener``/``add_worker`` are not ours to close.
        Also right in a forked child, which must not keep the primary's copies
        of connections alive.
        """
        cdef int i
        if self._closed:
            return
        self._closed = True
        self._close_connections()
        for i in range(FF_MAX_LISTENERS):
            self._lfd[i] = -1
        for i in range(self._nslots):
            self._workers[i].present = self._workers[i].open = False
            self._workers[i].fd = -1
        self._watched.clear()
        if self._epfd >= 0:
            close(self._epfd)
            self._epfd = -1

    # -- internals --------------------------------------------------------------------
    cdef int _check(self) except -1:
        if getpid() != self._pid:
            raise RuntimeError("this Dispatcher belongs to the parent process; "
                               "call close() in the child")
        if self._closed:
            raise ValueError("I/O operation on a closed Dispatcher")
        return 0

    cdef inline bint _is_present(self, int slot) noexcept:
        return 0 <= slot < self._nslots and self._workers[slot].present

    cdef inline bint _is_open(self, int slot) noexcept:
        return 0 <= slot < self._nslots and self._workers[slot].open

    cdef void _close_connections(self) noexcept:
        cdef int slot, i
        cdef worker_t *w
        for slot in range(self._nslots):
            w = &self._workers[slot]
            for i in range(w.count):
                close(self._rings[slot * self.window + (w.head + i) % self.window].fd)
                self._held -= 1
            w.count = w.head = 0
        for i in range(self._plen):
            close(self._pending[(self._phead + i) % self._pcap].fd)
            self._held -= 1
        self._plen = self._phead = 0

    cdef int _grow_workers(self, int need) except -1:
        cdef int cap = self._wcap if self._wcap > 0 else 8
        cdef size_t per = <size_t>self.window
        cdef void *p
        while cap < need:
            cap *= 2
        # Slot-major layout: realloc keeps every existing slot's data in place.
        p = realloc(self._workers, cap * sizeof(worker_t))
        if p == NULL:
            raise MemoryError()
        self._workers = <worker_t *>p
        p = realloc(self._rings, cap * per * sizeof(conn_t))
        if p == NULL:
            raise MemoryError()
        self._rings = <conn_t *>p
        p = realloc(self._outbox, cap * per * sizeof(conn_t))
        if p == NULL:
            raise MemoryError()
        self._outbox = <conn_t *>p
        p = realloc(self._touched, cap * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self._touched = <int *>p
        memset(&self._workers[self._wcap], 0, (cap - self._wcap) * sizeof(worker_t))
        self._wcap = cap
        return 0

    # pending: a ring buffer of conn_t, FIFO, growing by doubling.
    cdef int _pending_reserve(self, int extra) except -1:
        cdef int cap, i
        cdef conn_t *p
        if self._plen + extra <= self._pcap:
            return 0
        cap = self._pcap if self._pcap > 0 else 16
        while cap < self._plen + extra:
            cap *= 2
        p = <conn_t *>realloc(NULL, cap * sizeof(conn_t))
        if p == NULL:
            raise MemoryError()
        for i in range(self._plen):
            p[i] = self._pending[(self._phead + i) % self._pcap]
        free(self._pending)
        self._pending = p
        self._pcap = cap
        self._phead = 0
        return 0

    cdef inline void _pending_push_back(self, conn_t c) noexcept:
        # Caller reserved the room.
        self._pending[(self._phead + self._plen) % self._pcap] = c
        self._plen += 1

    cdef inline void _pending_push_front(self, conn_t c) noexcept:
        # Caller reserved the room.
        self._phead = (self._phead + self._pcap - 1) % self._pcap
        self._pending[self._phead] = c
        self._plen += 1

    cdef inline conn_t _pending_pop_front(self) noexcept:
        cdef conn_t c = self._pending[self._phead]
        self._phead = (self._phead + 1) % self._pcap
        self._plen -= 1
        return c

    cdef int _rearm(self) except -1:
        cdef bint paused = self._paused_until > _monotonic()
        cdef bint want
        cdef int lid
        cdef epoll_event ev
        for lid in range(FF_MAX_LISTENERS):
            if self._lfd[lid] < 0:
                continue
            want = not paused and self._sched.c_available(lid) > 0
            if want != self._armed[lid]:
                memset(&ev, 0, sizeof(ev))
                ev.events = EPOLLIN if want else 0
                ev.data.u64 = _tag(KIND_LISTENER, lid)
                if epoll_ctl(self._epfd, EPOLL_CTL_MOD, self._lfd[lid], &ev) < 0:
                    _raise_errno(errno)
                self._armed[lid] = want
        return 0

    cdef inline void _stage(self, int slot, int fd, int lid) noexcept:
        # The scheduler gave slot a credit, so its FIFO plus its outbox stay
        # within window.
        cdef worker_t *w = &self._workers[slot]
        cdef conn_t *c
        if w.nout == 0:
            self._touched[self._ntouched] = slot
            self._ntouched += 1
        c = &self._outbox[slot * self.window + w.nout]
        c.fd = fd
        c.lid = lid
        w.nout += 1

    cdef int _send_staged(self) except -1:
        cdef int i, slot, n
        for i in range(self._ntouched):
            slot = self._touched[i]
            n = self._workers[slot].nout
            self._workers[slot].nout = 0
            self._send(slot, &self._outbox[slot * self.window], n)
        self._ntouched = 0
        return 0

    cdef int _accept_and_dispatch(self, int lid) except -1:
        cdef int budget, fd, err = 0, slot
        cdef int lfd = self._lfd[lid]
        cdef conn_t c
        if self._paused_until > _monotonic():
            return 0                        # another listener just ran out of fds
        budget = self._sched.c_available(lid)
        while budget > 0:
            fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                err = errno
                if _would_block(err):
                    err = 0
                    break
                if err == EINTR or _accept_skip(err):
                    err = 0
                    continue
                if _accept_pause(err):
                    # Out of fds or memory: leave the backlog in the kernel and
                    # wait pause_ms (listeners disarmed) instead of spinning.
                    self._paused_until = _monotonic() + self.pause_ms / 1000.0
                    self.pauses += 1
                    self.last_pause_errno = err
                    err = 0
                break
            self.accepted += 1
            self._held += 1
            budget -= 1
            slot = self._sched.c_pick(lid)
            if slot < 0:                    # cannot happen: budget came from available()
                self._pending_reserve(1)
                c.fd = fd
                c.lid = lid
                self._pending_push_back(c)
                continue
            self._stage(slot, fd, lid)
        # What was accepted goes out even if accept4 failed unexpectedly.
        self._send_staged()
        if err:
            _raise_errno(err)
        return 0

    cdef int _flush_pending(self) except -1:
        cdef int n, i, slot
        cdef conn_t c
        if self._plen == 0:
            return 0
        n = self._plen
        for i in range(n):
            c = self._pending_pop_front()
            if self._lfd[c.lid] < 0:
                # Its listener was removed: nobody can serve it.
                close(c.fd)
                self._held -= 1
                continue
            slot = self._sched.c_pick(c.lid)
            if slot < 0:
                self._pending_push_back(c)  # room: one was just popped
            else:
                self.redispatched += 1
                self._stage(slot, c.fd, c.lid)
        self._send_staged()
        return 0

    cdef int _send(self, int slot, conn_t *items, int n) except -1:
        cdef uint8_t buf[RECV_BUF]
        cdef int fds[FF_SCM_MAX_FD]
        cdef int start = 0, m, i, rest
        cdef ssize_t r
        cdef uint16_t lid
        cdef worker_t *w = &self._workers[slot]
        cdef conn_t *ring = &self._rings[slot * self.window]
        while start < n:
            m = min(self.batch_max, n - start)
            _put_header(buf, MSG_FDS, m)
            for i in range(m):
                lid = <uint16_t>items[start + i].lid
                memcpy(buf + HEADER_SIZE + i * LID_SIZE, &lid, LID_SIZE)
                fds[i] = items[start + i].fd
            while True:
                r = ff_send_fds(w.fd, buf, HEADER_SIZE + m * LID_SIZE, fds, m,
                                MSG_NOSIGNAL | MSG_DONTWAIT)
                if r < 0 and errno == EINTR:
                    continue
                break
            if r < 0:
                # Give the credit back for what was not sent, park the fds, and
                # treat the channel as dead: a worker that cannot take a
                # message is gone or broken (Node: "refused -> next worker").
                rest = n - start
                self._pending_reserve(rest + w.count)
                self._sched.c_try_ack(slot, rest)
                for i in range(n - 1, start - 1, -1):
                    self._pending_push_front(items[i])
                self._close_worker(slot)
                return 0
            for i in range(m):
                ring[(w.head + w.count) % self.window] = items[start + i]
                w.count += 1
            w.dispatched += m
            self.dispatched += m
            start += m
        return 0

    cdef int _read_acks(self, int slot) except -1:
        cdef uint8_t buf[ACK_BUF]
        cdef ssize_t r
        cdef int count, i, err
        cdef worker_t *w = &self._workers[slot]
        cdef conn_t *ring = &self._rings[slot * self.window]
        while w.open:
            r = recv(w.fd, buf, ACK_BUF, MSG_DONTWAIT)
            if r < 0:
                err = errno
                if _would_block(err):
                    return 0
                if err == EINTR:
                    continue
                r = 0                       # a broken channel is a closed one
            if r != HEADER_SIZE or buf[0] != MSG_ACK:
                # EOF, or a message the protocol does not allow.
                self._close_worker(slot)
                return 0
            count = _get_u16(buf + 2)
            if self._sched.c_try_ack(slot, count) < 0:
                self._close_worker(slot)    # acknowledged more than it was sent
                return 0
            for i in range(count):
                close(ring[w.head].fd)
                self._held -= 1
                w.head = (w.head + 1) % self.window
                w.count -= 1
        return 0

    cdef int _close_worker(self, int slot) except -1:
        """The channel is unusable: stop using it and re-queue what it had not acknowledged."""
        cdef worker_t *w = &self._workers[slot]
        cdef conn_t *ring = &self._rings[slot * self.window]
        cdef int i
        if not w.open:
            return 0
        self._pending_reserve(w.count)
        w.open = False
        self._closed_slots.append(slot)
        epoll_ctl(self._epfd, EPOLL_CTL_DEL, w.fd, NULL)   # the fd may be gone already
        self._sched.c_remove(slot)
        # The worker never confirmed these, so it may never have seen them:
        # our copy keeps each connection alive for the next worker.
        for i in range(w.count - 1, -1, -1):
            self._pending_push_front(ring[(w.head + i) % self.window])
        w.count = w.head = 0
        return 0

    cdef int _verify(self) except -1:
        # Debug builds: the counter must match what the structures hold.
        cdef long long total = self._plen
        cdef int slot
        for slot in range(self._nslots):
            total += self._workers[slot].count
            if self._workers[slot].nout:
                raise AssertionError(f"slot {slot} has unsent staged connections")
            if self._workers[slot].open and (self._workers[slot].count
                                             != self._sched.inflight_[slot]):
                raise AssertionError(f"slot {slot}: FIFO and scheduler disagree")
        if total != self._held:
            raise AssertionError(f"held_fds counter {self._held} != {total} held")
        return 0


# -- the worker -----------------------------------------------------------------------

cdef class Receiver:
    """The worker's end of the data channel: receive fd batches, acknowledge them.

    Owns ``fd``: ``close()`` closes it.
    """

    cdef int _fd
    cdef pid_t _pid
    cdef readonly long long received
    cdef readonly bint ended

    def __cinit__(self, *args, **kwargs):
        self._fd = -1

    def __init__(self, int fd):
        self._pid = getpid()
        _check_socket(fd)
        _set_nonblocking(fd)
        self._fd = fd
        self.received = 0
        self.ended = False

    def __dealloc__(self):
        if self._fd >= 0 and getpid() == self._pid:
            close(self._fd)

    def fileno(self):
        return self._fd

    def receive(self):
        """Drain the channel without blocking and acknowledge what arrived.

        Returns ``(pairs, ended)``: ``pairs`` is a list of ``(listener_id, fd)``
        (the caller owns each fd), ``ended`` is True once the primary said END
        or closed the channel.  One ACK covers everything drained.
        """
        cdef uint8_t buf[RECV_BUF]
        cdef int fds[FF_SCM_MAX_FD]
        cdef int nfds = 0, mflags = 0, err, i, j
        cdef ssize_t n
        cdef list pairs = []
        if getpid() != self._pid:
            raise RuntimeError("this Receiver belongs to the parent process")
        if self._fd < 0:
            raise ValueError("I/O operation on a closed Receiver")
        try:
            while not self.ended:
                n = ff_recv_fds(self._fd, buf, RECV_BUF, fds, FF_SCM_MAX_FD, &nfds,
                                &mflags, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)
                if n < 0:
                    err = errno
                    if _would_block(err):
                        break
                    if err == EINTR:
                        PyErr_CheckSignals()
                        continue
                    _raise_errno(err)
                if n == 0 and nfds == 0:
                    self.ended = True       # the primary closed the channel
                    break
                try:
                    self._parse(buf, n, mflags, nfds)
                except ProtocolError:
                    for i in range(nfds):
                        close(fds[i])
                    raise
                for i in range(nfds):
                    try:
                        pairs.append((_get_u16(buf + HEADER_SIZE + i * LID_SIZE), fds[i]))
                    except BaseException:
                        for j in range(i, nfds):
                            close(fds[j])
                        raise
                self.received += nfds
            if pairs:
                self._ack(len(pairs))
        except BaseException:
            for _, fd in pairs:
                close(fd)
            raise
        return pairs, self.ended

    cdef int _parse(self, const uint8_t *buf, ssize_t n, int mflags, int nfds) except -1:
        cdef int kind, count
        if mflags & (MSG_CTRUNC | MSG_TRUNC):
            raise ProtocolError("truncated message on the data channel")
        if n < HEADER_SIZE:
            raise ProtocolError(f"short message ({n} bytes) on the data channel")
        kind = buf[0]
        count = _get_u16(buf + 2)
        if kind == MSG_END:
            if nfds or count:
                raise ProtocolError("END message with a payload")
            self.ended = True
            return 0
        if kind != MSG_FDS:
            raise ProtocolError(f"unknown message type {kind} on the data channel")
        if n != HEADER_SIZE + LID_SIZE * count or nfds != count:
            raise ProtocolError(
                f"FDS message announces {count} fds, carries {nfds} in {n} bytes")
        return 0

    cdef int _ack(self, Py_ssize_t count) except -1:
        cdef uint8_t buf[HEADER_SIZE]
        cdef int m, err
        while count:
            m = <int>min(count, 0xFFFF)
            _put_header(buf, MSG_ACK, m)
            if send(self._fd, buf, HEADER_SIZE, MSG_NOSIGNAL | MSG_DONTWAIT) < 0:
                err = errno
                if err == EINTR:
                    continue
                if (err == EPIPE or err == ESHUTDOWN or err == ECONNRESET
                        or _would_block(err)):
                    # Primary gone, or (full buffer) it stopped reading: it will
                    # see EOF or the worker's exit and re-dispatch.  Acks are 4
                    # bytes against a window of connections.
                    return 0
                _raise_errno(err)
            count -= m
        return 0

    def close(self):
        if self._fd >= 0:
            if getpid() == self._pid:
                close(self._fd)
            self._fd = -1
