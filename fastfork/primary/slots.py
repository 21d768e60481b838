"""Which of a primary's slots serve: readiness, and the degraded count.

A slot is an index ``0 .. size - 1``; a replacement takes over its
predecessor's.  A slot *serves* while a worker at that index listens and was
not asked to stop; a slot that does not is *degraded* (starting, backing off
after a crash, or in a crash loop while the others serve; see ``backoff``).
What ``/readyz``, ``fastfork status`` and the metrics report is read here,
from the primary's worker table, when asked.
"""

import time


def serving_workers(cluster):
    """Workers that listen and were not asked to stop."""
    return [w for w in cluster.workers.values()
            if w.state == "listening" and not w.stop_requested]


def degraded(cluster):
    """The wanted indices no serving worker holds, lowest first."""
    held = {w.index for w in serving_workers(cluster)}
    return [index for index in range(cluster.size) if index not in held]


def missing(cluster):
    """The wanted indices no live worker holds: to fork, now or after their backoff."""
    held = {w.index for w in cluster.workers.values() if not w.stop_requested}
    return [index for index in range(cluster.size) if index not in held]


def describe(cluster, index):
    """Why ``index`` does not serve, in a few words."""
    streak = cluster.crash_loop.streak(index)
    if cluster.crash_loop.looping(index):
        return f"index {index}: crash loop, {streak} quick deaths in a row"
    if streak:
        return f"index {index}: restarting after {streak} quick deaths"
    return f"index {index}: starting"


def readiness(cluster):
    """``(ready, reason)``: what ``/readyz`` answers (200 or 503, and why).

    Ready while at least one worker serves: a degraded cluster still answers
    200 (its serving workers take every connection; a balancer that drops
    it would turn one broken slot into an outage), with the slots that do
    not serve in the reason, for a person or a probe that reads it.
    """
    if cluster.stopping:
        return False, "stopping: draining the workers"
    if cluster._stop_at is not None:
        left = max(0.0, cluster._stop_at - time.monotonic())
        return False, f"stopping: SIGTERM received, draining in {left:.1f}s"
    serving = serving_workers(cluster)
    if not serving:
        return False, "no worker is serving yet"
    # A worker out of fds, or whose event loop is blocked (rr, least: the
    # dispatcher's stall detection), is sent nothing until it has room or
    # runs again: with all of them so, connections only wait in the backlog.
    dispatcher = cluster.dispatcher
    slotted = [w.slot for w in serving if w.slot is not None]
    flags = [(dispatcher.worker_at_fd_limit(slot), dispatcher.worker_stalls(slot)[0])
             for slot in slotted]
    at_limit = sum(limit for limit, _ in flags)
    stalled = sum(stall and not limit for limit, stall in flags)
    if at_limit == len(serving):
        return False, (f"every serving worker ({at_limit}) is at its file-descriptor "
                       f"limit: connections wait until one has room")
    limited = f", {at_limit} at its file-descriptor limit" if at_limit else ""
    if at_limit + stalled == len(serving):
        return False, (f"every serving worker is stalled (its event loop blocked: "
                       f"{stalled}{limited}): connections wait until one runs again")
    limited += f", {stalled} stalled" if stalled else ""
    missing = degraded(cluster)
    if not missing:
        return True, f"ready: {len(serving)} of {cluster.size} workers serving{limited}"
    return True, (f"ready, degraded: {cluster.size - len(missing)} of {cluster.size} workers "
                  f"serving{limited} ({'; '.join(describe(cluster, i) for i in missing)})")


def crash_loops(cluster):
    """``{index: quick deaths in a row}`` of the degraded indices that have any."""
    return {index: cluster.crash_loop.streak(index) for index in degraded(cluster)
            if cluster.crash_loop.streak(index)}
