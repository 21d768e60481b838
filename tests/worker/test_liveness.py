"""The loop's tick and lag (``Ticker``), when the loop counts as running an
app (``Tracker.running``), and the watchdog's log line (``Watchdog``), with
a fake receiver, runtime and engines in this process."""

import asyncio
import logging
import threading
import time

import pytest

from fastfork.handoff.wire import LAG_BUCKETS
from fastfork.worker import liveness
from fastfork.worker.connection import Tracker
from tests.harness import wait_until


class FakeReceiver:
    def __init__(self):
        self.ticks = []

    def tick(self, running):
        self.ticks.append(running)


class FakeEngine:
    """What a Tracker reads of an engine: ``open`` connections, ``running`` app calls."""

    def __init__(self, open_, running):
        self.open = open_
        self.running = running
        self.watched_by = None

    def watch(self, liveness):
        self.watched_by = liveness


class FakeRuntime:
    id = 7

    def __init__(self, stall_ms=5, stall_log_ms=100):
        self.stall_ms = stall_ms
        self.stall_log_ms = stall_log_ms


def test_the_loop_ticks_while_it_holds_connections_and_says_idle_after():
    async def main():
        loop = asyncio.get_running_loop()
        receiver, tracker = FakeReceiver(), Tracker()
        ticker = liveness.Ticker(loop, receiver, tracker, FakeRuntime(stall_ms=6))
        tracker.active = 1
        ticker.kick()
        assert receiver.ticks == [True] and ticker.last
        deadline = time.monotonic() + 5
        while len(receiver.ticks) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert receiver.ticks[:4] == [True] * 4       # every stall_ms / 3 while it holds one
        tracker.active = 0
        while receiver.ticks[-1] and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert receiver.ticks[-1] is False and ticker.last == 0.0
        idle = len(receiver.ticks)
        await asyncio.sleep(0.02)
        assert len(receiver.ticks) == idle              # idle: no more ticks
        counts, total = ticker.lag()
        assert len(counts) == len(LAG_BUCKETS) + 1 and sum(counts) == idle - 1
        assert total >= 0.0

    asyncio.run(main())


def test_a_blocked_loop_counts_its_lag():
    async def main():
        loop = asyncio.get_running_loop()
        receiver, tracker = FakeReceiver(), Tracker()
        ticker = liveness.Ticker(loop, receiver, tracker, FakeRuntime(stall_ms=3))
        tracker.active = 1
        ticker.kick()
        time.sleep(0.03)                # blocks the loop: the tick is ~29 ms late
        while sum(ticker.lag()[0]) < 1:
            await asyncio.sleep(0.001)
        tracker.active = 0
        counts, total = ticker.lag()
        assert counts[LAG_BUCKETS.index(0.05)] == 1, counts   # in (20 ms, 50 ms]
        assert total >= 0.025

    asyncio.run(main())


def test_no_ticks_without_thresholds():
    async def main():
        receiver = FakeReceiver()
        ticker = liveness.Ticker(asyncio.get_running_loop(), receiver, Tracker(),
                                 FakeRuntime(stall_ms=0, stall_log_ms=0))
        ticker.kick()
        assert receiver.ticks == []

    asyncio.run(main())


def blocked_here(started, release):
    started.set()
    release.wait(30)                    # THE BLOCKING LINE


def test_the_watchdog_logs_where_the_loop_is_blocked(caplog):
    caplog.set_level(logging.WARNING, logger="fastfork.worker")
    started, release = threading.Event(), threading.Event()
    loop_thread = threading.Thread(target=blocked_here, args=(started, release))
    loop_thread.start()
    watchdog = None
    try:
        started.wait(5)
        ticker = liveness.Ticker(None, FakeReceiver(), Tracker(), FakeRuntime())
        ticker.clock.tick(time.monotonic())   # its last tick, now late for good
        watchdog = liveness.Watchdog(ticker, FakeRuntime(stall_log_ms=20), loop_thread.ident)
        wait_until(lambda: caplog.records, 5, "the watchdog's line")
        # One line per stall (the same late tick is not counted again).
        wait_until(lambda: watchdog.stalls == 1, 5, "the stall counted")
        time.sleep(0.1)
        assert watchdog.stalls == 1
    finally:
        release.set()
        loop_thread.join(5)
        if watchdog is not None:
            watchdog.stop()
    (record,) = caplog.records
    line = blocked_here.__code__.co_firstlineno + 2
    assert f"{__file__}:{line} in blocked_here" in record.getMessage(), record.getMessage()
    assert record.getMessage().startswith("worker 7: event loop blocked for ")


@pytest.fixture(params=["cython", "python"])
def clock_class(request):
    """``StallClock`` (C, no GIL while it waits) and its pure-Python twin."""
    if request.param == "python":
        return liveness.PyStallClock
    try:
        from fastfork.worker._c.stallclock import StallClock
    except ImportError as exc:
        if liveness.forced_pure():
            pytest.skip("FASTFORK_NO_EXTENSIONS is set: Cython build not required")
        pytest.fail(f"the Cython extension is not built: {exc}")
    return StallClock


def test_the_tickers_clock_is_the_c_one_unless_told_otherwise():
    clock = liveness.Ticker(None, FakeReceiver(), Tracker(), FakeRuntime()).clock
    expected = "PyStallClock" if liveness.forced_pure() else "StallClock"
    assert type(clock).__name__ == expected


def test_the_tickers_clock_follows_its_ticks_and_idle():
    async def main():
        ticker = liveness.Ticker(asyncio.get_running_loop(), FakeReceiver(), Tracker(),
                                 FakeRuntime())
        ticker.clock = clock = FakeClock()
        ticker.started()                  # an app call began: a tick
        assert clock.ticks == [ticker.last] and ticker.last
        await asyncio.sleep(0)            # the pass ends with nothing running: idle
        assert clock.ticks[-1] == 0.0 and ticker.last == 0.0
        ticker.kick()                     # the data reader: ticking again
        assert clock.ticks[-1] == ticker.last and ticker.last

    asyncio.run(main())


# (tick: seconds before now, or 0 for idle; threshold; most) -> a stall reported?
STALE_CASES = [
    ((1.0, 0.05, 5.0), True),       # a tick late by a second: at the first look
    ((0.0, 0.05, 0.2), False),      # idle: never late
    ((-1.0, 10.0, 0.2), False),     # fresh (a second ahead): not late within most
    ((1.0, 0.0, 0.2), False),       # threshold 0: the watchdog is off
]


@pytest.mark.parametrize("case, reported", STALE_CASES)
def test_wait_stale_reports_a_late_tick_and_nothing_else(clock_class, case, reported):
    ago, threshold, most = case
    clock = clock_class()
    clock.tick(time.monotonic() - ago if ago else 0.0)
    late = clock.wait_stale(threshold, most)
    if reported:
        assert ago <= late < most
    else:
        assert late == 0.0


def test_wait_stale_reports_each_tick_once(clock_class):
    clock = clock_class()
    tick = time.monotonic() - 1.0
    clock.tick(tick)
    assert clock.wait_stale(0.05, 5.0) >= 1.0
    assert clock.wait_stale(0.05, 0.2) == 0.0          # the same tick: once
    clock.tick(tick + 0.5)                              # a new one, late too
    assert clock.wait_stale(0.05, 5.0) >= 0.5


def test_wait_stale_sees_a_tick_go_late_while_it_waits(clock_class):
    clock = clock_class()
    clock.tick(time.monotonic())
    late = clock.wait_stale(0.05, 10.0)
    assert 0.05 <= late < 10.0


def test_stop_ends_a_wait(clock_class):
    clock = clock_class()
    result = []
    waiter = threading.Thread(target=lambda: result.append(clock.wait_stale(0.05, 60.0)))
    waiter.start()
    try:
        clock.stop()
    finally:
        waiter.join(10)
    assert result == [-1.0]
    assert clock.wait_stale(0.05, 60.0) == -1.0         # stopped for good


class FakeClock:
    def __init__(self):
        self.ticks = []

    def tick(self, now):
        self.ticks.append(now)


def test_the_log_is_rate_limited(caplog):
    caplog.set_level(logging.WARNING, logger="fastfork.worker")
    ticker = liveness.Ticker(None, FakeReceiver(), Tracker(), FakeRuntime())
    watchdog = liveness.Watchdog(ticker, FakeRuntime(stall_log_ms=0), threading.get_ident())
    try:
        for _ in range(3):
            watchdog._log(0.5)
    finally:
        watchdog.stop()
    assert len(caplog.records) == 1
    assert watchdog._unlogged == 2


@pytest.mark.parametrize("active, engines, running", [
    # (connections the tracker counts, engines as (open, running)) -> running?
    (0, [], False),
    (2, [], True),                      # uvicorn's protocols: running while open
    (2, [(2, 0)], False),               # all the engine's, its app idle: keep-alive
    (2, [(2, 1)], True),                # its app runs
    (3, [(2, 0)], True),                # one of another kind (a WebSocket handed over)
    (3, [(1, 0), (2, 0)], False),       # two engines (two apps), both idle
    (3, [(1, 0), (2, 1)], True),
    (0, [(0, 1)], True),                # an app call whose connection closed under it
])
def test_when_the_loop_counts_as_running_an_app(active, engines, running):
    tracker = Tracker()
    for open_, runs in engines:
        engine = FakeEngine(open_, runs)
        tracker.watch(engine)
        tracker.watch(engine)           # once each, however many servers share it
        assert engine.watched_by is tracker
    assert len(tracker.engines) == len(engines)
    tracker.active = active
    assert tracker.running() is running


def test_an_engine_with_no_app_running_stops_the_ticks_at_once():
    # Holding only idle keep-alive connections the loop would otherwise wake
    # every stall_ms / 3 to say it runs; the engine's last app call ending
    # ends that (quiet), and its first one starts it again.
    async def main():
        loop = asyncio.get_running_loop()
        receiver, tracker = FakeReceiver(), Tracker()
        ticker = liveness.Ticker(loop, receiver, tracker, FakeRuntime(stall_ms=6))
        engine = FakeEngine(1, 1)
        tracker.watch(engine)
        tracker.active = 1
        tracker.app_started()           # as the engine calls it
        assert receiver.ticks == [True] and ticker.last
        # Within one pass an app ends and the next begins: the tick stays.
        engine.running = 0
        tracker.app_ended()
        engine.running = 1
        tracker.app_started()
        assert receiver.ticks == [True] and ticker.last
        deadline = time.monotonic() + 5
        while len(receiver.ticks) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert receiver.ticks[:3] == [True] * 3       # ticking while its app runs
        engine.running = 0
        tracker.app_ended()
        assert receiver.ticks[-1] is False and ticker.last == 0.0
        idle = len(receiver.ticks)
        await asyncio.sleep(0.02)       # ten periods
        assert len(receiver.ticks) == idle              # no tick, no wake-up
        engine.running = 1
        tracker.app_started()
        assert receiver.ticks[-1] is True and ticker.last
        # A connection of another kind keeps it ticking when the engine's app ends.
        tracker.active = 2
        engine.running = 0
        tracker.app_ended()
        assert receiver.ticks[-1] is True
        ticks = len(receiver.ticks)
        while len(receiver.ticks) < ticks + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert receiver.ticks[-2:] == [True, True]
        tracker.active = 1
        while receiver.ticks[-1] and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert receiver.ticks[-1] is False               # at the next tick
        # An app that answers within the pass that started it: a tick as it
        # starts, idle once the pass ends, and no timer in between.
        ticks = len(receiver.ticks)
        lagged = sum(ticker.lag()[0])
        engine.running = 1
        tracker.app_started()
        engine.running = 0
        tracker.app_ended()
        assert receiver.ticks[ticks:] == [True] and ticker.last
        await asyncio.sleep(0)          # the pass's end
        assert receiver.ticks[ticks:] == [True, False] and ticker.last == 0.0
        await asyncio.sleep(0.02)
        assert receiver.ticks[ticks:] == [True, False]
        assert sum(ticker.lag()[0]) == lagged            # not one timer ran for it

    asyncio.run(main())
