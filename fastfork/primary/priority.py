"""The primary's CPU scheduling (``--primary-sched``): while its workers are
behind, the primary runs as ``SCHED_BATCH``, so that waking up to accept does
not preempt a worker in the middle of a request.

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

Why not always.  It waits for every other process as well: beside processes
that never sleep (CPU-bound jobs), each wake-up waits for their time slice to
end, a few milliseconds, which a connection waits too when the workers have
nothing else to do.  So ``auto`` (the default) runs the primary as
``SCHED_BATCH`` only while its workers are behind: while connections wait
unread in their channels or the workers keep their cores busy (``Governor``,
over the last half second), where a wait for the primary costs nothing the
queue does not cost anyway; ``batch`` and ``other`` fix the policy.  Measured in
``docs/guides/policies.md`` ("The primary's scheduling policy").

Workers are forked from the primary and would inherit the policy: each sets
``SCHED_OTHER`` back before anything else (``restore``, from the primary's
``_shed_in_child``), and an exec'd worker inherits that.  An operator's own
choice is kept: the primary changes its policy only from ``SCHED_OTHER`` (not
one set with ``chrt`` or systemd's ``CPUSchedulingPolicy=``), and only what it
changed is set back.  Linux's policies are per thread: the primary's threads
started before ``lower`` keep theirs.
"""

import collections
import logging
import os

log = logging.getLogger("fastfork")

# While the primary runs as SCHED_BATCH by ``lower``: what its forked workers
# and the primary itself (as it stops) set back to SCHED_OTHER.
_lowered = False

_NAMES = {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle",
          os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}


def current():
    """The calling thread's policy, as ``chrt`` names it (``fastfork status``)."""
    try:
        policy = os.sched_getscheduler(0)
    except OSError:
        return None
    return _NAMES.get(policy, str(policy))


def adjustable():
    """Whether the calling thread runs as SCHED_OTHER: only then may ``lower`` be
    called (another policy is the operator's choice, kept)."""
    return current() == "other"


def lower():
    """Run the calling thread, ``adjustable()``, as SCHED_BATCH; True if it does."""
    global _lowered
    if _lowered:
        return True
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:
        # A seccomp filter or an unusual kernel: the primary works as before.
        log.warning("the primary could not run as SCHED_BATCH (%s): its wake-ups may "
                    "preempt workers", exc)
        return False
    _lowered = True
    return True


def restore():
    """Set back what ``lower`` changed, in the primary as it stops or in a forked worker."""
    global _lowered
    if not _lowered:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except OSError as exc:
        log.warning("could not set the scheduling policy back to SCHED_OTHER (%s)", exc)
    _lowered = False


# auto: how often the workers are sampled while connections come, and once
# none came since the last sample (the primary wakes once a second anyway).
SAMPLE_EVERY = 0.1
IDLE_EVERY = 1.0
SAMPLES = 5                 # the last half second's samples decide
# The workers are behind when connections wait unread in their channels, or
# when they keep their cores busy (a WSGI pool's queue is inside the worker,
# which reads its channel at once).  From these the primary yields, and below
# both of the lower ones it preempts again (apart, so that it does not flap).
# Measured on 2 workers, 2 cores: 3.9-6.7 connections waiting a worker under
# saturation; 0.3-0.7 at 6,000 Flask connections a second (about 40% of the
# cores) or with four clients at a time; Django on the pool, saturated, left
# its channels about empty in one run of ten, with its workers' cores busy.
ENTER_PER_WORKER = 2.0
LEAVE_PER_WORKER = 1.0
ENTER_BUSY = 0.6            # of the cores the workers can use
LEAVE_BUSY = 0.45


def choose(batch, queued_mean, workers, busy=0.0):
    """Whether the primary should run as SCHED_BATCH: it does (``batch``),
    ``queued_mean`` connections wait unread across ``workers`` workers, whose
    CPU use is ``busy`` of the cores they can use (0 to 1)."""
    if workers <= 0:
        return False
    per_worker = queued_mean / workers
    if batch:
        return per_worker >= LEAVE_PER_WORKER or busy >= LEAVE_BUSY
    return per_worker >= ENTER_PER_WORKER or busy >= ENTER_BUSY


class Governor:
    """``--primary-sched auto``: samples the workers' queues and CPU and says
    when the policy should change.  No I/O: the arbiter reads them and acts."""

    def __init__(self, now, cpus):
        self.batch = False
        self.cpus = cpus                # usable by the workers
        self.next_at = now + SAMPLE_EVERY
        self._samples = collections.deque(maxlen=SAMPLES)   # (now, queued, cpu seconds)
        self._accepted = -1

    def sample(self, now, queued, workers, accepted, cpu):
        """One sample: ``queued`` connections unread across ``workers``, the
        primary's ``accepted`` count so far and the workers' ``cpu`` seconds
        so far.  Returns the new state (True: batch) when it changes, else None."""
        idle = accepted == self._accepted
        self._accepted = accepted
        self.next_at = now + (IDLE_EVERY if idle and not queued else SAMPLE_EVERY)
        if self._samples and cpu < self._samples[-1][2]:
            self._samples.clear()       # a worker ended: its CPU left the sum
        self._samples.append((now, queued, cpu))
        first = self._samples[0]
        busy = 0.0
        if now > first[0] and workers > 0:
            busy = (cpu - first[2]) / (now - first[0]) / min(workers, self.cpus)
        queued_mean = sum(s[1] for s in self._samples) / len(self._samples)
        want = choose(self.batch, queued_mean, workers, busy)
        if want == self.batch:
            return None
        self.batch = want
        return want
