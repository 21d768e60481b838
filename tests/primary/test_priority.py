"""The primary's scheduling policy (``fastfork.primary.priority``), read off a real
`python -m fastfork run` primary and its workers with ``sched_getscheduler``.

With ``--primary-sched batch``, under rr and least, the primary runs as
SCHED_BATCH, so that its wake-ups do not preempt workers; its workers, forked
from it, must not inherit that, respawned ones included; and a policy the
operator started it with stays as it was.
"""

import os
import signal

import pytest

from tests.runner_harness import APPS, OPS_APP, pids_of

OTHER, BATCH = os.SCHED_OTHER, os.SCHED_BATCH


def policies(status):
    return ({os.sched_getscheduler(status["primary"]["pid"])},
            {os.sched_getscheduler(pid) for pid in pids_of(status)})


@pytest.mark.parametrize("args, launcher, primary, workers", [
    ([], None, OTHER, OTHER),                                    # the default
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


def test_a_respawned_worker_runs_as_sched_other(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--primary-sched", "batch")
    before = pids_of(runner.wait_serving(2))
    os.kill(min(before), signal.SIGKILL)
    after = runner.wait_status(lambda s: len(pids_of(s) - before) == 1
                               and all(w["state"] == "listening" for w in s["workers"]),
                               "a replacement for the killed worker")
    assert policies(after) == ({BATCH}, {OTHER})
