"""The arbiter carrying out its policies, without forking: gunicorn-style, the process
calls are stubbed.  The policies themselves are tables in test_lifecycle.py."""

import pytest

import fastfork
from fastfork.primary import EXIT_CRASH_LOOP, Cluster, Worker
from fastfork.settings import SettingError


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr("fastfork.primary.arbiter.time.monotonic", fake)
    monkeypatch.setattr("fastfork.primary.handle.time.monotonic", fake)
    return fake


def make_cluster(monkeypatch, size, **options):
    cluster = Cluster(lambda: None, size, pure=True, **options)
    spawned, stopped = [], []

    def spawn_worker(index):
        worker = Worker(cluster, cluster._next_id, index)
        cluster._next_id += 1
        worker.pid = 10000 + worker.id
        cluster.workers[worker.id] = worker
        spawned.append(worker)
        return worker

    def stop_worker(worker, timeout=None):
        worker.stop_requested = True
        stopped.append(worker)

    monkeypatch.setattr(cluster, "spawn_worker", spawn_worker)
    monkeypatch.setattr(cluster, "stop_worker", stop_worker)
    cluster.dispatcher = object()       # "started", without epoll
    return cluster, spawned, stopped


def test_manage_workers_fills_missing_indices_lowest_first(monkeypatch, clock):
    cluster, spawned, _ = make_cluster(monkeypatch, 3)
    cluster.manage_workers()
    assert [w.index for w in spawned] == [0, 1, 2]
    assert [w.id for w in spawned] == [1, 2, 3]
    del cluster.workers[2]              # index 1 died and was reaped
    cluster.manage_workers()
    assert (spawned[-1].index, spawned[-1].id) == (1, 4)


def test_scaling_down_stops_the_highest_indices(monkeypatch, clock):
    cluster, spawned, stopped = make_cluster(monkeypatch, 4)
    cluster.manage_workers()
    cluster.size = 2
    cluster.manage_workers()
    assert sorted(w.index for w in stopped) == [2, 3]
    cluster.size = 3
    cluster.manage_workers()
    assert spawned[-1].index == 2 and len(spawned) == 5


@pytest.mark.parametrize("deaths, delay", [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6),
                                           (6, 2.0), (7, 2.0)])
def test_quick_deaths_back_off_exponentially_up_to_the_cap(monkeypatch, clock, deaths, delay):
    cluster, _, _ = make_cluster(monkeypatch, 1, max_restarts=100)
    for _ in range(deaths):
        worker = Worker(cluster, 99, 0)      # started "now": a quick death
        cluster.count_death(worker)
    assert cluster.crash_loop.spawn_at(0) - clock.now == pytest.approx(delay)


def test_backoff_delays_the_refork(monkeypatch, clock):
    cluster, spawned, _ = make_cluster(monkeypatch, 1)
    cluster.count_death(Worker(cluster, 99, 0))
    cluster.manage_workers()
    assert spawned == []
    clock.now += 0.1
    cluster.manage_workers()
    assert len(spawned) == 1


def test_a_worker_that_lived_resets_the_streak(monkeypatch, clock):
    cluster, _, _ = make_cluster(monkeypatch, 1, min_uptime=1.0)
    for _ in range(3):
        cluster.count_death(Worker(cluster, 99, 0))
    assert cluster.crash_loop.streak(0) == 3
    survivor = Worker(cluster, 100, 0)
    clock.now += 5
    cluster.count_death(survivor)
    assert cluster.crash_loop.streak(0) == 0


def test_crash_loop_stops_after_max_restarts(monkeypatch, clock):
    cluster, _, _ = make_cluster(monkeypatch, 2, max_restarts=3)
    shutdowns = []
    monkeypatch.setattr(cluster, "begin_shutdown", shutdowns.append)
    for _ in range(3):
        cluster.count_death(Worker(cluster, 99, 0))
    assert cluster.exit_code == EXIT_CRASH_LOOP
    assert shutdowns == ["crash loop"]


def test_a_crash_loop_in_one_slot_keeps_the_serving_ones(monkeypatch, clock):
    cluster, spawned, _ = make_cluster(monkeypatch, 2, max_restarts=3)
    shutdowns = []
    monkeypatch.setattr(cluster, "begin_shutdown", shutdowns.append)
    cluster.manage_workers()
    spawned[0].state = "listening"                 # index 0 serves
    del cluster.workers[spawned[1].id]             # index 1 died, and keeps dying
    for _ in range(6):
        cluster.count_death(Worker(cluster, 99, 1))
    assert shutdowns == [] and cluster.exit_code == 0
    assert cluster.readiness() == (True, "ready, degraded: 1 of 2 workers serving "
                                         "(index 1: crash loop, 6 quick deaths in a row)")
    cluster.manage_workers()
    assert len(spawned) == 2                       # index 1 waits for its backoff...
    clock.now += 2.0
    cluster.manage_workers()
    assert [w.index for w in spawned[2:]] == [1]   # ...then is retried
    del cluster.workers[spawned[0].id]             # the last serving worker goes too
    cluster.count_death(Worker(cluster, 98, 1))
    assert shutdowns == ["crash loop"] and cluster.exit_code == EXIT_CRASH_LOOP


def test_no_respawn_shrinks_the_cluster(monkeypatch, clock):
    cluster, spawned, _ = make_cluster(monkeypatch, 2, respawn=False)
    cluster.manage_workers()
    worker = spawned[0]
    clock.now += 5
    del cluster.workers[worker.id]
    cluster.count_death(worker)
    cluster.manage_workers()
    assert cluster.size == 1 and len(spawned) == 2


@pytest.mark.parametrize("bad", [0, -1, "abc", "0", 1.5, True, None])
def test_bad_worker_counts_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="worker count must be a positive integer or 'max'"):
        Cluster(lambda: None, bad, pure=True)


def test_bad_policy_is_refused_by_name():
    with pytest.raises(SettingError,
                       match="policy: 'random' is not one of rr, least, none, reuseport"):
        Cluster(lambda: None, 1, policy="random", pure=True)


def test_settings_object_or_keywords_build_the_same_cluster():
    settings = fastfork.Settings(policy="none", window=4, timeout=2)
    by_object = Cluster(lambda: None, 2, settings=settings, pure=True)
    by_keywords = Cluster(lambda: None, 2, policy="none", window=4, timeout=2, pure=True)
    assert by_object.settings == by_keywords.settings
    assert by_object.policy == "none" and by_object.size == 2
    # Keywords given with a settings object apply on top of it.
    assert Cluster(lambda: None, settings=settings, window=2).settings.window == 2
    assert settings.window == 4          # the object itself never changes
    with pytest.raises(SettingError, match="window: credit window must be >= 1, got 0"):
        Cluster(lambda: None, 1, window=0)


def test_max_means_usable_cores():
    assert Cluster(lambda: None, "max", pure=True).size == fastfork.usable_cpus() >= 1


def test_unknown_event_is_refused():
    with pytest.raises(ValueError, match="unknown event 'exited'"):
        Cluster(lambda: None, 1, pure=True).on("exited", print)
