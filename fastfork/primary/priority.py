"""The primary's CPU scheduling (``--primary-sched``): with ``batch``, while it
hands out connections (rr, least), its thread runs as ``SCHED_BATCH``, so that
waking up to accept never preempts a worker in the middle of a request.

Why.  Under load every few connections wake the primary.  A ``SCHED_OTHER``
thread that wakes after sleeping preempts whatever runs on its core at once
(the scheduler's wake-up preemption); with every core busy that is a worker,
which then refills its caches when it runs again, and the primary, woken
early, finds one or two connections to hand out per wake-up.  A ``SCHED_BATCH``
thread is never preempted *for* on waking (``check_preempt_wakeup_fair`` returns
early for a waker that is not ``SCHED_NORMAL``): it runs when a core's task
sleeps or its slice ends, and then finds more to hand out.  Its weight (nice 0)
is unchanged, so it gets the same share of the CPU, and an idle core runs it
at once.

Why not the default.  It waits for every other process as well: beside
processes that never sleep (CPU-bound jobs), each wake-up waits for their time
slice to end, a few milliseconds.  Both are measured in
``docs/guides/policies.md`` ("The primary's scheduling policy").

Workers are forked from the primary and would inherit the policy: each sets
``SCHED_OTHER`` back before anything else (``restore``, from the primary's
``_shed_in_child``), and an exec'd worker inherits that.  An operator's own
choice is kept: the primary changes its policy only from ``SCHED_OTHER`` (not
one set with ``chrt`` or systemd's ``CPUSchedulingPolicy=``), and only what it
changed is set back.  Linux's policies are per thread: the primary's threads
started before ``lower`` keep theirs.
"""

import logging
import os

log = logging.getLogger("fastfork")

# The policy the primary lowered from, while lowered: what its forked workers
# and the primary itself (as it stops) set back.
_lowered_from = None


def lower():
    """Run the calling thread as SCHED_BATCH if it runs as SCHED_OTHER; True if it did."""
    global _lowered_from
    if _lowered_from is not None:
        return True
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return False              # the operator chose a policy: keep it
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:
        # A seccomp filter or an unusual kernel: the primary works as before.
        log.warning("the primary could not run as SCHED_BATCH (%s): its wake-ups may "
                    "preempt workers", exc)
        return False
    _lowered_from = os.SCHED_OTHER
    return True


def restore():
    """Set back what ``lower`` changed, in the primary as it stops or in a forked worker."""
    global _lowered_from
    if _lowered_from is None:
        return
    try:
        os.sched_setscheduler(0, _lowered_from, os.sched_param(0))
    except OSError as exc:
        log.warning("could not set the scheduling policy back to SCHED_OTHER (%s)", exc)
    _lowered_from = None
