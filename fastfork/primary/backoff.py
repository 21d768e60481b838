"""When to fork again after workers die: the crash-loop policy.  No I/O.

Rules
-----
1. A worker that dies unexpectedly less than ``min_uptime`` seconds after it
   started is a *quick death*; one that lived longer resets the count to 0.
2. After the n-th quick death in a row the next fork waits
   ``base * 2 ** (n - 1)`` seconds, at most ``cap`` (0.1, 0.2, 0.4 ... 2).
3. At ``max_restarts`` quick deaths in a row the app is broken: stop
   (the primary exits with EXIT_CRASH_LOOP) instead of forking forever.
4. A fork that fails (out of fds or processes), or a replacement that never
   became ready, holds every fork for ``cap`` seconds.
"""

RESET = "reset"     # the worker had lived: the streak is over
WAIT = "wait"       # a quick death: fork again after the delay
STOP = "stop"       # a crash loop: give up


class CrashLoop:
    """The crash-loop state of one primary (see the module docstring)."""

    __slots__ = ("min_uptime", "max_restarts", "base", "cap", "quick_deaths", "next_spawn_at")

    def __init__(self, min_uptime, max_restarts, base, cap):
        self.min_uptime = min_uptime
        self.max_restarts = max_restarts
        self.base = base
        self.cap = cap
        self.quick_deaths = 0
        self.next_spawn_at = 0.0

    def died(self, uptime, now):
        """A worker died unexpectedly after ``uptime`` seconds: ``(verdict, delay)``."""
        if uptime >= self.min_uptime:
            self.quick_deaths = 0
            return RESET, 0.0
        self.quick_deaths += 1
        if self.quick_deaths >= self.max_restarts:
            return STOP, 0.0
        delay = min(self.cap, self.base * 2 ** (self.quick_deaths - 1))
        self.next_spawn_at = now + delay
        return WAIT, delay

    def hold(self, now):
        """Rule 4: no fork for ``cap`` seconds; returns the delay."""
        self.next_spawn_at = now + self.cap
        return self.cap

    def may_spawn(self, now):
        return now >= self.next_spawn_at
