"""The scheduler's decision per connection: ``pick`` a worker, later ``ack`` it."""

import pytest

DECISIONS = 1000      # per call, so the timer's own overhead does not dominate


def _scheduler(impl, workers, window=8):
    sched = impl.scheduler.RoundRobinScheduler(window)
    for slot in range(workers):
        sched.add(slot)
        sched.subscribe(slot, 0)
    return sched


@pytest.mark.parametrize("workers", (2, 16, 64))
def test_pick_ack(benchmark, impl, workers):
    """1000 decisions (pick + ack) among `workers` workers that all have credit."""
    sched = _scheduler(impl, workers)

    def decide():
        pick, ack = sched.pick, sched.ack
        seen = set()
        for _ in range(DECISIONS):
            slot = pick(0)
            ack(slot, 1)
            seen.add(slot)
        return seen

    benchmark.extra_info["decisions_per_call"] = DECISIONS
    seen = benchmark(decide)
    # Round-robin: 1000 decisions visit every worker.
    assert seen == set(range(workers))


@pytest.mark.parametrize("workers", (16, 64))
def test_pick_ack_scan(benchmark, impl, workers):
    """1000 decisions when only the last of `workers` workers has credit (the longest scan)."""
    window = 8
    sched = _scheduler(impl, workers, window)
    for slot in range(workers - 1):
        for _ in range(window):
            sched.pick(0)
    assert sched.available(0) == window

    def decide():
        pick, ack = sched.pick, sched.ack
        last = -1
        for _ in range(DECISIONS):
            last = pick(0)
            ack(last, 1)
        return last

    benchmark.extra_info["decisions_per_call"] = DECISIONS
    assert benchmark(decide) == workers - 1
