"""What ``fastfork status`` shows: a JSON-able snapshot of a primary and its workers."""

import time

from . import priority, slots


def status(cluster):
    """The primary, each worker (by index, then id) and the totals."""
    workers = []
    for w in sorted(cluster.workers.values(), key=lambda w: (w.index, w.id)):
        stalled, stalls, taken_back = w.stalls()
        workers.append({"id": w.id, "index": w.index, "pid": w.pid,
                        "uptime": round(w.uptime, 3), "restarts": w.restarts,
                        "dispatched": w.handled(), "requests": w.requests,
                        "head_timeouts": w.head_timeouts,
                        "open": w.open(), "queued": w.queued(),
                        "stalled": stalled, "stalls": stalls, "taken_back": taken_back,
                        "blocked": w.blocked,
                        "rss": w.rss(), "state": w.state})
    replacing = None
    current = cluster.replacements.current
    if current is not None:
        replacing = {"old": current.old.id, "new": current.new.id, "reason": current.reason}
    return {
        "primary": {"pid": cluster.pid, "name": cluster.name, "policy": cluster.policy,
                    "implementation": cluster.implementation, "size": cluster.size,
                    "sched": priority.current(),
                    "uptime": round(time.monotonic() - cluster.started_at, 3),
                    "addresses": cluster.listeners.addresses(),
                    "replacing": replacing, "queued": len(cluster.replacements.queue),
                    "stopping": cluster.stopping,
                    "ready": cluster.readiness()[0],
                    # Wanted slots no worker serves, and which of them crash.
                    "degraded": len(slots.degraded(cluster)),
                    "crash_loops": [{"index": index, "quick_deaths": streak}
                                    for index, streak in slots.crash_loops(cluster).items()],
                    "endpoints": cluster.endpoint_addresses()},
        "workers": workers,
        "totals": {"workers": len(workers),
                   "restarts": cluster.restarts_total(),
                   "dispatched": sum(w["dispatched"] for w in workers),
                   "open": sum(w["open"] or 0 for w in workers),
                   "queued": sum(w["queued"] for w in workers),
                   "rss": sum(w["rss"] or 0 for w in workers)},
    }
