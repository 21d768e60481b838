"""The loop's tick and lag (``Ticker``) and the watchdog's log line
(``Watchdog``), with a fake receiver and runtime in this process."""

import asyncio
import logging
import threading
import time

from fastfork.handoff.wire import LAG_BUCKETS
from fastfork.worker import liveness
from tests.harness import wait_until


class FakeReceiver:
    def __init__(self):
        self.ticks = []

    def tick(self, running):
        self.ticks.append(running)


class FakeTracker:
    active = 0


class FakeRuntime:
    id = 7

    def __init__(self, stall_ms=5, stall_log_ms=100):
        self.stall_ms = stall_ms
        self.stall_log_ms = stall_log_ms


def test_the_loop_ticks_while_it_holds_connections_and_says_idle_after():
    async def main():
        loop = asyncio.get_running_loop()
        receiver, tracker = FakeReceiver(), FakeTracker()
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
        receiver, tracker = FakeReceiver(), FakeTracker()
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
        ticker = liveness.Ticker(asyncio.get_running_loop(), receiver, FakeTracker(),
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
        ticker = liveness.Ticker(None, FakeReceiver(), FakeTracker(), FakeRuntime())
        ticker.last = time.monotonic()  # its last tick, now late for good
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


def test_the_log_is_rate_limited(caplog):
    caplog.set_level(logging.WARNING, logger="fastfork.worker")
    ticker = liveness.Ticker(None, FakeReceiver(), FakeTracker(), FakeRuntime())
    watchdog = liveness.Watchdog(ticker, FakeRuntime(stall_log_ms=0), threading.get_ident())
    try:
        for _ in range(3):
            watchdog._log(0.5)
    finally:
        watchdog.stop()
    assert len(caplog.records) == 1
    assert watchdog._unlogged == 2
