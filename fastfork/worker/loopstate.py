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

    held = False            # a message was taken this pass or the next: wait

    def on_readable():
        # Acknowledging from the loop itself is what makes credit honest: a
        # worker whose loop is blocked stops acking, so it stops receiving.
        nonlocal held
        if held:
            return
        before = runtime.receiver.received
        if runtime.pump(1 if runtime.stall_ms else 0):
            loop.remove_reader(fd)
            ended.set()
            return
        ticker.kick()
        if runtime.stall_ms and runtime.receiver.received != before:
            # Late binding: hold only what this loop can run now.  One
            # message taken, the next waits until the pass after the one that
            # reads its requests (call_soon's callbacks run at the end of a
            # pass; one added there runs at the end of the next), so a loop
            # that then blocks holds at most these; the rest stay unread in
            # the channel, where the primary takes them back (rules 12, 13).
            # An idle loop turns passes over fast: no fixed cap.  The reader
            # stays registered (no epoll_ctl per message): a readiness that
            # comes while held is let pass, and comes again.
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
