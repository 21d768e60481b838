"""The primary's handle on one worker process (Node's ``cluster.workers[id]``)."""

import os
import signal
import time

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_CLK_TCK = os.sysconf("SC_CLK_TCK")

# A worker's states, in order: starting -> online -> listening, then
# stopping (graceful) or hung (aborted), and dead once reaped.
STATES = ("starting", "online", "listening", "stopping", "hung", "dead")


class Worker:
    """One worker as the primary sees it.  Created by ``Cluster.spawn_worker``."""

    def __init__(self, cluster, worker_id, index):
        self._cluster = cluster
        self.id = worker_id          # unique, never reused (Node's worker.id)
        self.index = index           # 0..N-1, reused by a replacement (PM2's NODE_APP_INSTANCE)
        self.pid = None
        self.state = "starting"
        self.started_at = time.monotonic()
        self.addresses = []          # what it listens on
        self.ready = False
        self.exit_code = None
        self.exit_signal = None
        self.stop_requested = False
        self.kill_at = None          # monotonic deadline for SIGKILL while stopping
        self.slot = None             # its place in the dispatcher
        self.data_sock = None
        self.data_peer = None        # the worker's end, kept open (see spawn_worker)
        self.control = None
        self.last_heartbeat = self.started_at
        self.heartbeats = 0          # hang detection starts with the first beat
        self.open_connections = None # as last reported by the worker's loop
        self.served = None           # connections its loop has taken, as reported
        self.requests = None         # requests answered, as reported (HTTP apps)
        self.head_timeouts = None    # closed at the request-head deadline, as reported
        self.lag = None              # (loop-lag counts per wire.LAG_BUCKETS, sum), as reported
        self.blocked = None          # loop blocked past --stall-log-ms, times, as reported
        self.replaces = None         # the worker this one replaces, until it is ready
        self.request_limit = 0       # max-requests plus this worker's jitter; 0: none
        self.restarts = 0            # workers forked at this index before this one
        self._dispatched_final = 0   # dispatched(), frozen when the worker is reaped

    @property
    def label(self):
        return f"worker {self.id}"

    @property
    def uptime(self):
        return time.monotonic() - self.started_at

    def is_dead(self):
        return self.state == "dead"

    def in_transit(self):
        """A replacement still starting: its predecessor still holds the index."""
        old = self.replaces
        return old is not None and not old.stop_requested and not old.is_dead()

    def send(self, data):
        """Send a JSON-serializable message to this worker."""
        if self.control is None:
            raise BrokenPipeError(f"{self.label} is not connected")
        self.control.send({"t": "msg", "data": data})

    def kill(self, sig=signal.SIGTERM):
        """Send ``sig`` to the worker process (no-op once it has been reaped)."""
        if self.pid and not self.is_dead():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def disconnect(self, timeout=None):
        """Stop this worker gracefully: no new connections, finish open ones, exit."""
        self._cluster.stop_worker(self, timeout)

    def dispatched(self):
        """Connections the primary has handed to this worker so far."""
        if self.slot is None or self.is_dead():
            return self._dispatched_final
        return self._cluster.dispatcher.worker_stats(self.slot)[0]

    def queued(self):
        """Connections sent to this worker that it has not acknowledged yet."""
        if self.slot is None or self.is_dead():
            return 0
        return self._cluster.dispatcher.worker_stats(self.slot)[1]

    def stalls(self):
        """``(stalled, stalls, taken_back)``: whether its event loop is blocked
        now (it is sent nothing), how many times it was found so, and how many
        connections were taken back from it meanwhile."""
        if self.slot is None or self.is_dead():
            return False, 0, 0
        return self._cluster.dispatcher.worker_stalls(self.slot)

    def open(self):
        """Its open connections: the dispatcher's exact count under ``least``
        (sent minus reported closed), else as its loop last reported them."""
        if self.slot is not None and not self.is_dead():
            exact = self._cluster.dispatcher.worker_open(self.slot)
            if exact is not None:
                return exact
        return self.open_connections

    def handled(self):
        """Connections this worker got: dispatched by the primary (``rr``) or,
        when it accepts by itself (``none``/``reuseport``), as its loop reports."""
        return max(self.dispatched(), self.served or 0)

    def work_done(self):
        """What max-requests counts: ``(requests, "requests")`` where the worker
        reports them (HTTP apps), else ``(connections, "connections")``."""
        if self.requests is not None:
            return self.requests, "requests"
        return self.handled(), "connections"

    def rss(self):
        """Resident memory in bytes (from /proc), or None once it is gone."""
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return None

    def cpu_seconds(self):
        """CPU time it has used, all its threads (from /proc), or None once it is gone."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                # After the command's ")", which may hold spaces: utime and
                # stime are fields 14 and 15 of the line, 12 and 13 after it.
                fields = f.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / _CLK_TCK
        except (OSError, ValueError, IndexError):
            return None

    def __repr__(self):
        return f"<Worker id={self.id} index={self.index} pid={self.pid} state={self.state}>"
