"""Which worker gets the next connection: pure logic, no I/O.

This module is the pure-Python twin of ``_c/scheduler.pyx``; both obey
the same rules and run the same table tests (``tests/test_scheduler.py``).

Rules
-----
1. Workers live in small integer *slots* (``add(slot)``).  A slot that was
   removed may be added again later by a replacement worker.
2. Each worker has a credit window: it may hold at most ``window`` connections
   that it has not yet acknowledged.  ``pick`` consumes one credit, ``ack(n)``
   gives ``n`` back.  A worker with no credit is never picked, so a worker
   whose event loop is stuck stops receiving connections after ``window``.
3. A worker receives connections only for listeners it subscribed to
   (``subscribe(slot, lid)``; ``unsubscribe(slot, lid)`` withdraws one, when
   the worker closed that listener), and only while it is active: ``retire(slot)``
   stops new dispatches to it for good (graceful stop, rolling reload).
4. Among the eligible workers the choice is round-robin in slot order, with
   one cursor per listener: the worker after the one picked last.
5. ``pick`` returns -1 when no worker is eligible; the caller must then stop
   accepting so the backlog stays in the kernel's listen queue.

Least connections (``LeastConnectionsScheduler``, policy ``least``)
------------------------------------------------------------------
Rules 1-5 hold, and:

6. Each worker has an *open* count: connections sent to it and not yet
   reported closed.  ``pick`` adds one; ``closed(n)`` takes ``n`` off.  A
   worker can only close what it has acknowledged, so ``closed(n)`` raises if
   ``n`` is more than open minus in flight (and changes nothing).
7. Among the eligible workers the one with the fewest open connections is
   picked, but a worker that has taken everything it was sent (nothing in
   flight) comes before one that has not; ties go round-robin (rule 4: the
   first such worker after the one picked last on that listener).  With
   equal counts this is rule 4 exactly.  Why the first key: a worker whose
   loop is blocked (a slow request, a synchronous call) takes nothing, so
   what it was sent stays in flight, while a healthy worker takes its
   connections within one loop iteration.  By open counts alone it would
   look least loaded (it closes nothing, but it also gets its share until
   its count matches the others') and keep getting connections it cannot
   serve; this way it gets at most the one that finds it blocked, until the
   others have connections in flight too.  The cost: within one accept
   batch (no new counts from the workers in between) each other worker with
   nothing in flight gets one before the emptiest worker gets its second,
   so a burst sends at most workers - 1 connections past the emptiest
   worker per batch (a worker that just replaced another fills a little
   more slowly).
8. ``worker_connections`` > 0 caps the open count: a worker at its cap is not
   eligible, and ``available`` counts for each worker the smaller of its
   credit and its room under the cap.  All workers at their cap: ``pick`` is
   -1 (rule 5), so new connections wait in the kernel's backlog.
9. ``remove`` forgets the open count with the worker (what it had open died
   with it); the in-flight count is returned as before.
10. ``RoundRobinScheduler`` counts no closes: ``closed`` raises ValueError
    there (a worker reports closes only under ``least``).

Both
----
11. ``set_full(slot, True)``: the worker is at its file-descriptor limit
    (fds sent to it now would arrive cut off, their connections lost), so
    it is not eligible until ``set_full(slot, False)``.  Unlike ``retire``
    this ends; meanwhile its in-flight and open counts go on as before (it
    still acknowledges and closes), and ``available`` counts no credit of it.
"""
from ..wire import MAX_LISTENERS, check_window, check_worker_connections



def scheduler_for(policy, window, worker_connections=0):
    """The scheduler of a dispatching policy: the one place that maps a
    policy name to a scheduler class (the C twin has the same function)."""
    if policy == "least":
        return LeastConnectionsScheduler(window, worker_connections)
    if policy == "rr":
        if worker_connections:
            raise ValueError(f"worker_connections needs policy least, not {policy!r}")
        return RoundRobinScheduler(window)
    raise ValueError(f"policy {policy!r} has no scheduler (the primary dispatches "
                     "only under rr and least)")


def _check_lid(lid):
    if not 0 <= lid < MAX_LISTENERS:
        raise ValueError(f"listener id must be in 0..{MAX_LISTENERS - 1}, got {lid}")
    return lid


class RoundRobinScheduler:
    """Round-robin over workers that have credit (see the module docstring)."""

    __slots__ = ("window", "_present", "_active", "_why_not", "_inflight", "_subs", "_cursor")

    _RETIRED = 1         # retire(): for good
    _FULL = 2            # set_full(): until set_full(slot, False)
    _STALLED = 4         # set_stalled(): until set_stalled(slot, False)

    def __init__(self, window):
        self.window = check_window(window)
        self._present = []   # slot -> bool
        self._active = []    # slot -> bool: may be picked (present, no reason in _why_not)
        self._why_not = []   # slot -> _RETIRED | _FULL: why a present slot is not active
        self._inflight = []  # slot -> connections sent but not acknowledged
        self._subs = []      # slot -> bitmask of listener ids
        self._cursor = [-1] * MAX_LISTENERS  # lid -> slot picked last

    # -- membership -----------------------------------------------------
    def add(self, slot):
        if slot < 0:
            raise ValueError(f"slot must be >= 0, got {slot}")
        while len(self._present) <= slot:
            self._present.append(False)
            self._active.append(False)
            self._why_not.append(0)
            self._inflight.append(0)
            self._subs.append(0)
        if self._present[slot]:
            raise ValueError(f"slot {slot} is already in use")
        self._present[slot] = True
        self._active[slot] = True
        self._why_not[slot] = 0
        self._inflight[slot] = 0
        self._subs[slot] = 0

    def remove(self, slot):
        """Forget a worker; returns how many connections it had unacknowledged."""
        self._check(slot)
        self._present[slot] = False
        self._active[slot] = False
        self._why_not[slot] = 0
        self._subs[slot] = 0
        lost, self._inflight[slot] = self._inflight[slot], 0
        return lost

    def subscribe(self, slot, lid):
        self._check(slot)
        self._subs[slot] |= 1 << _check_lid(lid)

    def unsubscribe(self, slot, lid):
        """The worker closed its listener ``lid``: pick it for that one no more."""
        self._check(slot)
        self._subs[slot] &= ~(1 << _check_lid(lid))

    def retire(self, slot):
        self._check(slot)
        self._why_not[slot] |= self._RETIRED
        self._active[slot] = False

    def set_full(self, slot, full):
        """Rule 11: a worker at its fd limit is not picked until it has room."""
        self._set_reason(slot, self._FULL, full)

    def set_stalled(self, slot, stalled):
        """Rule 12: a worker whose loop is blocked is not picked until it runs again."""
        self._set_reason(slot, self._STALLED, stalled)

    def _set_reason(self, slot, reason, on):
        self._check(slot)
        if on:
            self._why_not[slot] |= reason
        else:
            self._why_not[slot] &= ~reason
        self._active[slot] = self._why_not[slot] == 0

    # -- decisions ------------------------------------------------------
    def pick(self, lid):
        """The slot that gets the next connection on ``lid``, or -1."""
        _check_lid(lid)
        n = len(self._present)
        if n == 0:
            return -1
        bit = 1 << lid
        start = self._cursor[lid]
        for step in range(1, n + 1):
            slot = (start + step) % n
            if (self._active[slot] and self._subs[slot] & bit
                    and self._inflight[slot] < self.window):
                self._inflight[slot] += 1
                self._cursor[lid] = slot
                return slot
        return -1

    def ack(self, slot, count):
        """Credit back ``count`` connections; raises if more than in flight."""
        self._check(slot)
        if count < 0 or count > self._inflight[slot]:
            raise ValueError(
                f"slot {slot} acknowledged {count} connections "
                f"but has {self._inflight[slot]} in flight")
        self._inflight[slot] -= count

    def withdraw(self, slot, count):
        """Rule 13: ``count`` connections in flight were taken back unread."""
        self._check(slot)
        if count < 0 or count > self._inflight[slot]:
            raise ValueError(
                f"slot {slot}: {count} connections taken back "
                f"but {self._inflight[slot]} in flight")
        self._inflight[slot] -= count

    def closed(self, slot, count):
        """A worker reported ``count`` connections closed (rule 10: not counted here)."""
        self._check(slot)
        raise ValueError(f"slot {slot} reported {count} closed connections, "
                         "but round-robin does not count them")

    def available(self, lid):
        """Total credit of the workers eligible for ``lid``."""
        bit = 1 << _check_lid(lid)
        total = 0
        for slot in range(len(self._present)):
            if self._active[slot] and self._subs[slot] & bit:
                total += self.window - self._inflight[slot]
        return total

    def inflight(self, slot):
        self._check(slot)
        return self._inflight[slot]

    def _check(self, slot):
        if not (0 <= slot < len(self._present) and self._present[slot]):
            raise KeyError(f"no worker in slot {slot}")


class LeastConnectionsScheduler(RoundRobinScheduler):
    """Fewest open connections first, ties round-robin (rules 6-9)."""

    __slots__ = ("worker_connections", "_open")

    def __init__(self, window, worker_connections=0):
        super().__init__(window)
        self.worker_connections = check_worker_connections(worker_connections)
        self._open = []      # slot -> sent and not reported closed

    def add(self, slot):
        super().add(slot)
        while len(self._open) < len(self._present):
            self._open.append(0)
        self._open[slot] = 0

    def remove(self, slot):
        lost = super().remove(slot)
        self._open[slot] = 0
        return lost

    def pick(self, lid):
        _check_lid(lid)
        n = len(self._present)
        bit = 1 << lid
        start = self._cursor[lid]
        cap = self.worker_connections
        best = -1
        for step in range(1, n + 1):
            slot = (start + step) % n
            if (self._active[slot] and self._subs[slot] & bit
                    and self._inflight[slot] < self.window
                    and (cap == 0 or self._open[slot] < cap)
                    and (best < 0 or self._before(slot, best))):
                best = slot       # strictly before: the first of equals keeps it
        if best >= 0:
            self._inflight[best] += 1
            self._open[best] += 1
            self._cursor[lid] = best
        return best

    def withdraw(self, slot, count):
        super().withdraw(slot, count)
        self._open[slot] -= count       # never sent: never open

    def _before(self, a, b):
        # Rule 7's order: nothing in flight first, then fewer open.
        a_waits, b_waits = self._inflight[a] > 0, self._inflight[b] > 0
        if a_waits != b_waits:
            return b_waits
        return self._open[a] < self._open[b]

    def closed(self, slot, count):
        """``count`` connections of ``slot`` closed; raises if it never acknowledged them."""
        self._check(slot)
        done = self._open[slot] - self._inflight[slot]
        if count < 0 or count > done:
            raise ValueError(
                f"slot {slot} reported {count} connections closed "
                f"but has {done} acknowledged and open")
        self._open[slot] -= count

    def available(self, lid):
        bit = 1 << _check_lid(lid)
        cap = self.worker_connections
        total = 0
        for slot in range(len(self._present)):
            if self._active[slot] and self._subs[slot] & bit:
                room = self.window - self._inflight[slot]
                if cap:
                    room = min(room, cap - self._open[slot])
                total += max(room, 0)
        return total

    def open_connections(self, slot):
        """Connections sent to ``slot`` and not reported closed."""
        self._check(slot)
        return self._open[slot]
