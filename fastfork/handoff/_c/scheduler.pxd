# The C-level interface of scheduler.pyx, cimported by dispatcher.pyx so
# that the hot path picks workers without going through Python calls.
from libc.stdint cimport uint64_t

cdef enum:
    FF_MAX_LISTENERS = 64

cdef enum:
    FF_RETIRED = 1           # retire(): for good
    FF_FULL = 2              # set_full(): until set_full(slot, False)
    FF_STALLED = 4           # set_stalled(): until set_stalled(slot, False)


cdef class RoundRobinScheduler:
    cdef readonly int window
    cdef int nslots          # slots known so far (len(_present) in the twin); never shrinks
    cdef int capacity        # allocated length of the arrays below
    cdef unsigned char *present
    cdef unsigned char *active   # may be picked: present, and no reason in why_not
    cdef unsigned char *why_not  # FF_RETIRED | FF_FULL: why a present slot is not active
    cdef int *inflight_
    cdef uint64_t *subs      # bit lid set: subscribed to listener lid
    cdef int cursor[FF_MAX_LISTENERS]   # lid -> slot picked last

    # Python-raising helpers (cold path).
    cdef int _grow(self, int need) except -1
    cdef int _check(self, int slot) except -1
    cdef int c_add(self, int slot) except -1
    cdef int c_remove(self, int slot) except -1       # returns the lost count
    cdef int c_subscribe(self, int slot, int lid) except -1
    cdef int c_retire(self, int slot) except -1
    cdef int c_set_full(self, int slot, bint full) except -1
    cdef int c_set_reason(self, int slot, int reason, bint on) except -1
    # Hot path: no exceptions.  lid must be in 0..FF_MAX_LISTENERS-1.
    cdef int c_pick(self, int lid) noexcept
    cdef int c_available(self, int lid) noexcept
    cdef int c_try_ack(self, int slot, int count) noexcept   # 0, or -1 if invalid
    cdef int c_try_closed(self, int slot, int count) noexcept  # 0, or -1 if invalid
    cdef int c_try_withdraw(self, int slot, int count) noexcept  # 0, or -1 if invalid
    cdef bint c_has(self, int slot) noexcept


# Policy least: overrides the cdef methods above (they are virtual), so the
# dispatcher calls whichever scheduler it holds through the same interface.
cdef class LeastConnectionsScheduler(RoundRobinScheduler):
    cdef readonly int worker_connections   # 0: no cap
    cdef int *open_          # slot -> sent and not reported closed
    cdef bint _before(self, int a, int b) noexcept   # rule 7's order of two slots
