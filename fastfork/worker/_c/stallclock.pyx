# cython: language_level=3
"""The watchdog's clock in C: the loop's tick, and a wait for it to go stale
that holds no GIL (``fastfork.worker.liveness``).

The watchdog thread looks at the tick every ``stall_log_ms / 2``.  In Python
each look takes the GIL, and a thread that wants the GIL while the loop is
busy waits through every pass of the loop: uvloop lets the GIL go around each
poll and takes it back for each callback, each let-go wakes the waiting
thread, and the loop has it again before that thread runs.  One look cost a
hundred such wake-ups and a futex call on the loop's side for each: Flask,
one worker, a new connection per request, 0.19 wake-ups of the watchdog a
request and 92-97 µs of the worker's CPU a request against 82-89 with the
watchdog off (``--stall-log-ms 0``).  Here the looking, and the sleeping
between looks, are C without the GIL; it is taken only to log a stall, or
once per ``wait_stale``'s ``most`` seconds to read the setting again.

``liveness.PyStallClock`` is the pure-Python twin, for a build without
extensions; the same tests run against both.
"""

cimport cython
from libc.stdint cimport uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, nanosleep, timespec

# The credit page's atomics (csrc/credit.h): the same tick, the same flag.
from fastfork.handoff._c.includes.system cimport (
    ff_credit_load_flag, ff_credit_load_tick, ff_credit_store_flag, ff_credit_store_tick)

# The longest sleep between two looks at the stop flag.
cdef uint64_t SLICE_NS = 100000000


cdef inline uint64_t _now_ns() noexcept nogil:
    # time.monotonic()'s clock on Linux.
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline void _sleep_ns(uint64_t ns) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = ns // 1000000000
    ts.tv_nsec = ns % 1000000000
    nanosleep(&ts, NULL)          # EINTR (a signal): the caller looks again early


@cython.final
cdef class StallClock:
    """The loop's last tick (``tick``, from the loop's thread) and a wait for
    it to be late (``wait_stale``, from the watchdog's)."""

    cdef uint64_t _tick           # ns of time.monotonic() of the last tick; 0: idle
    cdef uint64_t _reported       # the tick whose lateness was returned
    cdef uint32_t _stopped

    def tick(self, double now):
        """The loop ticked at ``now`` (``time.monotonic()``); 0: it is idle."""
        ff_credit_store_tick(&self._tick, <uint64_t>(now * 1e9) if now > 0 else 0)

    def stop(self):
        """End a ``wait_stale`` (now or at its next look): it returns -1."""
        ff_credit_store_flag(&self._stopped, 1)

    def wait_stale(self, double threshold, double most):
        """Wait until a tick is ``threshold`` seconds old, looking every
        ``threshold / 2`` (100 ms at most, for ``stop``): its age in seconds.
        A tick is reported once; an idle loop (tick 0) never.  0.0 after
        ``most`` seconds (or none to wait for: ``threshold`` 0); -1.0 once
        stopped."""
        cdef uint64_t limit = <uint64_t>(threshold * 1e9) if threshold > 0 else 0
        cdef uint64_t step = limit // 2 if limit else SLICE_NS
        cdef uint64_t end = _now_ns() + <uint64_t>(most * 1e9 if most > 0 else 0)
        cdef uint64_t now, tick, nap
        cdef double late = 0.0
        if step > SLICE_NS:
            step = SLICE_NS
        if step == 0:
            step = 1
        with nogil:
            while True:
                if ff_credit_load_flag(&self._stopped):
                    late = -1.0
                    break
                now = _now_ns()
                tick = ff_credit_load_tick(&self._tick)
                if (limit and tick and tick != self._reported and tick < now
                        and now - tick >= limit):
                    self._reported = tick
                    late = (now - tick) / 1e9
                    break
                if now >= end:
                    break
                nap = end - now if end - now < step else step
                _sleep_ns(nap)
        return late
