"""Which workers to replace, and why: hang detection and recycling.  No I/O.

Rules
-----
1. Hang detection (``timeout`` > 0) starts with a worker's first heartbeat
   (a blocking worker that never beats is never taken for hung).  Silent for
   longer than ``timeout``: abort it (SIGABRT, so faulthandler shows where it
   is stuck, then SIGKILL) and fork its replacement at once.
2. A worker still starting as a replacement is not recycled: there would be
   nothing to gain.
3. Recycling, one worker at a time, new before old: at ``request_limit``
   requests answered (HTTP apps report them) or else connections handled
   (max-requests plus its jitter), or RSS over ``max_memory`` bytes.
4. Workers beat at most every second, and four times per timeout when the
   timeout is shorter, so that one late beat is never taken for a hang.
5. Time the primary itself did not run (stopped by SIGSTOP or a debugger,
   the whole group stopped by Ctrl-Z, starved on a loaded machine), found
   as its loop coming round more than PAUSE_SLACK after it was due, is not a
   worker's silence: every worker's clock moves on by that much.  (Judged at
   once, the workers that beat on time, their heartbeats still unread, or
   that were stopped with it, were all aborted as hung.)
"""

HEARTBEAT_MAX_INTERVAL = 1.0
HEARTBEAT_MIN_INTERVAL = 0.05

# How late the primary's loop may come round (past its poll's timeout) before
# the time counts as the primary's own pause (rule 5): far longer than a busy
# machine delays a runnable process, well under the shortest useful timeout.
PAUSE_SLACK = 0.5

ABORT = "abort"
REPLACE = "replace"


def heartbeat_interval(timeout):
    """How often a worker beats, for a hang ``timeout`` (0: hang detection off)."""
    if timeout:
        return max(HEARTBEAT_MIN_INTERVAL, min(HEARTBEAT_MAX_INTERVAL, timeout / 4))
    return HEARTBEAT_MAX_INTERVAL


def excuse_pause(workers, late):
    """The primary's loop came round ``late`` seconds after it was due: if that
    is a pause (rule 5), move each worker's heartbeat clock on by it.  Returns
    whether it did."""
    if late <= PAUSE_SLACK:
        return False
    for worker in workers:
        worker.last_heartbeat += late
    return True


def verdict(worker, now, timeout, max_memory):
    """``None``, ``(ABORT, seconds_silent)`` or ``(REPLACE, reason)`` for ``worker``
    (a handle: last_heartbeat, heartbeats, replaces, request_limit, work_done(), rss())."""
    silent = now - worker.last_heartbeat
    if timeout and worker.heartbeats and silent > timeout:
        return ABORT, silent
    if worker.replaces is not None:
        return None
    done, unit = worker.work_done()
    if worker.request_limit and done >= worker.request_limit:
        return REPLACE, f"max-requests ({done} {unit}, limit {worker.request_limit})"
    if max_memory:
        rss = worker.rss()
        if rss is not None and rss > max_memory:
            return REPLACE, (f"max-memory (RSS {rss / 2**20:.1f} MiB, "
                             f"limit {max_memory / 2**20:.1f} MiB)")
    return None
