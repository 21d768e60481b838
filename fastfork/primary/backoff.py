"""When to fork again after workers die: the crash-loop policy, per index.  No I/O.

Each index (a worker's slot, which its replacement takes over) has its own
streak of quick deaths, so that one slot failing does not hold back the others.

Rules
-----
1. A worker that dies unexpectedly less than ``min_uptime`` seconds after it
   started is a *quick death* at its index; one that lived longer ends its
   index's streak (back to 0).
2. After the n-th quick death in a row at an index, that index's next fork
   waits ``base * 2 ** (n - 1)`` seconds, at most ``cap`` (0.1, 0.2, 0.4 ... 2).
   Other indices fork as usual.
3. From ``max_restarts`` quick deaths in a row an index is in a *crash loop*.
   While another worker serves, the index is *degraded*: it keeps retrying
   every ``cap`` seconds (a fix deployed on disk brings it back), and the
   serving workers go on serving, as uvicorn's survivors do.
4. A quick death that leaves its index in a crash loop while no worker serves
   is a broken app: stop (the primary exits with EXIT_CRASH_LOOP).  At
   start-up nothing serves yet, so broken code still stops after
   ``max_restarts`` quick deaths at one index.
5. A fork that fails (out of fds or processes), or a replacement that never
   became ready, holds every fork for ``cap`` seconds.
6. A worker that stops on its own on SIGTERM is forked again ``SIGTERM_HOLD``
   seconds later, not at once: a SIGTERM sent to the whole process group
   (systemd's default ``KillMode=control-group``) reaches the primary too, a
   moment after the workers now and then, and a worker forked meanwhile was
   only stopped again (2 runs in 3 forked one or two).
"""

# Rule 6: far longer than a group's signals take to arrive, too short for a
# missing worker to matter.
SIGTERM_HOLD = 0.2

RESET = "reset"         # the worker had lived: its index's streak is over
WAIT = "wait"           # a quick death: fork this index again after the delay
DEGRADED = "degraded"   # a crash loop while others serve: retry after the delay
STOP = "stop"           # a crash loop and nothing serves: give up


class CrashLoop:
    """The crash-loop state of one primary (see the module docstring)."""

    __slots__ = ("min_uptime", "max_restarts", "base", "cap", "streaks", "_spawn_at",
                 "_held_until")

    def __init__(self, min_uptime, max_restarts, base, cap):
        self.min_uptime = min_uptime
        self.max_restarts = max_restarts
        self.base = base
        self.cap = cap
        self.streaks = {}           # index -> quick deaths in a row there
        self._spawn_at = {}         # index -> no fork there before this
        self._held_until = 0.0      # rule 5: no fork anywhere before this

    def died(self, index, uptime, now, serving):
        """A worker at ``index`` died unexpectedly after ``uptime`` seconds, and
        ``serving`` workers serve now: ``(verdict, delay)``."""
        if uptime >= self.min_uptime:
            self.streaks.pop(index, None)
            self._spawn_at.pop(index, None)
            return RESET, 0.0
        streak = self.streaks[index] = self.streaks.get(index, 0) + 1
        if streak >= self.max_restarts and not serving:
            return STOP, 0.0
        # The exponent stops growing long after the cap is reached: a slot
        # degraded for hours must not overflow the float.
        delay = min(self.cap, self.base * 2 ** min(streak - 1, 64))
        self._spawn_at[index] = now + delay
        return (DEGRADED if streak >= self.max_restarts else WAIT), delay

    def streak(self, index):
        """Quick deaths in a row at ``index`` (0 when none)."""
        return self.streaks.get(index, 0)

    def looping(self, index):
        """Rule 3: is ``index`` in a crash loop?"""
        return self.streak(index) >= self.max_restarts

    def hold(self, now):
        """Rule 5: no fork for ``cap`` seconds; returns the delay."""
        self._held_until = now + self.cap
        return self.cap

    def defer(self, index, until):
        """Rule 6: no fork at ``index`` before ``until``."""
        self._spawn_at[index] = max(self._spawn_at.get(index, 0.0), until)

    def spawn_at(self, index=None):
        """When ``index`` (or, with None, any index not backing off) may fork."""
        own = 0.0 if index is None else self._spawn_at.get(index, 0.0)
        return max(own, self._held_until)

    def may_spawn(self, now, index=None):
        return now >= self.spawn_at(index)
