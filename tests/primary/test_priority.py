"""The primary's scheduling policy (``fastfork.primary.priority``): the auto
governor's decisions as tables, then a real `python -m fastfork run` primary and
its workers, read with ``sched_getscheduler``.

Under rr and least, with ``--primary-sched batch`` or (auto) while its workers
are behind, the primary runs as SCHED_BATCH, so that its wake-ups do not
preempt workers; its workers, forked from it, must not inherit that, respawned
ones included; and a policy the operator started it with stays as it was.
"""

import os
import signal

import pytest

from tests.harness import wait_until
from tests.loadgen import HttpClient, LineClient, Load
from tests.runner_harness import APPS, OPS_APP, pids_of
from fastfork.cli.status import table
from fastfork.primary import priority

OTHER, BATCH = os.SCHED_OTHER, os.SCHED_BATCH


@pytest.mark.parametrize("batch, queued_mean, workers, busy, want", [
    (False, 0, 2, 0.0, False),
    (False, 3.9, 2, 0.0, False),        # under 2 a worker: other stays
    (False, 4.0, 2, 0.0, True),         # 2 a worker: yield
    (True, 4.0, 2, 0.0, True),
    (True, 2.0, 2, 0.0, True),          # 1 a worker: batch stays (apart: no flapping)
    (True, 1.9, 2, 0.0, False),         # under 1 a worker: preempt again
    (False, 16, 8, 0.0, True),
    (False, 15.9, 8, 0.0, False),
    (False, 0, 2, 0.59, False),         # cores busy: from 0.6
    (False, 0, 2, 0.6, True),           # (a pool's queue is in the worker)
    (True, 0, 2, 0.45, True),
    (True, 0, 2, 0.44, False),
    (True, 1.9, 2, 0.45, True),         # either keeps it
    (False, 5, 0, 1.0, False),          # no worker: nothing to yield to
    (True, 5, 0, 1.0, False),
])
def test_choose(batch, queued_mean, workers, busy, want):
    assert priority.choose(batch, queued_mean, workers, busy) is want


def test_the_governor_decides_on_its_last_samples_and_samples_slowly_when_idle():
    g = priority.Governor(now=0.0, cpus=2)
    assert g.next_at == priority.SAMPLE_EVERY
    changes = []
    t, accepted = 0.0, 0
    for queued in [8, 8, 8, 8, 8]:         # 2 workers behind: the mean climbs past 4
        t, accepted = t + 0.1, accepted + 50
        changes.append(g.sample(t, queued, 2, accepted, cpu=0.0))
    assert changes == [True, None, None, None, None] and g.batch
    assert g.next_at == t + priority.SAMPLE_EVERY
    changes = []
    for queued in [0, 0, 0, 0, 0]:         # caught up; 8, 0, 0, 0, 0 is a mean of 1.6
        t, accepted = t + 0.1, accepted + 50
        changes.append(g.sample(t, queued, 2, accepted, cpu=0.0))
    assert changes == [None, None, None, False, None] and not g.batch
    t += 0.1
    assert g.sample(t, 0, 2, accepted, cpu=0.0) is None        # nothing came since: idle
    assert g.next_at == t + priority.IDLE_EVERY
    t += 1.0
    assert g.sample(t, 0, 2, accepted + 1, cpu=0.0) is None    # one came: sample often again
    assert g.next_at == t + priority.SAMPLE_EVERY


def test_the_governor_yields_to_workers_that_keep_their_cores_busy():
    g = priority.Governor(now=0.0, cpus=2)
    t, cpu, changes = 0.0, 10.0, []
    for step in range(5):                   # 2 workers using 1.4 of 2 cores, nothing queued
        changes.append(g.sample(t, 0, 2, step, cpu))
        t, cpu = t + 0.1, cpu + 0.14
    assert changes == [None, True, None, None, None]
    for step in range(5, 10):               # 0.6 of 2 cores: busy 0.3
        changes.append(g.sample(t, 0, 2, step, cpu))
        t, cpu = t + 0.1, cpu + 0.06
    assert changes[5:] == [None, None, None, False, None]
    # A worker ended (its CPU left the sum): the window starts again.
    assert g.sample(t, 0, 2, 11, cpu=1.0) is None
    assert g.sample(t + 0.1, 0, 2, 12, cpu=1.14) is True


def policies(status):
    return ({os.sched_getscheduler(status["primary"]["pid"])},
            {os.sched_getscheduler(pid) for pid in pids_of(status)})


@pytest.mark.parametrize("args, launcher, primary, workers", [
    ([], None, OTHER, OTHER),                                    # the default, idle
    (["--primary-sched", "batch"], None, BATCH, OTHER),          # rr
    (["--primary-sched", "batch", "--policy", "least"], None, BATCH, OTHER),
    (["--primary-sched", "batch", "--policy", "none"], None, OTHER, OTHER),   # hands out none
    (["--primary-sched", "batch"], "batch_launcher.py", BATCH, BATCH),   # the operator's, kept
    (["--primary-sched", "other"], "batch_launcher.py", BATCH, BATCH),
], ids=["default", "batch-rr", "batch-least", "batch-none", "operator-batch",
        "operator-batch-other"])
def test_the_primary_yields_to_its_workers_and_they_do_not_inherit_it(
        runner_factory, args, launcher, primary, workers):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            *args, launcher=[os.path.join(APPS, launcher)] if launcher else None)
    status = runner.wait_serving(2)
    assert status["primary"]["pid"] == runner.pid
    assert policies(status) == ({primary}, {workers})
    assert status["primary"]["sched"] == {OTHER: "other", BATCH: "batch"}[primary]
    assert ("; primary as SCHED_BATCH" in table(status)[0]) == (primary == BATCH)


def test_a_respawned_worker_runs_as_sched_other(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--primary-sched", "batch")
    before = pids_of(runner.wait_serving(2))
    os.kill(min(before), signal.SIGKILL)
    after = runner.wait_status(lambda s: len(pids_of(s) - before) == 1
                               and all(w["state"] == "listening" for w in s["workers"]),
                               "a replacement for the killed worker")
    assert policies(after) == ({BATCH}, {OTHER})


def test_auto_yields_while_the_workers_are_behind_and_preempts_again_after(runner_factory, impl):
    # Each request blocks its worker's loop 10 ms (under --stall-ms 50, so
    # that no worker counts as stalled): 40 clients at a time keep
    # connections waiting unread in both workers' channels.
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--stall-ms", "50", impl=impl)
    status = runner.wait_serving(2)
    assert policies(status) == ({OTHER}, {OTHER})

    def primary_is(policy):
        return os.sched_getscheduler(runner.pid) == policy

    client = LineClient(b"block 0.01\n", check=lambda line, reply: reply.endswith(b"unblocked\n"),
                        timeout=30)
    with Load(runner.address(), concurrency=40, duration=60, client=client) as load:
        wait_until(lambda: primary_is(BATCH), 15, "the primary running as SCHED_BATCH")
        assert {os.sched_getscheduler(pid) for pid in pids_of(runner.status())} == {OTHER}
        load.wait_more(20, "requests answered while it yields")
    report = load.report()
    assert report.failed == 0, report.errors
    wait_until(lambda: primary_is(OTHER), 15, "the primary running as SCHED_OTHER again")


def test_auto_yields_to_workers_that_keep_their_cores_busy(runner_factory, impl):
    # Flask on one pool thread, each request 3 ms of CPU: the loop reads its
    # channel at once and the calls queue inside the worker, so the channel
    # stays about empty, but the worker's core is busy.  (One worker: all
    # the governor needs is 60% of one core, even on a machine shared with
    # other work.)
    runner = runner_factory(os.path.join(APPS, "web", "flask_app.py:app"), "--workers", "1",
                            "--threads", "1", "--bind", "127.0.0.1:0", impl=impl)
    runner.wait_serving(1)
    with Load(runner.address(), concurrency=8, duration=60,
              client=HttpClient("/spin?ms=3")) as load:
        wait_until(lambda: os.sched_getscheduler(runner.pid) == BATCH, 15,
                   "the primary running as SCHED_BATCH")
        load.wait_more(20, "requests answered while it yields")
    report = load.report()
    assert report.failed == 0, report.errors
    wait_until(lambda: os.sched_getscheduler(runner.pid) == OTHER, 15,
               "the primary running as SCHED_OTHER again")
