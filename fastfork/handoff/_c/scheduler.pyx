# cython: language_level=3
"""Which worker gets the next connection: the C twin of ``_py/scheduler.py``.

Same rules (see that module's docstring), same Python methods and exceptions;
``dispatcher.pyx`` calls the ``c_*`` methods declared in ``scheduler.pxd``.
"""

from libc.limits cimport INT_MAX
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memset

from fastfork.handoff.wire import check_build, check_window, check_worker_connections

check_build(__name__, {"MAX_LISTENERS": FF_MAX_LISTENERS})
MAX_LISTENERS = FF_MAX_LISTENERS


def scheduler_for(policy, window, worker_connections=0):
    """The scheduler of a dispatching policy: the one place that maps a
    policy name to a scheduler class (the twin has the same function)."""
    if policy == "least":
        return LeastConnectionsScheduler(window, worker_connections)
    if policy == "rr":
        if worker_connections:
            raise ValueError(f"worker_connections needs policy least, not {policy!r}")
        return RoundRobinScheduler(window)
    raise ValueError(f"policy {policy!r} has no scheduler (the primary dispatches "
                     "only under rr and least)")


cdef class RoundRobinScheduler:
    """Round-robin over workers that have credit (see ``_py/scheduler.py``)."""

    def __cinit__(self, *args, **kwargs):
        cdef int i
        self.nslots = 0
        self.capacity = 0
        self.present = NULL
        self.active = NULL
        self.why_not = NULL
        self.inflight_ = NULL
        self.subs = NULL
        for i in range(FF_MAX_LISTENERS):
            self.cursor[i] = -1

    def __init__(self, window):
        self.window = check_window(window)

    def __dealloc__(self):
        free(self.present)
        free(self.active)
        free(self.why_not)
        free(self.inflight_)
        free(self.subs)

    # -- C interface --------------------------------------------------------------
    cdef int _grow(self, int need) except -1:
        cdef int cap = self.capacity if self.capacity > 0 else 8
        cdef void *p
        while cap < need:
            cap *= 2
        # Each realloc is stored at once, so a failure leaves consistent state.
        p = realloc(self.present, cap * sizeof(unsigned char))
        if p == NULL:
            raise MemoryError()
        self.present = <unsigned char *>p
        p = realloc(self.active, cap * sizeof(unsigned char))
        if p == NULL:
            raise MemoryError()
        self.active = <unsigned char *>p
        p = realloc(self.why_not, cap * sizeof(unsigned char))
        if p == NULL:
            raise MemoryError()
        self.why_not = <unsigned char *>p
        p = realloc(self.inflight_, cap * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self.inflight_ = <int *>p
        p = realloc(self.subs, cap * sizeof(uint64_t))
        if p == NULL:
            raise MemoryError()
        self.subs = <uint64_t *>p
        self.capacity = cap
        return 0

    cdef int _check(self, int slot) except -1:
        if not self.c_has(slot):
            raise KeyError(f"no worker in slot {slot}")
        return 0

    cdef bint c_has(self, int slot) noexcept:
        return 0 <= slot < self.nslots and self.present[slot]

    cdef int c_add(self, int slot) except -1:
        cdef int i
        if slot < 0:
            raise ValueError(f"slot must be >= 0, got {slot}")
        if slot >= self.nslots:
            if slot >= self.capacity:
                self._grow(slot + 1)
            for i in range(self.nslots, slot + 1):
                self.present[i] = 0
                self.active[i] = 0
                self.why_not[i] = 0
                self.inflight_[i] = 0
                self.subs[i] = 0
            self.nslots = slot + 1
        if self.present[slot]:
            raise ValueError(f"slot {slot} is already in use")
        self.present[slot] = 1
        self.active[slot] = 1
        self.why_not[slot] = 0
        self.inflight_[slot] = 0
        self.subs[slot] = 0
        return 0

    cdef int c_remove(self, int slot) except -1:
        cdef int lost
        self._check(slot)
        self.present[slot] = 0
        self.active[slot] = 0
        self.why_not[slot] = 0
        self.subs[slot] = 0
        lost = self.inflight_[slot]
        self.inflight_[slot] = 0
        return lost

    cdef int c_subscribe(self, int slot, int lid) except -1:
        self._check(slot)
        if not 0 <= lid < FF_MAX_LISTENERS:
            raise ValueError(
                f"listener id must be in 0..{FF_MAX_LISTENERS - 1}, got {lid}")
        self.subs[slot] |= (<uint64_t>1) << lid
        return 0

    cdef int c_retire(self, int slot) except -1:
        self._check(slot)
        self.why_not[slot] |= FF_RETIRED
        self.active[slot] = 0
        return 0

    cdef int c_set_full(self, int slot, bint full) except -1:
        # Rule 11.
        return self.c_set_reason(slot, FF_FULL, full)

    cdef int c_set_reason(self, int slot, int reason, bint on) except -1:
        # Rules 11 and 12.  Kept apart from active so that the hot path reads one byte.
        self._check(slot)
        if on:
            self.why_not[slot] |= reason
        else:
            self.why_not[slot] &= ~reason
        self.active[slot] = self.why_not[slot] == 0
        return 0

    cdef int c_pick(self, int lid) noexcept:
        cdef int n = self.nslots
        cdef int start, step, slot
        cdef uint64_t bit = (<uint64_t>1) << lid
        if n == 0:
            return -1
        start = self.cursor[lid]     # -1 or a slot < n: (start + step) >= 0
        for step in range(1, n + 1):
            slot = (start + step) % n
            if (self.active[slot] and (self.subs[slot] & bit)
                    and self.inflight_[slot] < self.window):
                self.inflight_[slot] += 1
                self.cursor[lid] = slot
                return slot
        return -1

    cdef int c_available(self, int lid) noexcept:
        cdef int slot
        cdef int total = 0
        cdef uint64_t bit = (<uint64_t>1) << lid
        for slot in range(self.nslots):
            if self.active[slot] and (self.subs[slot] & bit):
                total += self.window - self.inflight_[slot]
        return total

    cdef int c_try_ack(self, int slot, int count) noexcept:
        if not self.c_has(slot) or count < 0 or count > self.inflight_[slot]:
            return -1
        self.inflight_[slot] -= count
        return 0

    cdef int c_try_closed(self, int slot, int count) noexcept:
        return -1                    # rule 10: round-robin counts no closes

    cdef int c_try_withdraw(self, int slot, int count) noexcept:
        # Rule 13 (least's override also takes them off the open count).
        return self.c_try_ack(slot, count)

    # -- Python interface (same as _py/scheduler.py) ------------------
    def add(self, int slot):
        self.c_add(slot)

    def remove(self, int slot):
        """Forget a worker; returns how many connections it had unacknowledged."""
        return self.c_remove(slot)

    def subscribe(self, int slot, int lid):
        self.c_subscribe(slot, lid)

    def unsubscribe(self, int slot, int lid):
        """The worker closed its listener ``lid``: pick it for that one no more."""
        self._check(slot)
        if not 0 <= lid < FF_MAX_LISTENERS:
            raise ValueError(f"listener id must be in 0..{FF_MAX_LISTENERS - 1}, got {lid}")
        self.subs[slot] &= ~((<uint64_t>1) << lid)

    def retire(self, int slot):
        self.c_retire(slot)

    def set_full(self, int slot, bint full):
        """Rule 11: a worker at its fd limit is not picked until it has room."""
        self.c_set_full(slot, full)

    def set_stalled(self, int slot, bint stalled):
        """Rule 12: a worker whose loop is blocked is not picked until it runs again."""
        self.c_set_reason(slot, FF_STALLED, stalled)

    def withdraw(self, int slot, long long count):
        """Rule 13: ``count`` connections in flight were taken back unread."""
        self._check(slot)
        if count < 0 or count > self.inflight_[slot]:
            raise ValueError(
                f"slot {slot}: {count} connections taken back "
                f"but {self.inflight_[slot]} in flight")
        self.c_try_withdraw(slot, <int>count)

    def pick(self, int lid):
        """The slot that gets the next connection on ``lid``, or -1."""
        _check_lid(lid)
        return self.c_pick(lid)

    def ack(self, int slot, long long count):
        """Credit back ``count`` connections; raises if more than in flight."""
        self._check(slot)
        if count < 0 or count > self.inflight_[slot]:
            raise ValueError(
                f"slot {slot} acknowledged {count} connections "
                f"but has {self.inflight_[slot]} in flight")
        self.inflight_[slot] -= <int>count

    def closed(self, int slot, long long count):
        """A worker reported ``count`` connections closed (rule 10: not counted here)."""
        self._check(slot)
        raise ValueError(f"slot {slot} reported {count} closed connections, "
                         "but round-robin does not count them")

    def available(self, int lid):
        """Total credit of the workers eligible for ``lid``."""
        _check_lid(lid)
        return self.c_available(lid)

    def inflight(self, int slot):
        self._check(slot)
        return self.inflight_[slot]


cdef class LeastConnectionsScheduler(RoundRobinScheduler):
    """Fewest open connections first, ties round-robin (see ``_py/scheduler.py``)."""

    def __cinit__(self, *args, **kwargs):
        self.open_ = NULL            # the base's __cinit__ has run first

    def __init__(self, window, worker_connections=0):
        RoundRobinScheduler.__init__(self, window)
        self.worker_connections = check_worker_connections(worker_connections)

    def __dealloc__(self):
        free(self.open_)

    cdef int _grow(self, int need) except -1:
        cdef void *p
        RoundRobinScheduler._grow(self, need)
        p = realloc(self.open_, self.capacity * sizeof(int))
        if p == NULL:
            raise MemoryError()
        self.open_ = <int *>p
        return 0

    cdef int c_add(self, int slot) except -1:
        RoundRobinScheduler.c_add(self, slot)
        self.open_[slot] = 0
        return 0

    cdef int c_remove(self, int slot) except -1:
        cdef int lost = RoundRobinScheduler.c_remove(self, slot)
        self.open_[slot] = 0
        return lost

    cdef int c_pick(self, int lid) noexcept:
        cdef int n = self.nslots
        cdef int cap = self.worker_connections
        cdef int start, step, slot, best = -1
        cdef uint64_t bit = (<uint64_t>1) << lid
        if n == 0:
            return -1
        start = self.cursor[lid]
        for step in range(1, n + 1):
            slot = (start + step) % n
            if (self.active[slot] and (self.subs[slot] & bit)
                    and self.inflight_[slot] < self.window
                    and (cap == 0 or self.open_[slot] < cap)
                    and (best < 0 or self._before(slot, best))):
                best = slot          # strictly before: the first of equals keeps it
        if best >= 0:
            self.inflight_[best] += 1
            self.open_[best] += 1
            self.cursor[lid] = best
        return best

    cdef bint _before(self, int a, int b) noexcept:
        # Rule 7's order (_py/scheduler.py says why): nothing in flight first, then fewer open.
        cdef bint a_waits = self.inflight_[a] > 0
        cdef bint b_waits = self.inflight_[b] > 0
        if a_waits != b_waits:
            return b_waits
        return self.open_[a] < self.open_[b]

    cdef int c_available(self, int lid) noexcept:
        cdef int slot, room
        cdef int total = 0
        cdef int cap = self.worker_connections
        cdef uint64_t bit = (<uint64_t>1) << lid
        for slot in range(self.nslots):
            if self.active[slot] and (self.subs[slot] & bit):
                room = self.window - self.inflight_[slot]
                if cap:
                    room = min(room, cap - self.open_[slot])
                total += max(room, 0)
        return total

    cdef int c_try_closed(self, int slot, int count) noexcept:
        if (not self.c_has(slot) or count < 0
                or count > self.open_[slot] - self.inflight_[slot]):
            return -1
        self.open_[slot] -= count
        return 0

    cdef int c_try_withdraw(self, int slot, int count) noexcept:
        if RoundRobinScheduler.c_try_withdraw(self, slot, count) < 0:
            return -1
        self.open_[slot] -= count    # never sent: never open
        return 0

    def closed(self, int slot, long long count):
        """``count`` connections of ``slot`` closed; raises if it never acknowledged them."""
        self._check(slot)
        if self.c_try_closed(slot, <int>count if 0 <= count <= INT_MAX else -1) < 0:
            raise ValueError(
                f"slot {slot} reported {count} connections closed "
                f"but has {self.open_[slot] - self.inflight_[slot]} acknowledged and open")

    def open_connections(self, int slot):
        """Connections sent to ``slot`` and not reported closed."""
        self._check(slot)
        return self.open_[slot]



cdef int _check_lid(int lid) except -1:
    if not 0 <= lid < FF_MAX_LISTENERS:
        raise ValueError(f"listener id must be in 0..{FF_MAX_LISTENERS - 1}, got {lid}")
    return 0
