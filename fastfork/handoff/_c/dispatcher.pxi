# The primary's hot path; included by dispatcher.pyx.
#
# Over 400 lines because Dispatcher is one state machine (listeners, worker
# credit, the pending queue, batching, credit from ACKs or the shared pages,
# taking connections back from a dead worker's channel) whose parts share
# its C state; splitting it would turn those C field accesses into calls.
# _py/dispatcher.py mirrors it method for method.

ctypedef struct worker_t:
    int fd              # the primary's end of the data channel (not ours to close)
    int peer            # the worker's end, kept open by the caller (see add_worker)
    bint present        # between add_worker and remove_worker
    bint open           # the channel is usable
    bint at_limit       # the worker said it is at its fd limit: send it nothing
    long long dispatched
    int count           # sent and not yet taken (the message holds them, not us)
    int nout            # connections staged for the next send (outbox)
    ff_credit_t *credit # the counters shared with the worker (credit.h), or NULL
    uint64_t taken_seen     # credit.taken as last applied
    uint64_t closed_seen    # credit.closed as last applied
    bint retired        # sent END: nothing is taken back from its channel
    bint stalled        # its loop is blocked (scheduler rule 12)
    bint probing        # tried again after a stall with no sign of life
    uint64_t since_ns   # when what it has in flight last moved (count > 0)
    uint64_t stalled_ns # when it was found stalled
    uint64_t stall_tick # its page's tick then
    long long stalls        # times found stalled
    long long taken_back    # connections read back from its channel while it lived


# no_gc_clear: __dealloc__ closes what _pending holds, so the garbage collector
# must not set _pending to None first (tp_clear does, for an object it finds
# in a cycle's garbage); a Dispatcher holds nothing that could close a cycle.
@cython.no_gc_clear
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
    cdef long long _batches[NBATCH_BUCKETS]   # sendmsg count by fds sent, for the metrics
    cdef readonly str policy             # "rr" or "least": which scheduler
    cdef readonly int stall_ms           # 0: no stall detection
    cdef readonly long long stalls       # workers found stalled, all together
    cdef readonly long long taken_back   # connections read back from a stalled worker
    cdef uint64_t _stall_ns             # a tick this late: stalled
    cdef uint64_t _untaken_ns           # a message left unread this long: stalled
    cdef uint64_t _next_stall_check      # when a verdict may change (ns), 0: none due

    cdef pid_t _pid
    cdef int _epfd
    cdef bint _closed
    cdef RoundRobinScheduler _sched
    cdef int _lfd[FF_MAX_LISTENERS]      # lid -> listening fd, -1 if free
    # Edge-triggered listeners: set by an event, cleared when accept4 says
    # EAGAIN.  A listener left with connections (credit ran out) is accepted
    # from again as soon as credit returns, with no epoll_ctl to re-arm it.
    cdef bint _backlog[FF_MAX_LISTENERS]
    cdef int _lid_end                    # 1 + the highest lid in use: what loops scan
    cdef worker_t *_workers              # slot -> worker, _nslots in use
    cdef int _nslots
    cdef int _wcap
    cdef conn_t *_outbox                 # slot * window: staged for sending
    cdef int *_touched                   # slots with a staged batch, in pick order
    cdef int _ntouched
    cdef ConnQueue _pending              # connections waiting for credit
    cdef epoll_event *_events
    cdef double _paused_until
    cdef long long _held                 # connection fds we hold: staged or pending
    cdef list _closed_slots
    cdef set _watched
    # Spare fds (copies of the epoll fd), given up only to take connections
    # back from a dead worker's channel: without them a primary at its fd
    # limit could not receive them, and the kernel would close them.
    cdef int *_spares
    cdef int _nspare
    cdef int _spare_cap
    cdef int _nshared                    # workers with a credit page

    def __cinit__(self, *args, **kwargs):
        cdef int i
        self._pending = ConnQueue()
        self._epfd = -1
        self._closed = False
        self._workers = NULL
        self._outbox = NULL
        self._touched = NULL
        self._events = NULL
        self._spares = NULL
        self._lid_end = 0
        self._nspare = self._spare_cap = 0
        self._nslots = self._wcap = self._ntouched = 0
        self._held = 0
        self._paused_until = 0.0
        memset(self._batches, 0, sizeof(self._batches))
        for i in range(FF_MAX_LISTENERS):
            self._lfd[i] = -1
            self._backlog[i] = False

    def __init__(self, window=DEFAULT_WINDOW, batch_max=DEFAULT_BATCH_MAX, pause_ms=100,
                 policy="rr", worker_connections=0, stall_ms=DEFAULT_STALL_MS):
        self.window = check_window(window)
        self.stall_ms = check_stall_ms(stall_ms)
        self._stall_ns = <uint64_t>self.stall_ms * 1000000
        self._untaken_ns = self._stall_ns * STALL_UNTAKEN_FACTOR
        self.batch_max = check_batch_max(batch_max)
        pause_ms = int(pause_ms)
        if pause_ms < 0:
            raise ValueError(f"pause_ms must be >= 0, got {pause_ms}")
        self.pause_ms = pause_ms
        self._pid = _process_id
        self._sched = scheduler_for(policy, self.window, worker_connections)
        self.policy = policy
        self._closed_slots = []
        self._watched = set()
        self._nshared = 0
        self._events = <epoll_event *>realloc(NULL, MAX_EVENTS * sizeof(epoll_event))
        if self._events == NULL:
            raise MemoryError()
        self._epfd = epoll_create1(EPOLL_CLOEXEC)
        if self._epfd < 0:
            _raise_errno(errno)
        # What one worker can have unread is its window.
        self._spare_cap = min(self.window, MAX_SPARES)
        self._spares = <int *>realloc(NULL, self._spare_cap * sizeof(int))
        if self._spares == NULL:
            raise MemoryError()
        self._refill_spares()

    def __dealloc__(self):
        # Also reached for a half-built object (a failed __init__): every
        # field starts empty in __cinit__.  No Python calls here.
        cdef int i
        if not self._closed:
            self._close_connections()
            self._release_spares()
            if self._epfd >= 0:
                close(self._epfd)
        for i in range(self._nslots):
            _unmap_credit(self._workers[i].credit)
        free(self._spares)
        free(self._workers)
        free(self._outbox)
        free(self._touched)
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
        ev.events = EPOLLIN | EPOLLET
        ev.data.u64 = _tag(KIND_LISTENER, lid)
        if epoll_ctl(self._epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            _raise_errno(errno)
        self._lfd[lid] = fd
        self._backlog[lid] = True           # it may hold connections already
        self._lid_end = max(self._lid_end, lid + 1)
        return lid

    def remove_listener(self, int lid):
        """Stop accepting on ``lid``; connections waiting for credit on it are closed."""
        cdef int fd
        self._check()
        if not 0 <= lid < FF_MAX_LISTENERS or self._lfd[lid] < 0:
            raise KeyError(f"no listener {lid}")
        fd = self._lfd[lid]
        self._lfd[lid] = -1
        self._backlog[lid] = False
        self._flush_pending()               # drops what waited for this listener
        if epoll_ctl(self._epfd, EPOLL_CTL_DEL, fd, NULL) < 0:
            _raise_errno(errno)

    def add_worker(self, int fd, int peer, int credit_fd=-1):
        """Register the primary's end of a worker's data channel; returns its slot.

        ``peer`` is the worker's end of the same channel, which the caller keeps
        open for the worker's whole life: the primary closes its copy of each
        connection as soon as the fd is sent (the in-flight message holds the
        connection, so that close is a reference drop, never a TCP teardown),
        and when the worker is gone it reads back from ``peer`` every
        connection the worker never received.

        ``credit_fd`` is a file of ``CREDIT_SIZE`` bytes (a memfd) whose page is
        shared with the worker (its ``Receiver`` maps the same one): the worker
        counts there what it received and closed, and sends an ACK only to wake
        a primary that waits for credit (``csrc/credit.h``).  It is mapped here
        and may be closed at once.  Without it (-1), ACK messages carry the
        counts: the twin's way, kept here so that this dispatcher can serve the
        twin's Receiver (which has no page).

        ``fd`` and ``peer`` stay the caller's: close them only after ``remove_worker``.
        """
        cdef int slot = 0
        cdef epoll_event ev
        cdef worker_t *w
        cdef ff_credit_t *page = NULL
        self._check()
        while slot < self._nslots and self._workers[slot].present:
            slot += 1
        if peer < 0:
            raise ValueError("peer must be the worker's end of the data channel")
        _check_socket(fd)
        _check_socket(peer)                 # its flags are the worker's: left alone
        _set_nonblocking(fd)
        if slot >= self._wcap:
            self._grow_workers(slot + 1)
        if credit_fd >= 0:
            page = _map_credit(credit_fd)
        memset(&ev, 0, sizeof(ev))
        ev.events = EPOLLIN
        ev.data.u64 = _tag(KIND_WORKER, slot)
        if epoll_ctl(self._epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            _unmap_credit(page)
            _raise_errno(errno)
        self._sched.c_add(slot)             # cannot fail: the slot is free
        w = &self._workers[slot]
        memset(w, 0, sizeof(worker_t))
        w.fd = fd
        w.peer = peer
        w.present = True
        w.open = True
        if page != NULL:
            w.credit = page
            # Counted from what the page says now: a page may be reused.
            w.taken_seen = ff_credit_load(&page.taken)
            w.closed_seen = ff_credit_load(&page.closed)
            self._nshared += 1
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

    def unsubscribe(self, int slot, int lid):
        """Send the worker in ``slot`` no more connections from listener ``lid``
        (it closed its listener; what waits goes to the others)."""
        self._check()
        if not 0 <= lid < FF_MAX_LISTENERS or self._lfd[lid] < 0:
            raise KeyError(f"no listener {lid}")
        if self._is_open(slot):
            self._sched.unsubscribe(slot, lid)

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
        self._workers[slot].retired = True
        _put_header(buf, MSG_END, 0)
        while True:
            r = send(self._workers[slot].fd, buf, HEADER_SIZE, MSG_NOSIGNAL | MSG_DONTWAIT)
            if r < 0 and _interrupted(errno):
                continue
            break
        if r < 0:
            self._close_worker(slot)

    def remove_worker(self, int slot):
        """Forget ``slot`` (worker gone); what it never took is read back from its
        end of the channel and re-dispatched."""
        self._check()
        if not self._is_present(slot):
            raise KeyError(f"no worker in slot {slot}")
        self._close_worker(slot)
        self._closed_slots = [s for s in self._closed_slots if s != slot]
        self._workers[slot].present = False
        self._workers[slot].fd = self._workers[slot].peer = -1
        self._forget_credit(slot)
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
        cdef bint settled = False
        self._check()
        if timeout_ms >= 0:
            deadline = _monotonic() + timeout_ms / 1000.0
        while True:
            if not settled:                 # else the last round's tail just did it
                self._settle()
            settled = False
            if self._nshared and self._want_credit():
                continue                    # credit came back while asking for it
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
            if self._next_stall_check:
                # A verdict on a stall may change then: wake up to make it.
                pause_left = self._ms_until(self._next_stall_check)
                timeout = pause_left if timeout < 0 else min(timeout, pause_left)
            # Release the GIL only here: this is where the primary blocks, and
            # while it waits the rest of the process (threads, the caller's
            # helpers) must be able to run.  All other work is short and
            # non-blocking.  A process with no other thread keeps it: a signal
            # still interrupts the wait (EINTR), and nobody else could use it.
            if _sole_thread():
                n = epoll_wait(self._epfd, self._events, MAX_EVENTS, timeout)
                if n < 0:
                    err = errno
            else:
                with nogil:
                    n = epoll_wait(self._epfd, self._events, MAX_EVENTS, timeout)
                    if n < 0:
                        err = errno
            if n < 0:
                # A signal: Python's handlers have run (an exception propagates);
                # return so that the caller's loop acts on what they recorded.
                if _interrupted(err):
                    break
                _raise_errno(err)
            for i in range(n):
                kind = <int>(self._events[i].data.u64 >> 32)
                ident = <int>(<uint32_t>self._events[i].data.u64)
                if kind == KIND_WORKER:
                    if self._is_open(ident):
                        self._read_acks(ident)
                elif kind == KIND_WATCH:
                    ready.append(ident)
                elif self._lfd[ident] >= 0:
                    self._backlog[ident] = True
            self._settle()
            settled = True
            if ready or (deadline >= 0 and _monotonic() >= deadline):
                break
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
        """``(dispatched, inflight)`` for one worker (dispatched: sent, less
        what was taken back from its channel)."""
        self._check()
        if not self._is_present(slot):
            raise KeyError(f"no worker in slot {slot}")
        self._sync(slot)
        return self._workers[slot].dispatched, self._workers[slot].count

    def worker_at_fd_limit(self, int slot):
        """True while the worker in ``slot`` says it is at its file-descriptor
        limit (fds sent now would arrive cut off): it is sent nothing meanwhile."""
        self._check()
        if not self._is_present(slot):
            raise KeyError(f"no worker in slot {slot}")
        self._sync(slot)
        return self._workers[slot].at_limit

    def worker_open(self, int slot):
        """Connections sent to ``slot`` and not reported closed (policy least), else None."""
        self._check()
        self._sync(slot)
        if not self._is_open(slot):
            return None
        if isinstance(self._sched, LeastConnectionsScheduler):
            return (<LeastConnectionsScheduler>self._sched).open_[slot]
        return None

    def stats(self):
        self._check()
        return {"accepted": self.accepted, "dispatched": self.dispatched,
                "redispatched": self.redispatched, "pending": self._pending.length,
                "pauses": self.pauses, "last_pause_errno": self.last_pause_errno,
                "paused": self._paused_until > _monotonic(),
                "stalls": self.stalls, "taken_back": self.taken_back,
                "stalled": sum([1 for i in range(self._nslots)
                                if self._workers[i].open and self._workers[i].stalled])}

    def worker_stalls(self, int slot):
        """``(stalled, stalls, taken_back)`` for one worker: whether its loop is
        blocked now (it is sent nothing), how many times it was found so, and
        how many connections were read back from its channel meanwhile."""
        cdef worker_t *w
        self._check()
        if not self._is_present(slot):
            raise KeyError(f"no worker in slot {slot}")
        w = &self._workers[slot]
        return bool(w.open and w.stalled), w.stalls, w.taken_back

    def batch_counts(self):
        """How many sendmsg calls carried 1, 2, 3-4, ... fds: one count per bucket of
        ``wire.BATCH_BUCKETS`` (upper bounds)."""
        self._check()
        return tuple(self._batches[i] for i in range(NBATCH_BUCKETS))

    def held_fds(self):
        """How many connection fds the primary holds: those waiting for a worker
        (pending).  What was sent is held by its message, not by the primary."""
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
        self._release_spares()
        for i in range(FF_MAX_LISTENERS):
            self._lfd[i] = -1
        for i in range(self._nslots):
            self._workers[i].present = self._workers[i].open = False
            self._workers[i].fd = self._workers[i].peer = -1
            self._forget_credit(i)
        self._watched.clear()
        if self._epfd >= 0:
            close(self._epfd)
            self._epfd = -1

    # -- internals --------------------------------------------------------------------
    cdef int _check(self) except -1:
        if _process_id != self._pid:
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
        # What was sent is held by its message on the worker's end, not here.
        cdef int slot
        for slot in range(self._nslots):
            self._workers[slot].count = 0
        self._held -= self._pending.close_all()

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

    cdef void _refill_spares(self) noexcept:
        cdef int fd
        while self._nspare < self._spare_cap:
            fd = fcntl(self._epfd, F_DUPFD_CLOEXEC, 0)
            if fd < 0:
                return                      # at the fd limit: tried again later
            self._spares[self._nspare] = fd
            self._nspare += 1

    cdef void _release_spares(self) noexcept:
        while self._nspare > 0:
            self._nspare -= 1
            close(self._spares[self._nspare])

    cdef inline bint _paused(self) noexcept:
        # Accepting is paused (out of fds or memory); no clock read when it is not.
        return self._paused_until > 0.0 and self._paused_until > _monotonic()

    cdef int _settle(self) except -1:
        # Between waits: take in the credit the pages show, send what waits
        # for it, then accept what the listeners hold.
        if self._nshared:
            self._sync_all()
        if self._stall_ns:
            self._check_stalls()
        self._flush_pending()
        if self._nspare < self._spare_cap and self._pending.length == 0:
            # Taken again only once what they made room for has gone on.
            self._refill_spares()
        self._accept_backlogged()
        return 0

    cdef int _accept_backlogged(self) except -1:
        # Listeners are edge-triggered: one left with connections when credit
        # ran out gets no new event for them, so accept here once there is
        # credit again (and not while paused).
        cdef int lid
        if self._paused():
            return 0
        for lid in range(self._lid_end):
            if (self._backlog[lid] and self._lfd[lid] >= 0
                    and self._sched.c_available(lid) > 0):
                self._accept_and_dispatch(lid)
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
        if self._paused():
            return 0                        # another listener just ran out of fds
        budget = self._sched.c_available(lid)
        try:
            while budget > 0:
                fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
                if fd < 0:
                    err = errno
                    if would_block(err):
                        err = 0
                        self._backlog[lid] = False   # until the next edge
                        break
                    if _accept_skip(err) or _interrupted(err):
                        err = 0
                        continue
                    if _accept_pause(err):
                        # Out of fds or memory: leave the backlog in the kernel and
                        # wait pause_ms (poll() accepts nothing meanwhile) instead
                        # of spinning.
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
                    self._pending.reserve(1)
                    c.fd = fd
                    c.lid = lid
                    self._pending.push_back(c)
                    continue
                self._stage(slot, fd, lid)
        finally:
            # What was accepted goes out even if accept4 failed unexpectedly
            # or a signal handler raised.
            self._send_staged()
        if err:
            _raise_errno(err)
        return 0

    cdef int _flush_pending(self) except -1:
        cdef int n, i, slot
        cdef conn_t c
        if self._pending.length == 0:
            return 0
        n = self._pending.length
        for i in range(n):
            c = self._pending.pop_front()
            if self._lfd[c.lid] < 0:
                # Its listener was removed: nobody can serve it.
                close(c.fd)
                self._held -= 1
                continue
            slot = self._sched.c_pick(c.lid)
            if slot < 0:
                self._pending.push_back(c)  # room: one was just popped
            else:
                self.redispatched += 1
                self._stage(slot, c.fd, c.lid)
        self._send_staged()
        return 0

    cdef int _send(self, int slot, conn_t *items, int n) except -1:
        cdef uint8_t buf[RECV_BUF]
        cdef int fds[FF_SCM_MAX_FD]
        cdef int start = 0, m, i
        cdef ssize_t r
        cdef uint16_t lid
        cdef worker_t *w = &self._workers[slot]
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
                if r >= 0:
                    break
                try:
                    if not _interrupted(errno):
                        break
                except BaseException:
                    # A signal handler raised: what is not sent yet waits in
                    # the pending queue for the next poll, nothing is lost.
                    self._unsend(slot, items, start, n)
                    raise
            if r < 0:
                # Park what was not sent and treat the channel as dead: a
                # worker that cannot take a message is gone or broken (Node:
                # "refused -> next worker").
                self._unsend(slot, items, start, n)
                self._close_worker(slot)
                return 0
            # Sent: the message holds each connection now, and the worker's
            # end (kept open) holds the message until the worker takes it.
            for i in range(m):
                close(items[start + i].fd)
            self._held -= m
            if w.count == 0 and self._stall_ns:
                w.since_ns = _monotonic_ns()    # its clock starts with the first
                if self._next_stall_check == 0 or (self._next_stall_check
                                                   > w.since_ns + self._untaken_ns):
                    self._next_stall_check = w.since_ns + self._untaken_ns
            w.count += m
            w.dispatched += m
            self.dispatched += m
            i = 0
            while m > BATCH_BOUNDS[i]:
                i += 1
            self._batches[i] += 1
            start += m
        return 0

    cdef int _unsend(self, int slot, conn_t *items, int start, int n) except -1:
        # Give the credit back for items[start:n] and put them first in the
        # pending queue, in their order.
        cdef int i
        self._pending.reserve(n - start)
        self._sched.c_try_ack(slot, n - start)
        for i in range(n - 1, start - 1, -1):
            self._pending.push_front(items[i])
        return 0

    cdef int _read_acks(self, int slot) except -1:
        # One recvmmsg per readiness: fewer messages than asked for means the
        # channel is empty, so no call is spent on learning it from EAGAIN.
        cdef uint8_t bufs[FF_BATCH_MAX_MSGS * ACK_BUF]
        cdef int lens[FF_BATCH_MAX_MSGS]
        cdef int n, k, count, err
        cdef uint8_t *buf
        cdef worker_t *w = &self._workers[slot]
        while w.open:
            n = ff_recv_many(w.fd, bufs, ACK_BUF, FF_BATCH_MAX_MSGS, lens, MSG_DONTWAIT)
            if n < 0:
                err = errno
                if would_block(err):
                    break
                if _interrupted(err):
                    continue
                self._close_worker(slot)    # a broken channel is a closed one
                return 0
            for k in range(n):
                buf = bufs + k * ACK_BUF
                if lens[k] != HEADER_SIZE or (buf[0] != MSG_ACK and buf[0] != MSG_CLOSED
                                              and buf[0] != MSG_LIMIT):
                    # EOF, or a message the protocol does not allow.
                    self._close_worker(slot)
                    return 0
                count = _get_u16(buf + 2)
                if buf[0] == MSG_LIMIT:
                    # Before the ACK that gives a cut-off message's credit back.
                    if count > 1:
                        self._close_worker(slot)
                        return 0
                    self._set_limit(slot, count == 1)
                    continue
                if buf[0] == MSG_CLOSED:
                    # Policy least's count of open connections; rr refuses it.
                    if self._sched.c_try_closed(slot, count) < 0:
                        self._close_worker(slot)
                        return 0
                    continue
                if self._acked(slot, count) < 0:
                    self._close_worker(slot)    # acknowledged more than it was sent
                    return 0
            if n < FF_BATCH_MAX_MSGS:
                break
        # With shared credit an ACK (of 0) only wakes us: the counts are on the page.
        self._sync(slot)
        return 0

    cdef int _acked(self, int slot, int count) except -2:
        # The worker took ``count`` more: its credit back.  -1: it never had
        # that many.
        cdef worker_t *w = &self._workers[slot]
        if self._sched.c_try_ack(slot, count) < 0:
            return -1
        w.count -= count
        if count and self._stall_ns:
            w.probing = False
            if w.stalled:
                self._unstall(slot, False)      # it took something: its loop runs
            elif w.count:
                w.since_ns = _monotonic_ns()    # it moves: the rest's clock restarts
        return 0

    cdef int _set_limit(self, int slot, bint at_limit) except -1:
        # The worker is at its fd limit (or has room again): the scheduler
        # skips it meanwhile (its rule 11).
        cdef worker_t *w = &self._workers[slot]
        if w.at_limit != at_limit:
            w.at_limit = at_limit
            self._sched.c_set_full(slot, at_limit)
        return 0

    # -- shared credit (csrc/credit.h) ----------------------------------------------
    cdef int _sync(self, int slot) except -1:
        """Apply what the worker counted on its page since the last look;
        1 if anything had moved."""
        cdef worker_t *w
        cdef uint64_t taken, closed_, dt, dc
        cdef bint at_limit
        if not self._is_open(slot) or self._workers[slot].credit == NULL:
            return 0
        w = &self._workers[slot]
        # closed first: a close is counted after its take, so the taken read
        # next covers every close seen here.  at_limit last: the worker sets
        # it before it counts a cut-off message taken, so credit seen here
        # comes with the flag that says not to use it.
        closed_ = ff_credit_load(&w.credit.closed)
        taken = ff_credit_load(&w.credit.taken)
        at_limit = ff_credit_load_flag(&w.credit.at_limit) != 0
        if at_limit != w.at_limit:
            self._set_limit(slot, at_limit)
            if taken == w.taken_seen and closed_ == w.closed_seen:
                return 1
        dt = taken - w.taken_seen
        dc = closed_ - w.closed_seen
        if dt == 0 and dc == 0:
            return 0
        if dt > <uint64_t>w.count or dc > <uint64_t>INT_MAX:
            self._close_worker(slot)        # counted more than it was sent
            return 1
        if dt:
            if self._acked(slot, <int>dt) < 0:
                self._close_worker(slot)
                return 1
            w.taken_seen = taken
        if dc:
            if self._sched.c_try_closed(slot, <int>dc) < 0:
                self._close_worker(slot)
                return 1
            w.closed_seen = closed_
        return 1

    cdef int _sync_all(self) except -1:
        """``_sync`` every worker with a page; 1 if anything had moved."""
        cdef int slot
        cdef int moved = 0
        for slot in range(self._nslots):
            if self._workers[slot].credit != NULL and self._sync(slot):
                moved = 1
        return moved

    cdef bint _starved(self) noexcept:
        # Something waits for credit: connections pending, or a listener with
        # a backlog that no worker has room for.
        cdef int lid
        if self._pending.length:
            return True
        for lid in range(self._lid_end):
            if (self._backlog[lid] and self._lfd[lid] >= 0
                    and self._sched.c_available(lid) <= 0):
                return True
        return False

    cdef int _want_credit(self) except -1:
        """Before sleeping for want of credit: ask the workers to wake us, then
        look at their pages once more.  1 if credit came back meanwhile."""
        cdef int slot
        cdef worker_t *w
        if not self._starved():
            return 0
        if self._paused():
            return 0                        # not credit we wait for
        for slot in range(self._nslots):
            w = &self._workers[slot]
            if w.open and w.credit != NULL:
                ff_credit_want(&w.credit.want)
        return self._sync_all()

    cdef void _forget_credit(self, int slot) noexcept:
        if slot < self._nslots and self._workers[slot].credit != NULL:
            _unmap_credit(self._workers[slot].credit)
            self._workers[slot].credit = NULL
            self._nshared -= 1

    cdef int _close_worker(self, int slot) except -1:
        """The channel is unusable: stop using it and re-queue what it never took."""
        cdef worker_t *w = &self._workers[slot]
        if not w.open:
            return 0
        w.open = False
        self._closed_slots.append(slot)
        epoll_ctl(self._epfd, EPOLL_CTL_DEL, w.fd, NULL)   # the fd may be gone already
        self._sched.c_remove(slot)
        w.count = 0
        self._recover(slot)
        return 0

    cdef int _recover(self, int slot) except -1:
        # Returns how many connections the messages read back announced
        # (those a cut-off message lost included).
        """Read back what the worker never received: it waits, in order, on the
        worker's end of the channel, which the caller keeps open for exactly this.

        Safe while the worker still runs (a broken protocol): each message is
        taken by one reader only, so whatever is read here the worker never had.
        """
        cdef uint8_t bufs[FF_BATCH_MAX_MSGS * RECV_BUF]
        cdef int fds[FF_BATCH_MAX_MSGS * FF_SCM_MAX_FD]
        cdef int lens[FF_BATCH_MAX_MSGS]
        cdef int mflags[FF_BATCH_MAX_MSGS]
        cdef int nfds[FF_BATCH_MAX_MSGS]
        cdef int n, k, i, count, err, code
        cdef uint8_t *buf
        cdef int *got
        cdef conn_t c
        cdef ConnQueue found = ConnQueue()
        cdef int peer = self._workers[slot].peer
        cdef int announced = 0
        self._release_spares()              # room for them even at the fd limit
        try:
            while True:
                n = ff_recv_fds_batch(peer, bufs, RECV_BUF, FF_BATCH_MAX_MSGS, lens, mflags,
                                      fds, nfds, MSG_CMSG_CLOEXEC | MSG_DONTWAIT)
                if n < 0:
                    err = errno
                    if _interrupted(err):
                        continue
                    break                   # EAGAIN: all read back
                for k in range(n):
                    buf = bufs + k * RECV_BUF
                    got = fds + k * FF_SCM_MAX_FD
                    count = nfds[k]
                    code = _check_to_worker(buf, lens[k], mflags[k], count)
                    # Cut off: the primary had no room for all of them even
                    # with the spares; the rest are lost, these are not.
                    if code != TO_WORKER_FDS and code != TO_WORKER_FDS_CUT:
                        # END, or not what this primary wrote: nothing to route.
                        for i in range(nfds[k]):
                            close(got[i])
                        continue
                    announced += _get_u16(buf + 2)
                    found.reserve(count)
                    for i in range(count):
                        c.fd = got[i]
                        c.lid = _get_u16(buf + HEADER_SIZE + i * LID_SIZE)
                        found.push_back(c)
                    self._held += count
                if n < FF_BATCH_MAX_MSGS:
                    break
        finally:
            # First in the pending queue, in the order they were accepted.
            self._pending.reserve(found.length)
            for i in range(found.length - 1, -1, -1):
                self._pending.push_front(found.items[(found.head + i) % found.capacity])
            if self._pending.length == 0:
                self._refill_spares()       # else once the pending have gone on (poll)
        return announced

    # -- stalls (scheduler rules 12 and 13) ----------------------------------------
    cdef int _check_stalls(self) except -1:
        """Find the workers whose loop is blocked, and those that run again;
        note when the next verdict may change (``_next_stall_check``)."""
        cdef int slot
        cdef uint64_t now, tick, due, next_check = 0
        cdef worker_t *w
        if self._next_stall_check == 0 and self._nshared == 0:
            return 0                        # nothing in flight, no page to read
        now = _monotonic_ns()
        for slot in range(self._nslots):
            w = &self._workers[slot]
            if not w.open or w.retired:
                continue
            tick = ff_credit_load_tick(&w.credit.tick) if w.credit != NULL else 0
            if w.stalled:
                if tick != w.stall_tick and (tick == 0 or now <= tick + self._stall_ns):
                    self._unstall(slot, False)   # its loop runs again (or went idle)
                elif tick == 0 and now >= w.stalled_ns + STALL_PROBE_MS * 1000000:
                    self._unstall(slot, True)    # no tick, no sign either way: try it
                else:
                    # Its tick still late (it stays stalled), or no sign yet.
                    if w.count and self._another_can_take(slot):
                        self._take_back(slot)   # none could when it stalled
                    due = now + self._stall_ns
                    if tick == 0:
                        due = min(due, w.stalled_ns + STALL_PROBE_MS * 1000000)
                    if next_check == 0 or due < next_check:
                        next_check = due
                    continue
            if (tick and now > tick + self._stall_ns) or (
                    w.count and now > w.since_ns + self._untaken_ns):
                self._stall(slot, now, tick)
                due = now + self._stall_ns
            elif w.count:
                due = w.since_ns + self._untaken_ns + 1
            else:
                continue
            if next_check == 0 or due < next_check:
                next_check = due
        self._next_stall_check = next_check
        return 0

    cdef int _stall(self, int slot, uint64_t now, uint64_t tick) except -1:
        # Send it nothing, and take back what it has not read.
        cdef worker_t *w = &self._workers[slot]
        cdef int back
        w.stalled = True
        w.stalled_ns = now
        w.stall_tick = tick
        if not w.probing:                   # else the same stall, still on
            w.stalls += 1
            self.stalls += 1
        self._sched.c_set_reason(slot, FF_STALLED, True)
        if w.count and self._another_can_take(slot):
            self._take_back(slot)
        return 0

    cdef bint _another_can_take(self, int slot) noexcept:
        # Taking back is for another worker to serve them: with none that
        # may be sent anything, they would only wait in the primary instead.
        # And only with every spare fd in hand (room for a window, all that
        # can wait in a channel): a primary short of fds would receive them
        # cut off, and the kernel would close what did not fit, where in the
        # live worker's channel they are safe.  And only where the others have
        # room for all of them now: what waited in the primary's queue would
        # hold fds it needs to read back a dying worker's channel whole.
        cdef int other
        cdef long room = 0
        cdef worker_t *o
        if self._nspare < self._spare_cap:
            return False
        for other in range(self._nslots):
            o = &self._workers[other]
            if (other != slot and o.open and not o.retired and not o.stalled
                    and not o.at_limit and o.count < self.window):
                room += self.window - o.count
        return room >= self._workers[slot].count

    cdef int _take_back(self, int slot) except -1:
        # What it has not read, read back from its channel to go to another.
        cdef worker_t *w = &self._workers[slot]
        cdef int back = self._recover(slot)
        if back:
            if self._sched.c_try_withdraw(slot, back) < 0 or back > w.count:
                self._close_worker(slot)    # it had fewer in flight: not our channel
                return 0
            w.count -= back
            w.dispatched -= back            # it never got them
            w.taken_back += back
            self.taken_back += back
        return 0

    cdef int _unstall(self, int slot, bint probe) except -1:
        # probe: with no sign that it runs (a worker frozen while idle has no
        # tick): what it is sent now comes back if it stays untaken.
        cdef worker_t *w = &self._workers[slot]
        w.stalled = False
        w.probing = probe
        self._sched.c_set_reason(slot, FF_STALLED, False)
        if w.count:
            w.since_ns = _monotonic_ns()
            if self._next_stall_check == 0 or (self._next_stall_check
                                               > w.since_ns + self._untaken_ns):
                self._next_stall_check = w.since_ns + self._untaken_ns
        return 0

    cdef int _ms_until(self, uint64_t when) noexcept:
        cdef uint64_t now = _monotonic_ns()
        if when <= now:
            return 0
        return <int>((when - now + 999999) // 1000000)

    cdef int _verify(self) except -1:
        # Debug builds: the counter must match what the structures hold.
        cdef long long total = self._pending.length
        cdef int slot
        if self._nspare > self._spare_cap:
            raise AssertionError(f"{self._nspare} spare fds, at most {self._spare_cap}")
        for slot in range(self._nslots):
            if self._workers[slot].nout:
                raise AssertionError(f"slot {slot} has unsent staged connections")
            if self._workers[slot].open and (self._workers[slot].count
                                             != self._sched.inflight_[slot]):
                raise AssertionError(f"slot {slot}: FIFO and scheduler disagree")
        if total != self._held:
            raise AssertionError(f"held_fds counter {self._held} != {total} held")
        return 0


