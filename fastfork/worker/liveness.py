"""A worker's event loop proves it runs: the tick the primary routes by, the
loop-lag histogram, and the log line that names where a blocked loop was.

``Ticker``: while an app may run on the loop it stores a timestamp on the
credit page shared with the primary (``Receiver.tick``, ``csrc/credit.h``)
as the app starts and from a callback every ``stall_ms / 3``; a late tick
tells the primary that the loop is blocked, so it sends this worker nothing
and takes back what waits unread in its channel (the scheduler's rules 12
and 13).  When none can, it says it is idle (0) and stops: an idle loop
wakes for whatever is sent.  An app may run while a connection served by a
transport (uvicorn's protocols, the user's own) is open; on an engine's
connection only while the engine calls it (``Tracker.running``), so a loop
that holds idle keep-alive connections sleeps, and a request answered within
the pass that read it sets no timer.  How late each callback ran is the
loop's lag, counted in ``LAG_BUCKETS`` for the metrics.

``Watchdog``: a thread that looks at the tick every ``stall_log_ms / 2``;
when the loop has not ticked for ``stall_log_ms`` it reads the loop thread's
frame (``sys._current_frames()``) and logs the file and line it is blocked
at, at most once per ``LOG_EVERY`` seconds (the others counted in the next
line).  It looks through a ``StallClock`` (``_c/stallclock.pyx``), which
waits and looks without the GIL: a thread that took the GIL to look cost a
busy loop up to 10 µs a request (see there).  ``PyStallClock`` is its
pure-Python twin, for a build without extensions.
"""

import logging
import os
import sys
import sysconfig
import threading
import time
import traceback

from ..handoff.backend import forced_pure
from ..handoff.wire import LAG_BUCKETS

log = logging.getLogger("fastfork.worker")

LOG_EVERY = 10.0
# How long the watchdog's clock waits at most before the watchdog reads its
# setting again (the GIL taken once so; the runtime's stall_log_ms may change).
REREAD_EVERY = 1.0


class PyStallClock:
    """``StallClock``'s pure-Python twin: the same methods and results, but
    each look takes the GIL."""

    def __init__(self):
        self._tick = 0.0
        self._reported = 0.0
        self._stopped = threading.Event()

    def tick(self, now):
        """The loop ticked at ``now`` (``time.monotonic()``); 0: it is idle."""
        self._tick = now if now > 0 else 0.0

    def stop(self):
        """End a ``wait_stale`` (now or at its next look): it returns -1."""
        self._stopped.set()

    def wait_stale(self, threshold, most):
        """Wait until a tick is ``threshold`` seconds old, looking every
        ``threshold / 2``: its age in seconds.  A tick is reported once; an
        idle loop (tick 0) never.  0.0 after ``most`` seconds (or none to
        wait for: ``threshold`` 0); -1.0 once stopped."""
        step = threshold / 2 if threshold > 0 else max(most, 0.0)
        end = time.monotonic() + max(most, 0.0)
        while True:
            if self._stopped.is_set():
                return -1.0
            now = time.monotonic()
            tick = self._tick
            if (threshold > 0 and tick and tick != self._reported and tick < now
                    and now - tick >= threshold):
                self._reported = tick
                return now - tick
            if now >= end:
                return 0.0
            self._stopped.wait(min(end - now, step))


def _clock_class():
    if not forced_pure():
        try:
            from ._c.stallclock import StallClock
            return StallClock
        except ImportError:           # not built: the hand-off's loader said how, once
            pass
    return PyStallClock


StallClock = _clock_class()


class Ticker:
    """The loop's tick on the credit page, and its lag (see the module)."""

    def __init__(self, loop, receiver, tracker, runtime):
        self._loop = loop
        self._receiver = receiver
        self._tracker = tracker
        self._runtime = runtime           # its stall_ms and stall_log_ms (the primary's config)
        self._handle = None
        self._settling = False            # started() queued _settle
        self._due = 0.0
        self.last = 0.0                   # time.monotonic() of the last tick; 0: idle
        self.clock = StallClock()         # the same, for the watchdog's thread
        self.lag_counts = [0] * (len(LAG_BUCKETS) + 1)
        self.lag_sum = 0.0
        # Its engines say when apps start and end (Tracker.watch), straight to these.
        tracker.app_started = self.started
        tracker.app_ended = self.quiet

    def _period(self):
        stall_ms = self._runtime.stall_ms
        if stall_ms:
            return stall_ms / 3000.0
        return self._runtime.stall_log_ms / 4000.0   # 0: no ticks at all

    def kick(self):
        """From the data reader: the loop runs and may hold connections now."""
        if self._handle is not None:
            # Ticking: _run stores a fresh tick every period, so one here
            # would tell the primary nothing new (and the data reader calls
            # this once per pass of a busy loop).
            return
        period = self._period()
        if not period:
            return
        self._arm(time.monotonic(), period)

    def started(self):
        """From an engine (``Tracker.app_started``): an app call began.

        The tick is fresh from now; a timer keeps it so only if an app still
        runs once the pass has run the apps' first steps.  Most answer within
        them: no timer to set and cancel per request, and no wake-up of a
        loop that would sleep.  A call that blocks the loop leaves this tick
        to go stale, which is what the primary looks for.  (Called per
        request at low load: _period and _store are written out here.)"""
        if self.last:
            return                    # ticking, or a tick stored this pass
        runtime = self._runtime
        if not (runtime.stall_ms or runtime.stall_log_ms):
            return
        try:
            self._receiver.tick(True)
        except (OSError, ValueError):
            pass
        self.last = now = time.monotonic()
        self.clock.tick(now)
        if not self._settling:        # (another app of this pass ended before this one)
            self._settling = True
            self._loop.call_soon(self._settle)   # after the first steps queued before it

    def _settle(self):
        # The end of the pass that started an app: the apps that answered
        # within it have ended (quiet() left this to here); one that awaits
        # something keeps the tick going.
        self._settling = False
        if self._handle is not None or not self.last:
            return
        period = self._period()
        if period and self._tracker.running():
            self._arm(time.monotonic(), period)
        else:
            self._idle()

    def _arm(self, now, period):
        self._store(True)
        self.last = now
        self.clock.tick(now)
        self._due = now + period
        self._handle = self._loop.call_later(period, self._run)

    def _run(self):
        now = time.monotonic()
        lag = max(0.0, now - self._due)
        self.lag_sum += lag
        bucket = 0
        while bucket < len(LAG_BUCKETS) and lag > LAG_BUCKETS[bucket]:
            bucket += 1
        self.lag_counts[bucket] += 1
        period = self._period()
        if self._tracker.running() and period:
            self._arm(now, period)
        else:
            self._idle()

    def quiet(self):
        """From an engine (``Tracker.app_ended``): its last app call ended.  If
        nothing else runs, say idle at once instead of at the next tick (in
        the pass that started it, _settle does, once the pass's apps ran)."""
        if self._handle is None or self._tracker.running():
            # Not ticking: this pass's _settle looks (or it is idle).  Or
            # something else may run (another engine's app, a connection a
            # transport serves, a WebSocket an engine handed over): the
            # timer goes on, or the primary would take this loop for blocked.
            return
        self._handle.cancel()
        self._idle()

    def _idle(self):
        self._store(False)                # idle: what is sent wakes it
        self.last = 0.0
        self.clock.tick(0.0)
        self._handle = None

    def _store(self, running):
        try:
            self._receiver.tick(running)
        except (OSError, ValueError):
            pass                          # the channel is closed: nobody reads the page

    def lag(self):
        """``(counts per LAG_BUCKETS and +Inf, sum of seconds)`` so far."""
        return list(self.lag_counts), self.lag_sum


class Watchdog:
    """Logs where the loop thread is when its ticks stop (see the module)."""

    def __init__(self, ticker, runtime, loop_thread_id):
        self._clock = ticker.clock
        self._runtime = runtime
        self._loop_thread = loop_thread_id
        self._last_log = -LOG_EVERY
        self._unlogged = 0
        self.stalls = 0                   # stalls over stall_log_ms, logged or not
        self._thread = threading.Thread(target=self._watch, name="fastfork-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self):
        self._clock.stop()

    def _watch(self):
        while True:
            late = self._clock.wait_stale(self._runtime.stall_log_ms / 1000.0, REREAD_EVERY)
            if late < 0:
                return
            if late:
                self.stalls += 1
                self._log(late)

    def _log(self, late):
        now = time.monotonic()
        if now - self._last_log < LOG_EVERY:
            self._unlogged += 1
            return
        self._last_log = now
        where = blocked_at(sys._current_frames().get(self._loop_thread))
        more = (f" ({self._unlogged} more since the last such line)" if self._unlogged
                else "")
        self._unlogged = 0
        log.warning("worker %s: event loop blocked for %.0f ms so far, at %s%s",
                    self._runtime.id, late * 1000.0, where, more)


# Not the application's: the standard library, site-packages, fastfork itself.
_LIBRARY_DIRS = tuple(os.path.normcase(os.path.realpath(path)) + os.sep for path in {
    *(sysconfig.get_paths().get(name) for name in ("stdlib", "platstdlib", "purelib",
                                                     "platlib")),
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))} if path)


def _is_library(filename):
    return os.path.normcase(os.path.realpath(filename)).startswith(_LIBRARY_DIRS)


def blocked_at(frame):
    """Where a thread is, for a log line: the innermost frame, and the
    innermost one in the application's code (outside the standard library
    and site-packages) if that is another."""
    if frame is None:
        return "an unknown place (no frame for the loop's thread)"
    stack = traceback.extract_stack(frame)
    if not stack:
        return "an unknown place"
    inner = stack[-1]
    text = f"{inner.filename}:{inner.lineno} in {inner.name}"
    for entry in reversed(stack):
        if not _is_library(entry.filename):
            if entry is not inner:
                text = f"{entry.filename}:{entry.lineno} in {entry.name} (innermost: {text})"
            break
    return text
