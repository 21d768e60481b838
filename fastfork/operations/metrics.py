"""Prometheus metrics of a primary and its workers, read at scrape time.

Nothing is counted twice: a ``prometheus_client`` collector reads, when
scraped, what the primary already keeps (the dispatcher's counters, each
worker's handle, the restarts by cause), so serving metrics costs nothing
between scrapes.  Per-worker series carry the worker's ``index`` (its slot,
which a replacement takes over, as PM2's NODE_APP_INSTANCE); a counter of a
replaced worker starts again from 0, which Prometheus reads as a reset.

``prometheus_client`` is the optional extra ``metrics``.
"""

import math
import time

from ..extras import require
from ..handoff.wire import BATCH_BUCKETS, LAG_BUCKETS

def _client():
    purpose = "serve --metrics"
    return (require("prometheus_client.core", purpose),
            require("prometheus_client.exposition", purpose),
            require("prometheus_client.registry", purpose))


def check_available():
    """Raise ``MissingExtraError`` now (before any fork) if metrics cannot be served."""
    _client()


class ClusterCollector:
    """The ``prometheus_client`` collector of one ``Cluster``."""

    def __init__(self, cluster):
        self.cluster = cluster
        self._core = _client()[0]

    def describe(self):
        return []         # no fixed description: every family is made at collect time

    def collect(self):
        core, cluster = self._core, self.cluster
        dispatcher = cluster.dispatcher
        if dispatcher is None:
            return
        stats = dispatcher.stats()
        counter, gauge = core.CounterMetricFamily, core.GaugeMetricFamily
        yield counter("fastfork_connections_accepted", "Connections the primary accepted (rr).",
                      value=stats["accepted"])
        yield counter("fastfork_connections_dispatched", "Connections handed to a worker, "
                      "re-dispatched ones included.", value=stats["dispatched"])
        yield counter("fastfork_connections_redispatched", "Connections a worker never "
                      "acknowledged, handed to another one.", value=stats["redispatched"])
        yield gauge("fastfork_connections_pending", "Connections the primary holds with no "
                    "worker to take them yet.", value=stats["pending"])
        yield counter("fastfork_stalls", "Times a worker's event loop was found blocked "
                      "(--stall-ms): it was sent nothing until it ran again.",
                      value=stats["stalls"])
        yield counter("fastfork_connections_taken_back", "Connections sent to a blocked "
                      "worker and not yet taken, read back from its channel and handed "
                      "to another.", value=stats["taken_back"])
        yield counter("fastfork_accept_pauses", "Times accepting paused for lack of fds or "
                      "memory.", value=stats["pauses"])
        yield self._batches(dispatcher.batch_counts(), stats["dispatched"])
        yield gauge("fastfork_workers", "Workers alive.", value=len(cluster.alive_workers()))
        yield gauge("fastfork_workers_wanted", "Workers the primary keeps running.",
                    value=cluster.size)
        yield gauge("fastfork_ready", "1 while the primary would answer /readyz with 200.",
                    value=1 if cluster.readiness()[0] else 0)
        yield gauge("fastfork_workers_degraded", "Wanted worker slots that no worker serves "
                    "(starting, or re-forking after crashes).",
                    value=len(cluster.degraded()))
        streaks = gauge("fastfork_worker_quick_deaths", "Quick deaths in a row at a slot that "
                        "does not serve (a crash loop from --max-restarts).", labels=["index"])
        for index, streak in cluster.crash_loops().items():
            streaks.add_metric([str(index)], streak)
        yield streaks
        restarts = counter("fastfork_worker_restarts", "Workers forked again, by index and "
                           "cause (crash, hang, max-requests, max-memory, reload, sigterm).",
                           labels=["index", "cause"])
        for (index, cause), count in sorted(cluster.restarts_by_cause.items()):
            restarts.add_metric([str(index), cause], count)
        yield restarts
        yield from self._workers(time.monotonic())

    def _batches(self, counts, total):
        # The sum of all batch sizes is the number of connections sent.
        return self._core.HistogramMetricFamily(
            "fastfork_dispatch_batch_size", "Connections sent per sendmsg to a worker.",
            buckets=_cumulative(BATCH_BUCKETS, counts), sum_value=total)

    def _workers(self, now):
        gauge, counter = self._core.GaugeMetricFamily, self._core.CounterMetricFamily
        labels = ["index"]
        families = {
            "dispatched": counter("fastfork_worker_connections", "Connections a worker got.",
                                  labels=labels),
            "requests": counter("fastfork_worker_requests", "Requests a worker answered "
                                "(HTTP apps).", labels=labels),
            "head_timeouts": counter("fastfork_worker_request_head_timeouts", "Connections a "
                                     "worker closed because a request head did not arrive "
                                     "within --timeout-request-head (HTTP apps).",
                                     labels=labels),
            "open": gauge("fastfork_worker_open_connections", "Connections open in a worker, "
                          "as its loop last reported.", labels=labels),
            "queued": gauge("fastfork_worker_queued_connections", "Connections sent to a "
                            "worker that it has not acknowledged yet.", labels=labels),
            "at_fd_limit": gauge("fastfork_worker_at_fd_limit", "1 while a worker is at its "
                                 "file-descriptor limit (RLIMIT_NOFILE): it is sent no "
                                 "connection until it has room again.", labels=labels),
            "stalled": gauge("fastfork_worker_stalled", "1 while a worker's event loop is "
                             "blocked (--stall-ms): it is sent nothing meanwhile.",
                             labels=labels),
            "stalls": counter("fastfork_worker_stalls", "Times a worker's event loop was "
                              "found blocked (--stall-ms).", labels=labels),
            "taken_back": counter("fastfork_worker_connections_taken_back", "Connections "
                                  "read back unread from a worker while it was blocked, and "
                                  "handed to another.", labels=labels),
            "blocked": counter("fastfork_worker_loop_blocked", "Times a worker's event loop "
                               "was blocked past --stall-log-ms (each logged where it was, "
                               "at most once in 10 s), as it reported.", labels=labels),
            "lag": self._core.HistogramMetricFamily(
                "fastfork_worker_loop_lag_seconds", "How late a worker's loop ran its tick "
                "(every --stall-ms / 3 while it holds connections), as it reported.",
                labels=labels),
            "beat": gauge("fastfork_worker_heartbeat_age_seconds", "Seconds since a worker's "
                          "loop last beat (NaN before its first beat).", labels=labels),
            "rss": gauge("fastfork_worker_rss_bytes", "Resident memory of a worker.",
                         labels=labels),
            "uptime": gauge("fastfork_worker_uptime_seconds", "Seconds since a worker was "
                            "forked.", labels=labels),
        }
        dispatcher = self.cluster.dispatcher
        for worker in sorted(self.cluster.alive_workers(), key=lambda w: (w.index, w.id)):
            if worker.stop_requested:
                continue      # a stopping worker shares its index with its successor
            index = [str(worker.index)]
            families["dispatched"].add_metric(index, worker.handled())
            if worker.requests is not None:
                families["requests"].add_metric(index, worker.requests)
            if worker.head_timeouts is not None:
                families["head_timeouts"].add_metric(index, worker.head_timeouts)
            if worker.open_connections is not None:
                families["open"].add_metric(index, worker.open_connections)
            families["queued"].add_metric(index, dispatcher.worker_stats(worker.slot)[1])
            families["at_fd_limit"].add_metric(
                index, 1 if dispatcher.worker_at_fd_limit(worker.slot) else 0)
            stalled, stalls, taken_back = dispatcher.worker_stalls(worker.slot)
            families["stalled"].add_metric(index, 1 if stalled else 0)
            families["stalls"].add_metric(index, stalls)
            families["taken_back"].add_metric(index, taken_back)
            if worker.blocked is not None:
                families["blocked"].add_metric(index, worker.blocked)
            if worker.lag is not None:
                families["lag"].add_metric(index, _cumulative(LAG_BUCKETS, worker.lag[0]),
                                           sum_value=worker.lag[1])
            families["beat"].add_metric(index, now - worker.last_heartbeat
                                        if worker.heartbeats else math.nan)
            rss = worker.rss()
            if rss is not None:
                families["rss"].add_metric(index, rss)
            families["uptime"].add_metric(index, worker.uptime)
        yield from families.values()


def _cumulative(bounds, counts):
    """Cumulative buckets, as a Prometheus histogram wants, from a count per
    bucket (``counts`` may have one more, for +Inf)."""
    buckets, running = [], 0
    for bound, count in zip(bounds, counts):
        running += count
        buckets.append((str(bound), running))
    running += sum(counts[len(bounds):])
    buckets.append(("+Inf", running))
    return buckets


def registry_for(cluster):
    """A registry holding only this cluster's metrics."""
    _, _, registry = _client()
    reg = registry.CollectorRegistry(auto_describe=False)
    reg.register(ClusterCollector(cluster))
    return reg


def render(reg):
    """``(body, content_type)`` of a scrape."""
    _, exposition, _ = _client()
    return exposition.generate_latest(reg), exposition.CONTENT_TYPE_LATEST
