"""Which worker gets the next connection: pure logic, no I/O.

This module is the pure-Python twin of ``fastfork._core._cscheduler``; both obey
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
   (``subscribe(slot, lid)``), and only while it is active: ``retire(slot)``
   stops new dispatches to it for good (graceful stop, rolling reload).
4. Among the eligible workers the choice is round-robin in slot order, with
   one cursor per listener: the worker after the one picked last.
5. ``pick`` returns -1 when no worker is eligible; the caller must then stop
   accepting so the backlog stays in the kernel's listen queue.
"""
from ..channels.wire import check_window

MAX_LISTENERS = 64


def _check_lid(lid):
    if not 0 <= lid < MAX_LISTENERS:
        raise ValueError(f"listener id must be in 0..{MAX_LISTENERS - 1}, got {lid}")
    return lid


class RoundRobinScheduler:
    """Round-robin over workers that have credit (see the module docstring)."""

    __slots__ = ("window", "_present", "_active", "_inflight", "_subs", "_cursor")

    def __init__(self, window):
        self.window = check_window(window)
        self._present = []   # slot -> bool
        self._active = []    # slot -> bool (False once retired)
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
            self._inflight.append(0)
            self._subs.append(0)
        if self._present[slot]:
            raise ValueError(f"slot {slot} is already in use")
        self._present[slot] = True
        self._active[slot] = True
        self._inflight[slot] = 0
        self._subs[slot] = 0

    def remove(self, slot):
        """Forget a worker; returns how many connections it had unacknowledged."""
        self._check(slot)
        self._present[slot] = False
        self._active[slot] = False
        self._subs[slot] = 0
        lost, self._inflight[slot] = self._inflight[slot], 0
        return lost

    def subscribe(self, slot, lid):
        self._check(slot)
        self._subs[slot] |= 1 << _check_lid(lid)

    def retire(self, slot):
        self._check(slot)
        self._active[slot] = False

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
