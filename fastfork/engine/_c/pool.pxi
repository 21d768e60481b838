# The pool of threads that runs a WSGI app's calls off the loop thread
# (``--threads N``), and when it wakes another of them.
#
# The GIL lets one thread run Python at a time, so for calls that do not
# block a second thread adds nothing but hand-offs: a queue that woke an idle
# thread for every call had ten threads taking turns with the GIL and with
# each other across the cores (Flask, 2 workers, keep-alive: 20.0k req/s
# with 18% of the CPU idle, against 24.6k with one thread).  So the pool has
# two modes:
#
# - calm (the calls do not block): a call goes to a thread already running,
#   which takes the calls waiting in order; a thread is woken only when none
#   is running.
# - eager (they do): every call wakes an idle thread, as any thread pool.
#
# A call that slept (a voluntary context switch between its start and its
# end: I/O, a lock, a sleep, a client too slow to take its stream), and was
# not preempted, makes the pool eager for a while, and each such call
# restarts that time: half a second, doubled (up to 8 s) each time the pool
# turns eager again soon after the last time ended, as with an app that
# blocks often (``eager_window``).
# A call that blocks before the pool knows it (the first, or in calm times)
# is noticed by the loop: calls waiting with none taken for WAKE_AFTER wake
# the idle threads and make the pool eager.  An idle thread woken is the one
# that stopped last (its stack and the app's objects are the warmest).
#
# Waiting for the GIL is a voluntary switch too.  The loop thread wants it
# whenever a response is posted or a request arrives, and takes it by force
# after the switch interval (5 ms): in mid-call, which would make a calm pool
# with a long queue eager.  So a thread that has run calls for RUN_FOR gives
# the loop its turn between two calls: it waits as if idle, and the loop
# wakes it again once it has run.  A thread preempted while it holds the GIL
# (on a busy machine) loses it so too, in mid-call: a call that was also
# preempted is not counted as one that slept.  (Counted, a Flask worker
# serving new connections on 2 busy cores turned eager once or twice in a
# few seconds, all ten threads taking turns for a second or more each time.)
# A call that blocked and was preempted as well is missed so, and the stall
# check catches it instead.
#
# The loop wakes an idle thread at the end of its pass (``_wake_due``, one
# ``call_soon``), not as the call arrives: a thread woken while the loop still
# holds the GIL wakes only to wait for it, and uvloop lets the GIL go and
# takes it back around each callback of the pass, each time waking the
# waiting thread for nothing.  Flask keep-alive, one worker, 6 pairs: the
# thread's voluntary switches from 0.23 to 0.13 a request, 66.7 µs of the
# worker's CPU a request against 70.9 (means); with 2 workers on 2 busy
# cores, the same within the noise.
#
# A thread hands its calls' responses back through ``post``: the request
# joins ``posted`` and, if the loop has not been told yet, one 8-byte write to
# the pool's eventfd (a C write, which keeps the GIL) wakes it; the loop drains
# every request posted in one callback.  (``loop.call_soon_threadsafe`` made a
# Handle per response and, on asyncio's loop, a socket send that releases the
# GIL: the loop thread took it there, mid-call, and every call slept.)
#
# The loop thread and the pool's threads take turns with the GIL, and the
# scheduler does not know it: a thread woken (a request for the loop, a call
# for a thread) preempts the one running on its CPU, often the other thread
# of the same worker, which holds the GIL; the woken one can only wait for
# it, and the preempted one runs again to let it go: two context switches
# for nothing, and a preempted thread holding the GIL stalls the worker.  So
# the pool puts the loop's thread under SCHED_BATCH before it starts its own
# threads (which inherit it): a thread of the worker that wakes waits for the
# running one's turn to end, or for a free CPU, instead of preempting it.
# Measured (Flask, 2 workers, 2 cores, a new connection per request; the
# server in a session of its own, as web_compare starts it): 1.10-1.43
# context switches a request against 1.59-2.40, and 5,941 req/s against
# 5,507 (5 pairs).  But a woken thread that does not preempt waits for
# other processes' turns too: the next day the same p99 latency measured
# 1.7x (Flask keep-alive, 1 worker, wrk -c8; 5 pairs) and 3-5x beside two
# CPU-bound processes, so it is off by default (``--wsgi-sched-batch``).
# A policy that is not SCHED_OTHER (an operator's choice) is left alone,
# and closing the pool restores SCHED_OTHER.
#
# The loop thread and the pool's threads share ``pending``, ``idle``,
# ``taken``, ``eager_until``, ``posted`` and ``signalled``; each method that
# touches them runs no Python code between reading and writing them, so the
# GIL makes it atomic.  (This module does not declare itself free-threading
# safe, so a free-threaded CPython turns the GIL on when it imports it.)

# How long calls may wait, none of them taken, before the loop wakes threads:
# longer than the scheduler keeps a busy thread off a loaded CPU, or the pool
# turns eager for calls that never block.
cdef double WAKE_AFTER = 0.005
# How long the pool stays eager after a call that slept: the first time, and
# at most.  A return to calm costs the calls behind the next one that blocks a
# wait (up to WAKE_AFTER); a long eager time costs an app that blocked once
# (its first call, importing) its calm.
cdef double EAGER_MIN = 0.5
cdef double EAGER_MAX = 8.0
# How long a thread runs calls back to back (from its waking) before it gives
# the loop its turn: well under the GIL's switch interval.
cdef double RUN_FOR = 0.001


cdef (double, double) eager_window(double now, double until, double length) noexcept:
    """The pool, eager until ``until`` for ``length`` seconds, turns eager at
    ``now``: its new (until, length).  Eager still: the time restarts.  Calm
    for less than its last eager time: twice as long.  Else: EAGER_MIN."""
    if now >= until:
        if now < until + length:
            length = min(length * 2, EAGER_MAX)
        else:
            length = EAGER_MIN
    return now + length, length


def _eager_window(double now, double until, double length):
    """``eager_window`` for the tests' table."""
    return eager_window(now, until, length)


@cython.final
cdef class _PoolThread:
    cdef object lock            # held while the thread waits: released to wake it
    cdef object item            # the call it is given: (StartResponse, environ)
    cdef double woken           # monotonic() when it was woken: its turn's start


@cython.final
cdef class WsgiPool:
    cdef object loop
    cdef object pending         # calls no thread has taken yet, in arrival order
    cdef list idle              # the threads waiting, the last to stop on top
    cdef Py_ssize_t size
    cdef unsigned long taken    # calls taken so far: the queue's progress
    cdef unsigned long taken_seen
    cdef object check_handle    # the loop's timer that looks at the progress
    cdef int efd                # the eventfd the threads wake the loop with
    cdef list posted            # requests whose thread has parts or an end for the loop
    cdef bint signalled         # the eventfd was written since the loop last drained
    cdef double eager_until     # monotonic(): eager until then
    cdef double eager_for       # how long a call that sleeps makes it eager now
    cdef bint closed
    cdef object batched         # the thread put under SCHED_BATCH (its ident), or None
    cdef bint wake_due          # a wake is queued for the end of the loop's pass

    def __cinit__(self):
        self.efd = -1

    def __init__(self, loop, int size, bint sched_batch=False):
        cdef _PoolThread pt
        self.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
        if self.efd < 0:
            raise OSError(errno, "eventfd failed")
        self.loop = loop
        self.posted = []
        loop.add_reader(self.efd, self._on_posted)
        self.pending = collections.deque()
        self.idle = []
        self.size = size
        if sched_batch and _set_policy(os.SCHED_OTHER, os.SCHED_BATCH):
            self.batched = threading.get_ident()
        for i in range(size):
            pt = _PoolThread.__new__(_PoolThread)
            pt.lock = threading.Lock()
            pt.lock.acquire()
            self.idle.append(pt)
            threading.Thread(target=_pool_run, args=(self, pt), name=f"fastfork-wsgi-{i}",
                             daemon=True).start()

    cdef submit(self, StartResponse start, dict environ):
        """(loop) Have the app called for this request."""
        self.pending.append((start, environ))
        if self.idle and (len(self.idle) == self.size or monotonic() < self.eager_until):
            if not self.wake_due:
                self.wake_due = True
                self.loop.call_soon(self._wake_due)
        elif self.idle and self.check_handle is None:
            self.arm_check()

    def _wake_due(self):
        """(loop) The end of the pass that submitted calls: wake a thread for
        them (calm: one if none runs; eager: one a call)."""
        self.wake_due = False
        if self.closed:
            return
        self.resume()
        while self.idle and self.pending and monotonic() < self.eager_until:
            self.wake(self.pending.popleft())
        if self.pending and self.idle and self.check_handle is None:
            self.arm_check()

    def check(self):
        """(loop) Calls are waiting: if none was taken since the last look, the
        running threads are stuck (blocked, or in long calls): wake one more."""
        self.check_handle = None
        if self.closed or not self.pending or not self.idle:
            return
        if not self.resume() and self.taken == self.taken_seen:
            self.turn_eager()
            while self.pending and self.idle:
                self.wake(self.pending.popleft())
            return
        if self.pending and self.idle:
            self.arm_check()

    cdef arm_check(self):
        """(loop) Look at the queue's progress in WAKE_AFTER (``check``)."""
        self.taken_seen = self.taken
        self.check_handle = self.loop.call_later(WAKE_AFTER, self.check)

    cdef bint resume(self):
        """(loop) Calls wait and every thread is idle (one gave the loop its turn):
        wake one."""
        if self.pending and len(self.idle) == self.size and not self.closed:
            self.wake(self.pending.popleft())
            return True
        return False

    cdef post(self, StartResponse start):
        """(thread) ``start`` has something for the loop: wake it, once per drain."""
        self.posted.append(start)
        self.signal()

    cdef signal(self):
        cdef uint64_t one = 1
        if not self.signalled:
            self.signalled = True
            write(self.efd, &one, sizeof(one))

    def _on_posted(self):
        """(loop) Drain every request the threads posted."""
        cdef uint64_t count
        cdef StartResponse start
        read(self.efd, &count, sizeof(count))
        self.signalled = False
        posted, self.posted = self.posted, []
        for start in posted:
            try:
                start.drain()
            except Exception as exc:      # a bug: the others are still drained
                start.ex.conn.engine.logger.error("Exception draining a WSGI response\n",
                                                  exc_info=exc)
        self.resume()

    cdef turn_eager(self):
        """A call slept, or calls were stuck."""
        self.eager_until, self.eager_for = eager_window(monotonic(), self.eager_until,
                                                        self.eager_for)

    cdef wake(self, item):
        cdef _PoolThread pt = self.idle.pop()
        pt.item = item
        pt.woken = monotonic()
        self.taken += 1
        pt.lock.release()

    cdef bint next_call(self, _PoolThread pt, bint slept):
        """(thread) ``pt``'s call is done (``slept``: it slept); give it the next
        waiting call.  False: none, and ``pt`` is idle."""
        if slept:
            self.turn_eager()
        if self.pending:
            if monotonic() - pt.woken < RUN_FOR or self.closed:
                pt.item = self.pending.popleft()
                self.taken += 1
                return True
            # Its turn is over: the thread waits (letting the GIL go) and the
            # loop, once it has run, wakes it again for the calls waiting.
            self.idle.append(pt)
            self.signal()
            return False
        if not self.closed:
            self.idle.append(pt)
        return False

    cdef close(self):
        """The threads end once the calls given to them are done."""
        cdef _PoolThread pt
        if self.closed:
            return
        self.closed = True
        if self.batched == threading.get_ident():
            _set_policy(os.SCHED_BATCH, os.SCHED_OTHER)
        self.batched = None
        self.loop.remove_reader(self.efd)
        if self.check_handle is not None:
            self.check_handle.cancel()
            self.check_handle = None
        idle, self.idle = self.idle, []
        for pt in idle:
            pt.item = None
            pt.lock.release()

    def __dealloc__(self):
        # Not in close(): a thread finishing a call may still post, and the
        # fd's number must not be another file's by then.  The threads hold
        # the pool until they end.
        if self.efd >= 0:
            close(self.efd)


def _set_policy(int was, int to):
    """The calling thread's scheduling policy from ``was`` to ``to`` (its nice
    value kept); False if it was not ``was`` or the kernel refused."""
    try:
        if os.sched_getscheduler(0) != was:
            return False
        os.sched_setscheduler(0, to, os.sched_param(0))
    except OSError:               # a seccomp filter, or a kernel without it
        return False
    return True


def _pool_run(WsgiPool pool, _PoolThread pt):
    """A pool thread: wait to be woken, then run calls while there are any."""
    cdef rusage usage
    cdef long switches, preempted     # the thread's voluntary and involuntary switches
    usage.ru_nvcsw = usage.ru_nivcsw = 0  # (getrusage cannot fail for the calling thread)
    cdef bint slept
    while True:
        pt.lock.acquire()
        item, pt.item = pt.item, None
        # One reading a call: the end of one is the start of the next (what
        # runs between, next_call, neither blocks nor lets the GIL go).
        getrusage(RUSAGE_THREAD, &usage)
        switches, preempted = usage.ru_nvcsw, usage.ru_nivcsw
        while item is not None:
            run_in_thread(<StartResponse>item[0], <dict>item[1])
            item = None           # hold nothing of a finished request while waiting
            getrusage(RUSAGE_THREAD, &usage)
            slept = usage.ru_nvcsw != switches and usage.ru_nivcsw == preempted
            switches, preempted = usage.ru_nvcsw, usage.ru_nivcsw
            if pool.next_call(pt, slept):
                item, pt.item = pt.item, None
        if pool.closed:
            return
