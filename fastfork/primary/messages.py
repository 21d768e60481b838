"""What the primary does with each message a worker sends on its control channel.

A table from message type to handler (as Node's cluster does).  A worker
that sends anything else, or a message that makes its handler raise (a
missing field, Infinity where a count goes, a backlog the kernel refuses),
is replaced: it is that worker's fault, and it must never reach the loop,
which would take every worker down.
"""

import logging
import os
import signal
import time

from ..addresses import DEFAULT_BACKLOG, parse_address
from ..handoff.control import MessageError
from ..handoff.wire import LAG_BUCKETS
from ..settings import DISPATCHED
from . import backoff

log = logging.getLogger("fastfork")


def read_control(cluster, worker):
    """Handle every message waiting on ``worker``'s control channel; never raises."""
    while worker.control is not None:
        try:
            message, fds = worker.control.recv()
        except BlockingIOError:
            return
        except InterruptedError:
            continue
        except MessageError as exc:
            replace_misbehaving(cluster, worker, str(exc))
            return
        except OSError:
            message, fds = None, []
        for fd in fds:
            os.close(fd)       # workers have no reason to send descriptors
        if message is None:
            disconnect(cluster, worker)
            return
        handler = HANDLERS.get(message["t"])
        if handler is None:
            replace_misbehaving(cluster, worker, f"unknown message type {message['t']!r}")
            return
        try:
            handler(cluster, worker, message)
        except Exception as exc:
            replace_misbehaving(cluster, worker, f"bad {message['t']!r} message: {exc}")
            return


def replace_misbehaving(cluster, worker, why):
    log.error("%s (pid %d) sent a malformed message (%s); replacing it",
              worker.label, worker.pid, why)
    # Kill before closing its channel, or it would exit on the EOF first.
    worker.kill(signal.SIGKILL)
    disconnect(cluster, worker)


def disconnect(cluster, worker):
    """The control channel is gone (EOF or a bad message): stop watching it."""
    if worker.control is None:
        return
    cluster.forget_control(worker)
    cluster.emit("disconnect", worker)


def on_online(cluster, worker, message):
    worker.state = "online"
    log.info("%s (pid %d) online", worker.label, worker.pid)
    cluster.emit("online", worker)


def on_ready(cluster, worker, message):
    worker.ready = True
    cluster.emit("ready", worker)


def on_loaded(cluster, worker, message):
    # A worker that imports its app itself says what it loaded, or why it could
    # not; it waits for the answer, so this is read before it may exit.
    kind, error = message.get("kind"), message.get("error")
    if not all(value is None or isinstance(value, str) for value in (kind, error)):
        raise ValueError(f"kind {kind!r}, error {error!r}")
    cluster.emit("loaded", worker, kind, error)
    if worker.control is not None:
        try:
            worker.control.send({"t": "loaded"})
        except OSError:
            pass              # killed meanwhile (a start that failed)


def on_stopping(cluster, worker, message):
    # The worker got SIGTERM: retire it like any graceful stop; as a stop
    # nobody here asked for, its index is re-forked.
    log.info("%s (pid %d) is stopping on its own (SIGTERM)", worker.label, worker.pid)
    cluster.stop_worker(worker)
    cluster.note_restart(worker, "sigterm")
    cluster.crash_loop.defer(worker.index, time.monotonic() + backoff.SIGTERM_HOLD)


# A count a worker reports: what status, metrics (floats) and max-requests
# take as one.  2**53: where a float stops counting by ones.
MAX_COUNT = 2**53


def _count(value, what):
    """``value`` as a reported count (None: not reported); ValueError if it is
    not one (a negative number, 10**400, true, 1.5, a string)."""
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < MAX_COUNT:
        raise ValueError(f"{what} {value!r} is not a count")
    return value


def on_heartbeat(cluster, worker, message):
    # Checked whole before any is kept: a bad one replaces the worker.
    opened = _count(message.get("open"), "open")
    served = _count(message.get("served"), "served")
    requests = _count(message.get("requests"), "requests")
    head_timeouts = _count(message.get("head_timeouts"), "head_timeouts")
    blocked = _count(message.get("blocked"), "blocked")
    lag = message.get("lag")
    if lag is not None:
        if not isinstance(lag, list) or len(lag) != len(LAG_BUCKETS) + 1:
            raise ValueError(f"lag is not {len(LAG_BUCKETS) + 1} counts")
        lag_sum = message.get("lag_sum") or 0.0
        if type(lag_sum) not in (int, float) or not 0.0 <= lag_sum < MAX_COUNT:
            raise ValueError(f"lag_sum {lag_sum!r} is not a number of seconds")
        worker.lag = ([_count(count, "a lag count") for count in lag], float(lag_sum))
    worker.last_heartbeat = time.monotonic()
    worker.heartbeats += 1
    worker.open_connections, worker.served, worker.requests = opened, served, requests
    worker.head_timeouts, worker.blocked = head_timeouts, blocked


def on_unlisten(cluster, worker, message):
    # The worker closed a listener while it goes on: send it nothing more for
    # that address, or each connection it got would be closed unanswered.
    lid = message["lid"]
    if type(lid) is not int:
        raise ValueError(f"listener id {lid!r}")
    if cluster.policy in DISPATCHED and worker.slot is not None:
        cluster.dispatcher.unsubscribe(worker.slot, lid)
        log.info("%s (pid %d) closed its listener %d", worker.label, worker.pid, lid)


def on_msg(cluster, worker, message):
    cluster.emit("message", worker, message.get("data"))


def on_listen(cluster, worker, message):
    request = message["id"]
    backlog = int(message.get("backlog") or DEFAULT_BACKLOG)
    try:
        family, sockaddr = parse_address(message["address"])
        shared, fds, own = cluster.listeners.grant(worker.slot, family, sockaddr, backlog,
                                                   cluster.dispatcher)
    except (OSError, ValueError) as exc:
        worker.control.send({"t": "listen_error", "id": request,
                             "errno": getattr(exc, "errno", None) or 0, "error": str(exc)})
        log.warning("%s could not listen: %s", worker.label, exc)
        return
    try:
        settings = cluster.settings
        worker.control.send({"t": "listening", "id": request, "address": shared.display,
                             "lid": shared.lid, "policy": cluster.policy,
                             "proxy": (list(settings.proxy_allow_from)
                                       if settings.proxy_protocol else None)}, fds)
    finally:
        if own is not None:
            own.close()       # the worker has its own copy now
    worker.addresses.append(shared.display)
    if worker.state in ("starting", "online"):
        worker.state = "listening"
    log.info("%s (pid %d) listening on %s", worker.label, worker.pid, shared.display)
    cluster.emit("listening", worker, shared.display)


# Message types a worker may send; anything else gets it replaced.
HANDLERS = {
    "online": on_online,
    "ready": on_ready,
    "loaded": on_loaded,
    "heartbeat": on_heartbeat,
    "msg": on_msg,
    "listen": on_listen,
    "unlisten": on_unlisten,
    "stopping": on_stopping,
}
