"""Rolling replacement: new before old, one worker at a time.  No I/O.

Used by reload (SIGHUP: every worker), max-requests and max-memory (one).

Rules
-----
1. Requests queue up; a worker already queued, being replaced, stopping or
   dead is not queued again.  One replacement runs at a time.
2. Starting one (``NEXT``): the primary forks a new worker for the old one's
   index; the new worker ``replaces`` the old until it is ready.
3. The new worker is ready when it listens on every address the old one
   had (or, with ``wait_ready``, when it calls ``fastfork.ready()``; for an
   old worker that never listened, when the new one is online).  Then the old
   one is stopped gracefully (``READY``), and the replacement is over once
   the old one has exited (``DONE``); only then does the next one start.
4. If the old worker goes first (it died or was stopped), the new one simply
   takes its place.
5. If the new worker exits or is stopped before it is ready, or is not ready
   within ``ready_timeout``, the replacement is aborted (``ABORT``): the new
   one is stopped, the old one keeps serving; an aborted reload drops the
   reloads still queued (they would fail the same way).  The primary then
   holds forks for a while (crash-loop rule 4), so nothing is retried at once.
"""

import collections

NEXT = "next"        # (NEXT, old, reason): fork the replacement of old
READY = "ready"      # (READY, replacement): stop replacement.old
DONE = "done"        # (DONE, replacement): the old one has exited
ABORT = "abort"      # (ABORT, replacement, why, dropped): stop replacement.new


class Replacement:
    """One worker being replaced new-before-old."""

    __slots__ = ("old", "new", "reason", "deadline")

    def __init__(self, old, new, reason, deadline):
        self.old = old
        self.new = new
        self.reason = reason
        self.deadline = deadline     # the new worker must be ready by then


class Replacements:
    """The queue and the replacement in progress (see the module docstring)."""

    def __init__(self, ready_timeout, wait_ready):
        self.ready_timeout = ready_timeout
        self.wait_ready = wait_ready
        self.queue = collections.deque()     # (worker, reason)
        self.current = None

    def request(self, worker, reason):
        """Queue ``worker`` for replacement (rule 1); True if it was queued."""
        queued = any(w is worker for w, _ in self.queue)
        current = self.current is not None and self.current.old is worker
        if queued or current or worker.stop_requested or worker.is_dead():
            return False
        self.queue.append((worker, reason))
        return True

    def clear(self):
        self.queue.clear()

    def busy(self):
        return self.current is not None or bool(self.queue)

    def step(self, now, may_start):
        """Move the replacement in progress along; the actions for the primary.

        ``may_start``: forking is allowed now (no crash-loop hold).  A NEXT
        must be answered with ``started`` (the fork worked) or ``retry``.
        """
        current = self.current
        if current is not None:
            old, new = current.old, current.new
            if new.replaces is not None:
                if new.is_dead() or new.stop_requested:
                    how = "exited" if new.is_dead() else f"was stopped ({new.state})"
                    return [self._abort(f"{new.label} {how} before it was ready")]
                if old.is_dead() or old.stop_requested:
                    new.replaces = None                  # rule 4
                elif self._is_ready(old, new):
                    new.replaces = None
                    return [(READY, current)]
                elif now >= current.deadline:
                    return [self._abort(f"{new.label} was not ready within "
                                        f"{self.ready_timeout:g}s")]
            if new.replaces is not None or not old.is_dead():
                return []
            self.current = None
            actions = [(DONE, current)]
        else:
            actions = []
        if not may_start:
            return actions
        while self.queue:
            old, reason = self.queue.popleft()
            if not (old.stop_requested or old.is_dead()):
                actions.append((NEXT, old, reason))
                break
        return actions

    def started(self, old, new, reason, now):
        """The fork for a NEXT worked: ``new`` replaces ``old`` until it is ready."""
        new.replaces = old
        self.current = Replacement(old, new, reason, now + self.ready_timeout)

    def retry(self, old, reason):
        """The fork for a NEXT failed: ``old`` goes back to the front of the queue."""
        self.queue.appendleft((old, reason))

    def _is_ready(self, old, new):
        if self.wait_ready:
            return new.ready
        if old.addresses:
            return set(old.addresses) <= set(new.addresses)
        return new.state != "starting"   # the old one never listened: online is enough

    def _abort(self, why):
        current, self.current = self.current, None
        current.new.replaces = None
        dropped = 0
        if current.reason == "reload":
            kept = collections.deque((w, r) for w, r in self.queue if r != "reload")
            dropped = len(self.queue) - len(kept)
            self.queue = kept
        return ABORT, current, why, dropped
