"""What one event loop serving in this worker keeps, and the two things it runs
for the worker: the reader of the data channel (connections from the primary)
and the heartbeat.

One worker may serve from one loop, or run loops one after another; only one
loop at a time reads the data channel.  ``aio`` makes its servers on these.
"""

import asyncio
import threading

from .connection import Tracker
from .liveness import Ticker, Watchdog
from .runtime import runtime as _get_runtime


class LoopState:
    """What one event loop serving in this worker keeps."""

    def __init__(self):
        self.tracker = Tracker()       # its open connections, for the drain
        self.heartbeat = None           # the task that proves it runs
        self.data_ended = None          # an Event, if this loop reads the data channel
        self.reporter = None            # its CloseReporter, under policy least


_states: "dict[asyncio.AbstractEventLoop, LoopState]" = {}


def state_of(loop):
    # A worker may run loops one after another (asyncio.run twice): forget
    # the closed ones, so nothing of theirs is kept or mistaken for live.
    for closed in [other for other in _states if other.is_closed()]:
        del _states[closed]
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = LoopState()
    return state


def ensure_data_reader(loop):
    state = state_of(loop)
    if state.data_ended is not None:
        return
    if any(other.data_ended is not None for other in _states.values()):
        raise RuntimeError("the data channel is already read by another event loop")
    runtime = _get_runtime()
    ended = state.data_ended = asyncio.Event()
    fd = runtime.receiver.fileno()
    # The loop's tick (the primary routes around it when it is late) and the
    # thread that says where it was blocked.
    ticker = runtime.ticker = Ticker(loop, runtime.receiver, state.tracker, runtime)
    runtime.watchdog = Watchdog(ticker, runtime, threading.get_ident())

    held = False            # took a connection a transport reads next pass: wait

    def on_readable():
        # Acknowledging from the loop itself is what makes credit honest: a
        # worker whose loop is blocked stops acking, so it stops receiving.
        nonlocal held
        if held:
            return
        if runtime.pump(1 if runtime.stall_ms else 0):
            loop.remove_reader(fd)
            ended.set()
            return
        if not runtime.read_later:
            # Nothing taken, or all by engines' gates: an engine tells the
            # ticker itself when their apps run (Tracker.app_started).
            return
        ticker.kick()               # a transport's app may run as long as it is open
        if runtime.stall_ms:
            # Late binding: hold only what this loop can run now.  One
            # message is taken per pass (pump(1)), and the next only once the
            # pass that reads the first one's requests has run their apps'
            # first steps, so a loop that then blocks holds at most these;
            # the rest stay unread in the channel, where the primary takes
            # them back (rules 12, 13).  An engine's gate reads at once, its
            # apps' first steps queued for the end of this pass: the next
            # message is the next pass's anyway, nothing to hold.  A
            # transport reads its connection when the loop next polls: hold
            # until the end of that pass (call_soon's callbacks run at the end
            # of a pass, in order; one added there runs at the end of the
            # next).  An idle loop turns passes over fast: no fixed cap.  The
            # reader stays registered (no epoll_ctl per message): a readiness
            # that comes while held is let pass, and comes again.
            held = True
            loop.call_soon(loop.call_soon, resume)

    def resume():
        # The channel is level-triggered: what came while held is reported
        # again on the next pass.
        nonlocal held
        held = False

    loop.add_reader(fd, on_readable)
    on_readable()


def ensure_heartbeat(loop):
    # The loop itself beats, not a side thread: a handler that blocks the loop
    # silences it, and the primary replaces a worker silent past its timeout.
    state = state_of(loop)
    if state.heartbeat is not None:
        return
    runtime = _get_runtime()
    tracker = state.tracker

    async def beat():
        while True:
            try:
                runtime.heartbeat(tracker.active, tracker.total)
            except OSError:
                return        # the primary is gone; this worker exits on its own
            await asyncio.sleep(runtime.heartbeat_interval)

    state.heartbeat = loop.create_task(beat())
