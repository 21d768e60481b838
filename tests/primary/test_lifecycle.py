"""The primary's lifecycle policies as tables: no process, no socket, no clock.

Each policy (fastfork/primary/{backoff,scaling,health,replacement}.py) says
its rules at the top of its file; each table here walks through them.
"""

import pytest

from fastfork.primary import backoff, health, replacement, scaling


class W:
    """A worker handle as the policies see it (the attributes they read)."""

    def __init__(self, index=0, label=None, *, state="listening", addresses=(),
                 beats=0, last_beat=0.0, handled=0, limit=0, rss=None, requests=False):
        self.index = index
        self.label = label or f"worker {index}"
        self.state = state
        self.addresses = list(addresses)
        self.stop_requested = False
        self.ready = False
        self.replaces = None
        self.heartbeats = beats
        self.last_heartbeat = last_beat
        self.request_limit = limit
        self._handled, self._rss = handled, rss
        self._unit = "requests" if requests else "connections"

    def is_dead(self):
        return self.state == "dead"

    def work_done(self):
        return self._handled, self._unit

    def rss(self):
        return self._rss


# -- backoff: the crash loop -----------------------------------------------------------------
# Each death: (index, uptime, workers serving at that moment) -> (verdict, delay).
# min_uptime 1, max_restarts 4, delays 0.1 doubling up to 0.5.
CRASH_LOOP = {
    "doubling up to the cap": (
        [(0, 0.1, 0), (0, 0.1, 0), (0, 0.1, 0), (0, 0.1, 0)],
        [(backoff.WAIT, 0.1), (backoff.WAIT, 0.2), (backoff.WAIT, 0.4), (backoff.STOP, 0.0)]),
    "a survivor resets the streak": (
        [(0, 0.1, 0), (0, 0.1, 0), (0, 5.0, 0), (0, 0.1, 0)],
        [(backoff.WAIT, 0.1), (backoff.WAIT, 0.2), (backoff.RESET, 0.0), (backoff.WAIT, 0.1)]),
    "max_restarts quick deaths and nothing serves: stop": (
        [(1, 0.1, 0)] * 4,
        [(backoff.WAIT, 0.1), (backoff.WAIT, 0.2), (backoff.WAIT, 0.4), (backoff.STOP, 0.0)]),
    "exactly min_uptime is not quick": ([(0, 1.0, 0)], [(backoff.RESET, 0.0)]),
    "each index has its own streak": (
        [(0, 0.1, 0), (1, 0.1, 0), (0, 0.1, 0), (1, 0.1, 0)],
        [(backoff.WAIT, 0.1), (backoff.WAIT, 0.1), (backoff.WAIT, 0.2), (backoff.WAIT, 0.2)]),
    "a crash loop while another serves: degraded, retried at the cap": (
        [(1, 0.1, 1)] * 6,
        [(backoff.WAIT, 0.1), (backoff.WAIT, 0.2), (backoff.WAIT, 0.4), (backoff.DEGRADED, 0.5),
         (backoff.DEGRADED, 0.5), (backoff.DEGRADED, 0.5)]),
    "degraded, then the last serving worker goes: stop": (
        [(1, 0.1, 1)] * 5 + [(1, 0.1, 0)],
        [(backoff.WAIT, 0.1), (backoff.WAIT, 0.2), (backoff.WAIT, 0.4), (backoff.DEGRADED, 0.5),
         (backoff.DEGRADED, 0.5), (backoff.STOP, 0.0)]),
    "another index's long life does not end a crash loop": (
        [(1, 0.1, 1)] * 4 + [(0, 9.0, 0), (1, 0.1, 0)],
        [(backoff.WAIT, 0.1), (backoff.WAIT, 0.2), (backoff.WAIT, 0.4), (backoff.DEGRADED, 0.5),
         (backoff.RESET, 0.0), (backoff.STOP, 0.0)]),
    "a fixed slot that lived starts afresh": (
        [(1, 0.1, 1)] * 5 + [(1, 3.0, 1), (1, 0.1, 0)],
        [(backoff.WAIT, 0.1), (backoff.WAIT, 0.2), (backoff.WAIT, 0.4), (backoff.DEGRADED, 0.5),
         (backoff.DEGRADED, 0.5), (backoff.RESET, 0.0), (backoff.WAIT, 0.1)]),
}


@pytest.mark.parametrize("deaths, expected", list(CRASH_LOOP.values()), ids=list(CRASH_LOOP))
def test_crash_loop_rules(deaths, expected):
    policy = backoff.CrashLoop(min_uptime=1.0, max_restarts=4, base=0.1, cap=0.5)
    got = []
    for now, (index, uptime, serving) in enumerate(deaths, start=100):
        verdict, delay = policy.died(index, uptime, now, serving)
        got.append((verdict, pytest.approx(delay)))
        if verdict in (backoff.WAIT, backoff.DEGRADED):
            assert not policy.may_spawn(now, index) and policy.may_spawn(now + delay, index)
        assert policy.looping(index) == (policy.streak(index) >= 4)
    assert got == expected


def test_one_index_backing_off_does_not_hold_back_the_others():
    policy = backoff.CrashLoop(min_uptime=1.0, max_restarts=4, base=0.1, cap=0.5)
    policy.died(1, 0.0, 10.0, serving=1)
    assert not policy.may_spawn(10.0, 1)
    assert policy.may_spawn(10.0, 0) and policy.may_spawn(10.0)
    assert (policy.streak(0), policy.streak(1)) == (0, 1)


def test_crash_loop_cap_and_hold():
    policy = backoff.CrashLoop(min_uptime=1.0, max_restarts=10000, base=0.1, cap=0.5)
    delays = [policy.died(0, 0.0, 0.0, 1)[1] for _ in range(6)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])
    # A slot degraded for hours: thousands of deaths, still the cap (no overflow).
    assert [policy.died(0, 0.0, 0.0, 1)[0] for _ in range(5000)][-1] == backoff.WAIT
    assert policy.died(0, 0.0, 0.0, 1)[1] == 0.5
    # Rule 5: a hold stops every index, and the next free one too.
    assert policy.hold(10.0) == 0.5
    assert not policy.may_spawn(10.4) and policy.may_spawn(10.5)
    assert not policy.may_spawn(10.4, 3) and policy.may_spawn(10.5, 3)
    # Rule 6: a deferred index waits, the others do not; an earlier time
    # never shortens a later wait already set.
    policy.defer(4, 20.2)
    policy.defer(4, 20.1)
    assert not policy.may_spawn(20.15, 4) and policy.may_spawn(20.2, 4)
    assert policy.may_spawn(20.0, 5)


# -- scaling ------------------------------------------------------------------------------
SCALING = {
    "fill from nothing": ([], 3, [], 3),
    "scale down stops the highest indices": ([0, 3, 1, 2], 2, [2, 3], 0),
    "scale up": ([0, 1], 4, [], 2),
    "at size": ([1, 0], 2, [], 0),
}


@pytest.mark.parametrize("indices, size, stopped, missing", list(SCALING.values()),
                         ids=list(SCALING))
def test_scaling_plan(indices, size, stopped, missing):
    to_stop, got_missing = scaling.plan([W(i) for i in indices], size)
    assert [w.index for w in to_stop] == stopped
    assert got_missing == missing


@pytest.mark.parametrize("taken, index", [(set(), 0), ({0, 1, 3}, 2), ({1, 2}, 0)])
def test_free_index_is_the_lowest_free(taken, index):
    assert scaling.free_index(taken) == index


@pytest.mark.parametrize("taken, count, indices", [(set(), 2, [0, 1]), ({0, 2}, 2, [1, 3]),
                                                   ({1}, 1, [0]), ({0, 1}, 0, [])])
def test_free_indices_are_the_lowest_free(taken, count, indices):
    assert scaling.free_indices(taken, count) == indices


# -- health: hangs and recycling ------------------------------------------------------------
# (worker, now, timeout, max_memory) -> verdict
HEALTH = {
    "beating in time": (W(beats=3, last_beat=99.0), 100.0, 5.0, 0, None),
    "silent past the timeout": (W(beats=3, last_beat=90.0), 100.0, 5.0, 0,
                                (health.ABORT, 10.0)),
    "never beat: never hung": (W(beats=0, last_beat=0.0), 100.0, 5.0, 0, None),
    "timeout off": (W(beats=3, last_beat=0.0), 100.0, 0.0, 0, None),
    "max-requests reached": (W(handled=10, limit=10), 0.0, 0.0, 0,
                             (health.REPLACE, "max-requests (10 connections, limit 10)")),
    "under max-requests": (W(handled=9, limit=10), 0.0, 0.0, 0, None),
    "max-requests counts requests where reported": (
        W(handled=7, limit=7, requests=True), 0.0, 0.0, 0,
        (health.REPLACE, "max-requests (7 requests, limit 7)")),
    "over max-memory": (W(rss=3 * 2**20), 0.0, 0.0, 2**20,
                        (health.REPLACE, "max-memory (RSS 3.0 MiB, limit 1.0 MiB)")),
    "gone (no RSS)": (W(rss=None), 0.0, 0.0, 2**20, None),
}


@pytest.mark.parametrize("worker, now, timeout, max_memory, expected", list(HEALTH.values()),
                         ids=list(HEALTH))
def test_health_verdicts(worker, now, timeout, max_memory, expected):
    assert health.verdict(worker, now, timeout, max_memory) == expected


def test_a_starting_replacement_is_not_recycled_but_is_checked_for_hangs():
    worker = W(handled=50, limit=10, beats=1, last_beat=0.0)
    worker.replaces = W(1)
    assert health.verdict(worker, 1.0, 5.0, 0) is None
    assert health.verdict(worker, 10.0, 5.0, 0)[0] == health.ABORT


# Rule 5: (how late the primary's loop came round) -> (excused, each worker's
# silence at 100.0 with a 5 s timeout, for workers that last beat at 95.5 and 90.0)
PAUSES = {
    "on time": (0.0, False, [4.5, 10.0]),
    "a busy machine's delay": (health.PAUSE_SLACK, False, [4.5, 10.0]),
    "stopped 8 s: both clocks move on": (8.0, True, [-3.5, 2.0]),
    "early (a signal woke it)": (-0.4, False, [4.5, 10.0]),
}


@pytest.mark.parametrize("late, excused, silences", list(PAUSES.values()), ids=list(PAUSES))
def test_a_pause_of_the_primary_is_no_workers_silence(late, excused, silences):
    workers = [W(0, beats=3, last_beat=95.5), W(1, beats=3, last_beat=90.0)]
    assert health.excuse_pause(workers, late) is excused
    assert [100.0 - w.last_heartbeat for w in workers] == pytest.approx(silences)
    # The verdict follows: silent past the timeout outside the pause is still hung.
    assert [health.verdict(w, 100.0, 5.0, 0) is not None for w in workers] == [
        s > 5.0 for s in silences]


@pytest.mark.parametrize("timeout, interval", [(0.0, 1.0), (30.0, 1.0), (2.0, 0.5), (0.1, 0.05)])
def test_heartbeat_interval(timeout, interval):
    assert health.heartbeat_interval(timeout) == pytest.approx(interval)


# -- replacement: new before old ------------------------------------------------------------
def kinds(actions):
    return [a[0] for a in actions]


def start_next(policy, now=0.0):
    """Step until a NEXT, then start it with a fresh worker; returns (old, new)."""
    actions = policy.step(now, may_start=True)
    assert kinds(actions)[-1] == replacement.NEXT
    _, old, reason = actions[-1]
    new = W(old.index, f"new {old.index}", state="starting")
    policy.started(old, new, reason, now)
    return old, new


def test_one_at_a_time_new_before_old():
    policy = replacement.Replacements(ready_timeout=5.0, wait_ready=False)
    a, b = W(0, addresses=["127.0.0.1:80"]), W(1, addresses=["127.0.0.1:80"])
    assert policy.request(a, "reload") and policy.request(b, "reload")
    assert not policy.request(a, "reload")          # rule 1: already queued
    old, new = start_next(policy)
    assert old is a and new.replaces is a
    assert policy.step(1.0, may_start=True) == []   # not ready: nothing else starts
    new.addresses.append("127.0.0.1:80")            # rule 3: listens where the old one did
    assert kinds(policy.step(1.0, True)) == [replacement.READY]
    assert new.replaces is None
    a.stop_requested = True                         # the primary stops it
    assert policy.step(1.5, True) == []             # waits for the old one to exit
    a.state = "dead"
    actions = policy.step(2.0, True)
    assert kinds(actions) == [replacement.DONE, replacement.NEXT] and actions[1][1] is b


def test_a_crash_loop_hold_delays_the_next_start():
    policy = replacement.Replacements(ready_timeout=5.0, wait_ready=False)
    policy.request(W(0), "max-requests")
    assert policy.step(0.0, may_start=False) == []
    assert kinds(policy.step(0.0, may_start=True)) == [replacement.NEXT]


def test_wait_ready_needs_the_ready_call():
    policy = replacement.Replacements(ready_timeout=5.0, wait_ready=True)
    policy.request(W(0, addresses=["x"]), "reload")
    _, new = start_next(policy)
    new.addresses.append("x")
    assert policy.step(1.0, True) == []
    new.ready = True
    assert kinds(policy.step(1.0, True)) == [replacement.READY]


def test_an_old_worker_that_never_listened_is_replaced_once_the_new_one_is_online():
    policy = replacement.Replacements(ready_timeout=5.0, wait_ready=False)
    policy.request(W(0), "reload")
    _, new = start_next(policy)
    assert policy.step(1.0, True) == []
    new.state = "online"
    assert kinds(policy.step(1.0, True)) == [replacement.READY]


def test_the_old_one_going_first_lets_the_new_one_take_its_place():
    policy = replacement.Replacements(ready_timeout=5.0, wait_ready=False)
    policy.request(W(0, addresses=["x"]), "reload")
    old, new = start_next(policy)
    old.state = "dead"
    assert kinds(policy.step(1.0, True)) == [replacement.DONE]
    assert new.replaces is None and policy.current is None


@pytest.mark.parametrize("how, why", [
    ("dies", "new 0 exited before it was ready"),
    ("stopped", "new 0 was stopped (stopping) before it was ready"),
    ("late", "new 0 was not ready within 5s"),
])
def test_an_aborted_reload_drops_the_queued_reloads(how, why):
    policy = replacement.Replacements(ready_timeout=5.0, wait_ready=False)
    for i in range(3):
        policy.request(W(i, addresses=["x"]), "reload")
    policy.request(W(7, addresses=["x"]), "max-memory")
    _, new = start_next(policy)
    now = 1.0
    if how == "dies":
        new.state = "dead"
    elif how == "stopped":
        new.stop_requested, new.state = True, "stopping"
    else:
        now = 5.0
    actions = policy.step(now, True)
    assert len(actions) == 1
    kind, current, got_why, dropped = actions[0]
    assert (kind, current.new, got_why, dropped) == (replacement.ABORT, new, why, 2)
    assert new.replaces is None and policy.current is None
    assert [w.index for w, _ in policy.queue] == [7]        # only the non-reload stays


def test_a_failed_fork_goes_back_to_the_front():
    policy = replacement.Replacements(ready_timeout=5.0, wait_ready=False)
    a, b = W(0), W(1)
    policy.request(a, "reload")
    policy.request(b, "reload")
    _, old, reason = policy.step(0.0, True)[0]
    policy.retry(old, reason)
    assert [w for w, _ in policy.queue] == [a, b]


def test_stopped_or_dead_workers_are_skipped_and_not_queued():
    policy = replacement.Replacements(ready_timeout=5.0, wait_ready=False)
    a, b, c = W(0), W(1), W(2)
    policy.request(a, "reload")
    policy.request(b, "reload")
    a.stop_requested = True
    c.state = "dead"
    assert not policy.request(c, "reload")
    actions = policy.step(0.0, True)
    assert [(k, o) for k, o, _ in actions] == [(replacement.NEXT, b)]
