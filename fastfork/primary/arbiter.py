"""The primary process: forks workers, owns the listening sockets, keeps workers alive.

Read it like gunicorn's arbiter: signal handlers only queue the signal; the
loop in ``run`` waits in the dispatcher (which accepts and hands out
connections in the same wait), then acts on control messages, queued signals,
dead children and the worker count, each in one verb-named method.  The
decisions are made by I/O-free policies in their own files (``backoff``,
``replacement``, ``health``, ``scaling``), the messages are handled in
``messages``, the addresses kept in ``listeners``; this class carries them out.

Over 400 lines on purpose: ``Cluster`` is the one object that acts on worker
processes (fork, reap, stop, kill, replace), and its verbs share the worker
table, the dispatcher and the loop's deadlines; as in gunicorn's arbiter,
splitting the verbs across files would only hide which state each one moves.
"""

import collections
import errno
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar, Union

from ..handoff import backend
from ..addresses import DEFAULT_BACKLOG, Address, fd_of, parse_address
from ..handoff import credit as credit_page
from ..handoff.control import ControlChannel
from ..cpus import parse_workers, usable_cpus
from ..privileges import resolve_credentials
from ..settings import DISPATCHED, POLICIES, Settings
from ..worker import boot
from . import backoff, health, messages, priority, replacement, scaling, slots
from ..operations import metrics
from ..operations.endpoint import Endpoint
from .handle import Worker
from .listeners import Listeners
from .signals import SignalQueue, reset_in_child
from .snapshot import status as _status

log = logging.getLogger("fastfork")
_Callback = TypeVar("_Callback", bound=Callable[..., object])

# Exit codes of the primary that mean something.
EXIT_OK = 0
EXIT_FORCED = 1          # a second SIGINT/SIGTERM: workers were killed, not drained
EXIT_CRASH_LOOP = 3      # workers kept dying right after start: re-forking stopped

# Out of fds or memory, the dispatcher pauses accept() many times a second:
# the log says so at most once per interval, not once per refused connection.
PAUSE_LOG_INTERVAL = 1.0
# A worker whose data channel closed or broke is killed this long after,
# unless it exits by itself first (a dying worker closes it on the way out).
DATA_CHANNEL_GRACE = 1.0
# A hung worker gets SIGABRT (faulthandler prints where it is stuck), then
# SIGKILL if it is still there this long after.
ABORT_GRACE = 5.0

EVENTS = ("fork", "online", "listening", "ready", "message", "disconnect", "exit",
          "prefork", "reload", "resize", "loaded")

_FROM_SETTINGS = object()      # Cluster(workers=...) not given: the settings say


class Cluster:
    """The primary: forks ``workers`` processes and dispatches connections to them.

    Two ways to start workers:

    * ``target`` given (the function form): each worker is an ``os.fork()`` of
      this process that calls ``target(*args, **kwargs)``; whatever was imported
      before is shared copy-on-write.
    * no ``target`` (the Node form): each worker re-runs this program
      (``sys.orig_argv``) with ``FASTFORK_CHANNELS`` set, so the same file sees
      ``fastfork.is_worker`` and serves.  ``workers=0`` starts none (``fork()``
      adds them, as in Node).

    How it runs is one ``fastfork.Settings``: pass ``settings=``, or keyword
    arguments that build one (``policy="none"``, ``window=4``, ...); both
    together apply the keywords to the settings given.  ``run()`` must be
    called from the main thread; it returns the exit code.
    """

    settings: Settings
    size: int                           # workers wanted now
    target: Optional[Callable[..., object]]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    policy: str
    name: str
    started_at: float                   # time.monotonic()
    pid: int
    exit_code: int
    stopping: bool
    workers: Dict[int, Worker]          # id -> Worker, alive or not yet reaped
    backend: Any                        # fastfork.handoff.backend.Backend
    implementation: str                 # "cython" or "python"
    dispatcher: Any                     # the backend's Dispatcher, once started
    listeners: Listeners
    crash_loop: backoff.CrashLoop
    replacements: replacement.Replacements
    restarts_by_cause: "collections.Counter[Tuple[int, str]]"
    # Private, declared for the checker (the public methods read them).
    _control_server: Any                # channels.status_socket.ControlServer, or None
    _endpoints: List[Endpoint]
    _restarts: Dict[int, int]
    _handlers: Dict[str, List[Callable[..., object]]]
    _stop_at: Optional[float]
    _by_control_fd: Dict[int, Worker]
    _by_slot: Dict[int, Worker]

    def __init__(self, target: Optional[Callable[..., object]] = None,
                 workers: Union[int, str] = _FROM_SETTINGS,  # type: ignore[assignment]
                 *, args: Iterable[Any] = (), kwargs: Optional[Mapping[str, Any]] = None,
                 settings: Optional[Settings] = None, **options: Any) -> None:
        start_empty = workers == 0 and target is None and not isinstance(workers, bool)
        if workers is not _FROM_SETTINGS and not start_empty:
            options["workers"] = workers
        if settings is None:
            settings = Settings(**options)
        elif options:
            settings = settings.replace(**options)
        self.settings = settings
        self.size = 0 if start_empty else parse_workers(settings.workers)
        self.target = target
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.policy = settings.policy
        self.name = settings.name or "fastfork"
        self.started_at = time.monotonic()
        self.pid = os.getpid()
        self.exit_code = EXIT_OK
        self.stopping = False
        self.workers = {}                 # id -> Worker, alive or not yet reaped
        self.backend = backend.default() if settings.pure is None else backend.load(settings.pure)
        self.implementation = self.backend.name
        self.dispatcher = None            # created by _ensure_started
        self.listeners = Listeners(settings.policy, settings.defer_accept)
        self.crash_loop = backoff.CrashLoop(settings.min_uptime, settings.max_restarts,
                                            settings.backoff_base, settings.backoff_max)
        self.replacements = replacement.Replacements(settings.ready_timeout,
                                                     settings.wait_ready)
        self._credentials = resolve_credentials(settings.user, settings.group)
        self._control_server = None
        self._endpoints = []              # /livez, /readyz, /metrics (endpoint.py)
        self._restarts = {}               # index -> re-forks at that index
        self.restarts_by_cause = collections.Counter()   # (index, cause) -> re-forks
        self._stop_at = None              # SIGTERM with --shutdown-delay: drain from then
        self._next_check_at = 0.0
        self._running_at = 0.0                 # the loop's last noted turn (_note_running)
        self._governor: Optional[priority.Governor] = None   # --primary-sched auto
        self._handlers = {name: [] for name in EVENTS}
        self._next_id = 1
        self._signals = SignalQueue()
        self._wake_r = self._wake_w = -1
        self._wake_lock = threading.Lock()
        self._stop_deadline = None
        self._by_control_fd = {}
        self._by_slot = {}
        self._pauses_seen = 0
        self._pause_check_at = 0.0

    # -- events -----------------------------------------------------------------
    def on(self, event: str, callback: _Callback) -> _Callback:
        """Subscribe to a lifecycle event (Node's names); returns ``callback``.

        fork(worker), online(worker), listening(worker, address),
        ready(worker), message(worker, data), disconnect(worker),
        exit(worker, code, signal); and gunicorn's moments: prefork(worker)
        before its fork, reload() on SIGHUP, resize(new, old) on SIGTTIN/SIGTTOU;
        loaded(worker, kind, error) when a worker says it loaded its app
        (``WorkerRuntime.loaded``: ``fastfork run`` without --preload).
        """
        if event not in self._handlers:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        self._handlers[event].append(callback)
        return callback

    def emit(self, event: str, *args: Any) -> None:
        for callback in self._handlers[event]:
            try:
                callback(*args)
            except Exception:
                log.exception("%s handler %r raised", event, callback)

    # -- public control -----------------------------------------------------------
    def fork(self) -> Worker:
        """Start one more worker now (Node's ``cluster.fork()``); returns it."""
        self._ensure_started()
        self.size += 1
        return self.spawn_worker(self._free_index())

    def set_workers(self, count: Union[int, str]) -> None:
        """Scale to ``count`` workers: new ones are forked, extra ones stopped gracefully."""
        self.size = parse_workers(count)
        self.manage_workers()

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does).  Safe from any thread,
        also while or after ``run()`` returns."""
        self._post(signal.SIGTERM)

    def request_reload(self) -> None:
        """Begin a rolling reload (what SIGHUP does), from any thread: ``reload``
        runs in the primary's loop, which this wakes."""
        self._post(signal.SIGHUP)

    def _post(self, signum):
        self._signals.push(signum)
        # Under the lock, so that a stop from another thread never writes to
        # a wake-up fd that run() has just closed (or whose number was reused).
        with self._wake_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"\0")
                except BlockingIOError:
                    pass

    def alive_workers(self) -> List[Worker]:
        return [w for w in self.workers.values() if not w.is_dead()]

    def bind(self, address: Address, backlog: int = DEFAULT_BACKLOG) -> str:
        """Bind ``address`` in the primary now, so a bad address or a port in use
        fails before any worker starts; workers that listen on it share it.
        ``fd://N`` serves the listening socket already open at fd N (uvicorn's
        ``--fd``).  Returns the address as bound (the real port for port 0)."""
        self._ensure_started()
        fd = fd_of(address)
        if fd is not None:
            address = self.listeners.adopt(fd)
        family, sockaddr = parse_address(address)
        return self.listeners.get(family, sockaddr, backlog, self.dispatcher).display

    def inherited_addresses(self) -> List[str]:
        """The addresses of the sockets systemd passed (socket activation)."""
        return self.listeners.inherited_addresses()

    def open_control_socket(self, path: str) -> str:
        """Serve ``fastfork status`` on the Unix socket ``path`` (mode 0600).

        Raises OSError naming the path when it cannot (another primary owns it).
        """
        from ..operations.status_socket import StatusServer
        self._ensure_started()
        if self._control_server is not None:
            self._control_server.close()
        self._control_server = StatusServer(path, {"status": self.status},
                                             self.dispatcher.watch, self.dispatcher.unwatch)
        return self._control_server.path

    def open_endpoints(self) -> List[str]:
        """Serve ``settings.metrics`` and ``settings.health`` now (``run`` does it too):
        a port in use or a missing prometheus_client fails here, before any fork."""
        self._ensure_started()
        if self._endpoints:
            return self.endpoint_addresses()
        wanted = []
        if self.settings.metrics:
            wanted.append((self.settings.metrics, metrics.registry_for(self)))
        if self.settings.health:
            wanted.append((self.settings.health, None))
        try:
            for address, registry in wanted:
                self._endpoints.append(Endpoint(address, self.readiness, registry,
                                                self.dispatcher.watch, self.dispatcher.unwatch))
        except BaseException:
            self._close_endpoints()
            raise
        for endpoint in self._endpoints:
            log.info("serving %s on http://%s", ", ".join(endpoint.paths), endpoint.address)
        return self.endpoint_addresses()

    def _close_endpoints(self, unwatch=True):
        for endpoint in self._endpoints:
            endpoint.close(unwatch=unwatch)
        self._endpoints = []

    def readiness(self) -> Tuple[bool, str]:
        """``(ready, reason)``: what ``/readyz`` answers (200 or 503, and why)."""
        return slots.readiness(self)

    def degraded(self):
        """The wanted slots no worker serves (``slots.degraded``: for the metrics)."""
        return slots.degraded(self)

    def crash_loops(self):
        """index -> quick deaths in a row, for the slots in a crash loop."""
        return slots.crash_loops(self)

    def note_restart(self, worker: Worker, cause: str) -> None:
        """Count that ``worker``'s index is forked again, and why (for the metrics)."""
        self.restarts_by_cause[(worker.index, cause)] += 1

    def status(self) -> Dict[str, Any]:
        """A snapshot of the primary and its workers (what ``fastfork status`` shows)."""
        return _status(self)

    def close(self) -> None:
        """Give back everything ``bind``/``open_*`` took, without running (after an
        error before ``run``); ``run`` does this itself when it returns."""
        self._teardown()

    def endpoint_addresses(self) -> List[str]:
        return [e.address for e in self._endpoints]

    def restarts_total(self) -> int:
        return sum(self._restarts.values())

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> int:
        """Fork the workers and run the primary until shutdown; returns the exit code."""
        self._ensure_started()
        self.open_endpoints()
        self._signals.install(self._wake_w)
        if self.policy in DISPATCHED and priority.adjustable():
            if self.settings.primary_sched == "batch":
                priority.lower()
            elif self.settings.primary_sched == "auto":
                self._governor = priority.Governor(time.monotonic(), usable_cpus())
        try:
            self.manage_workers()
            self._running_at = time.monotonic()
            while True:
                # poll() accepts and dispatches inside until a control
                # message, a signal or the next deadline needs this loop, so
                # under load the primary spends no Python per connection.
                timeout_ms = self._poll_timeout_ms()
                self._note_running()
                fds = self.dispatcher.poll(timeout_ms)
                self._note_running(timeout_ms / 1000)
                for fd in fds:
                    if fd == self._wake_r:
                        self._drain_wakeup()
                    elif fd in self._by_control_fd:
                        messages.read_control(self, self._by_control_fd[fd])
                    else:
                        self._serve_request(fd)
                for slot in self.dispatcher.pop_closed():
                    worker = self._by_slot.get(slot)
                    if worker is not None and not worker.stop_requested:
                        self._lost_data_channel(worker)
                for server in self._request_servers():
                    server.expire()           # idle clients, unread answers
                self.handle_signals()
                self.report_pauses()
                self.govern_priority()
                self.reap_workers()
                self.murder_workers()
                if self._stop_at is not None and time.monotonic() >= self._stop_at:
                    self.begin_shutdown(f"SIGTERM, after a {self.settings.shutdown_delay:g}s "
                                        f"shutdown delay")
                if self.stopping:
                    if not self.workers:
                        break
                else:
                    self._note_running()
                    self.check_workers()
                    self.advance_replacement()
                    self.manage_workers()
        finally:
            self._teardown()
        log.info("primary %d exiting with code %d", self.pid, self.exit_code)
        return self.exit_code

    def _note_running(self, may_have_waited=0.0):
        """The loop is here, ``may_have_waited`` s (its poll's timeout) or less
        after it was last noted: more than that, and the primary did not run
        meanwhile, which is no worker's silence (health, rule 5).  Noted around
        the poll and just before the workers are judged, so that a pause
        anywhere in the loop (SIGSTOP lands where it lands) is seen first."""
        now = time.monotonic()
        late = now - self._running_at - may_have_waited
        self._running_at = now
        if health.excuse_pause(self.workers.values(), late):
            log.warning("the primary did not run for %.1fs (stopped, or starved of CPU): "
                        "its workers' heartbeat clocks start again", late)

    def _request_servers(self):
        """The status socket and the endpoints (``oneshot`` servers)."""
        return ([self._control_server] if self._control_server is not None else []) \
            + self._endpoints

    def _serve_request(self, fd):
        for server in self._request_servers():
            if server.handle(fd):
                return

    def _ensure_started(self):
        if self.dispatcher is not None:
            return
        if os.getpid() != self.pid:
            raise RuntimeError("a Cluster cannot be used in a process forked from its primary")
        s = self.settings
        # Under none/reuseport the dispatcher only watches fds: any scheduler does.
        self.dispatcher = self.backend.dispatcher.Dispatcher(
            s.window, s.batch_max, policy=s.policy if s.policy in DISPATCHED else "rr",
            worker_connections=s.worker_connections, stall_ms=s.stall_ms)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.dispatcher.watch(self._wake_r)
        log.info("primary %d started (policy %s, %s dispatcher, window %d)",
                 self.pid, self.policy, self.implementation, self.settings.window)
        if self.settings.control_socket:
            self.open_control_socket(self.settings.control_socket)
        if self.settings.metrics:
            metrics.check_available()

    def _poll_timeout_ms(self):
        now = time.monotonic()
        deadlines = [now + 1.0]
        next_spawn = max(now, self.crash_loop.spawn_at())
        if not self.stopping:
            deadlines.extend(self.crash_loop.spawn_at(index) for index in slots.missing(self))
        deadlines.extend(w.kill_at for w in self.workers.values() if w.kill_at is not None)
        if self._stop_at is not None:
            deadlines.append(self._stop_at)
        if self._checks_enabled():
            deadlines.append(self._next_check_at)
        if self._governor is not None:
            deadlines.append(self._governor.next_at)
        # A oneshot client's deadline: waking for it is what closes an idle one.
        deadlines.extend(d for d in (s.next_deadline() for s in self._request_servers())
                         if d is not None)
        if self.replacements.current is not None:
            deadlines.append(self.replacements.current.deadline)
        elif self.replacements.queue:
            deadlines.append(next_spawn)
        return max(0, int((min(deadlines) - now) * 1000) + 1)

    def _checks_enabled(self):
        s = self.settings
        return bool(s.timeout or s.max_requests or s.max_memory)

    def govern_priority(self):
        """--primary-sched auto: yield to the workers while they are behind."""
        governor, now = self._governor, time.monotonic()
        if governor is None or now < governor.next_at:
            return
        live = [w for w in self.workers.values() if w.slot is not None and not w.is_dead()]
        change = governor.sample(now, sum(w.queued() for w in live), len(live),
                                 self.dispatcher.accepted,
                                 sum(w.cpu_seconds() or 0.0 for w in live))
        if change is True and not priority.lower():
            self._governor = None           # it could not: said once, not tried again
        elif change is False:
            priority.restore()

    def report_pauses(self):
        """Log accept() pauses (EMFILE and friends) at most once per PAUSE_LOG_INTERVAL."""
        now = time.monotonic()
        if now < self._pause_check_at:
            return
        self._pause_check_at = now + PAUSE_LOG_INTERVAL
        stats = self.dispatcher.stats()
        new = stats["pauses"] - self._pauses_seen
        if new > 0:
            self._pauses_seen = stats["pauses"]
            code = stats["last_pause_errno"]
            log.warning("accept paused: %s (%d times in the last interval of %.0fs)",
                        errno.errorcode.get(code, str(code)), new, PAUSE_LOG_INTERVAL)

    def _drain_wakeup(self):
        try:
            while True:
                data = os.read(self._wake_r, 4096)
                if not data:
                    break
                self._signals.arrived(data)       # one byte per signal delivered
        except BlockingIOError:
            pass

    # -- signals ----------------------------------------------------------------------
    def handle_signals(self):
        for signum in self._signals.pop_all():
            handler = getattr(self, "handle_" + signal.Signals(signum).name.lower(), None)
            if handler is not None:
                handler()

    def handle_sigchld(self):
        pass  # reap_workers runs on every turn of the loop

    def handle_sigterm(self):
        if self.stopping:
            self.force_stop()
        elif self._stop_at is not None:
            self.begin_shutdown("a second SIGTERM during the shutdown delay")
        elif self.settings.shutdown_delay > 0:
            # Keep serving while /readyz says 503, so that a load balancer
            # stops sending before the listeners close (a preStop sleep).
            self._stop_at = time.monotonic() + self.settings.shutdown_delay
            log.info("SIGTERM: not ready any more; serving %gs more before draining",
                     self.settings.shutdown_delay)
        else:
            self.begin_shutdown("SIGTERM")

    def handle_sigint(self):
        if self.stopping:
            log.warning("second SIGINT: killing workers now")
            self.force_stop()
        else:
            self.begin_shutdown("SIGINT")

    def handle_sigquit(self):
        self.force_stop()

    def handle_sigttin(self):
        self.size += 1
        log.info("SIGTTIN: scaling up to %d workers", self.size)
        self.emit("resize", self.size, self.size - 1)

    def handle_sigttou(self):
        if self.size > 1:
            self.size -= 1
            log.info("SIGTTOU: scaling down to %d workers", self.size)
            self.emit("resize", self.size, self.size + 1)

    def handle_sighup(self):
        self.reload()

    # -- workers ----------------------------------------------------------------------
    def spawn_worker(self, index):
        """Fork one worker for ``index``; returns its handle."""
        worker = Worker(self, self._next_id, index)
        self._next_id += 1
        worker.restarts = self._restarts[index] = self._restarts.get(index, -1) + 1
        s = self.settings
        if s.max_requests:
            # The jitter keeps workers started together from recycling together.
            worker.request_limit = s.max_requests + random.randint(0, s.max_requests_jitter)
        data_primary, data_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ctl_primary, ctl_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        credit_fd = -1
        if self.backend.dispatcher.CREDIT_SIZE:
            # Credit comes back through this page, not in ACK messages.
            credit_fd = credit_page.create(self.backend.dispatcher.CREDIT_SIZE)
        spec = boot.WorkerSpec(worker.id, index, self.policy, self.backend.receiver,
                               self.target, self.args, self.kwargs, s.argv, s.env,
                               self._credentials, credit_fd)
        self.emit("prefork", worker)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except BaseException:
            if credit_fd >= 0:
                os.close(credit_fd)
            raise
        if pid == 0:
            boot.run_forked(self.pid, spec, data_worker, ctl_worker,
                            lambda: self._shed_in_child((data_primary, ctl_primary)))
        # The worker's end of the data channel stays open here too, for the
        # worker's whole life: what it has not read yet stays queued there
        # (holding its connections) even if it dies, and the dispatcher reads
        # it back.  That is what lets the dispatcher close its own copy of
        # each connection as soon as it is sent.
        ctl_worker.close()
        worker.pid = pid
        worker.data_sock = data_primary
        worker.data_peer = data_worker
        try:
            worker.slot = self.dispatcher.add_worker(data_primary.fileno(),
                                                     data_worker.fileno(), credit_fd)
        finally:
            if credit_fd >= 0:
                os.close(credit_fd)         # mapped by the dispatcher, and in the child
        ctl_primary.setblocking(False)
        worker.control = ControlChannel(ctl_primary)
        try:
            # window: how much fd room the worker wants before it asks for more
            # connections after running out of fds (WorkerRuntime.window).
            worker.control.send({"t": "config", "window": s.window,
                                 "heartbeat": health.heartbeat_interval(s.timeout),
                                 "stall_ms": s.stall_ms, "stall_log_ms": s.stall_log_ms})
        except OSError:
            pass          # it died already: reap_workers will say so
        self.dispatcher.watch(ctl_primary.fileno())
        self._by_control_fd[ctl_primary.fileno()] = worker
        self._by_slot[worker.slot] = worker
        self.workers[worker.id] = worker
        log.info("forked %s (pid %d, index %d)", worker.label, pid, index)
        self.emit("fork", worker)
        return worker

    def _shed_in_child(self, primary_ends):
        # A forked worker must not keep the primary's copies of connections or
        # sockets alive: a connection's fd held here would keep it open after
        # the primary closed its own copy.
        priority.restore()                  # a worker preempts as any process does
        for sock in primary_ends:
            sock.close()
        self.dispatcher.close()             # and with it the other workers' credit pages
        for other in self.workers.values():
            for sock in (other.data_sock, other.data_peer, other.control and other.control.sock):
                if sock is not None:
                    sock.close()
        self.listeners.close_in_child()
        if self._control_server is not None:
            self._control_server.close(unlink=False)   # the path is the primary's
        self._close_endpoints(unwatch=False)
        os.close(self._wake_r)
        os.close(self._wake_w)
        reset_in_child()

    def reap_workers(self):
        """Collect every worker that exited; emit ``exit`` and count quick deaths."""
        for worker in list(self.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid == 0:
                continue
            code = os.waitstatus_to_exitcode(status)
            worker.exit_code, worker.exit_signal = (code, None) if code >= 0 else (None, -code)
            self.forget_worker(worker)
            how = (f"code {worker.exit_code}" if worker.exit_signal is None
                   else f"signal {signal.Signals(worker.exit_signal).name}")
            if worker.exit_code == boot.EXIT_EXEC_FAILED and self.target is None:
                how += " (its program could not be started)"
            if worker.stop_requested:
                log.info("%s (pid %d) exited with %s", worker.label, worker.pid, how)
            elif worker.replaces is not None:
                # Not a crash loop: the old worker keeps serving; the replacement aborts.
                log.error("%s (pid %d), replacing %s, exited with %s before it was ready",
                          worker.label, worker.pid, worker.replaces.label, how)
            else:
                log.warning("%s (pid %d) died unexpectedly with %s after %.2fs",
                            worker.label, worker.pid, how, worker.uptime)
                if self.settings.respawn and not self.stopping:
                    self.note_restart(worker, "crash")
                self.count_death(worker)
            self.emit("exit", worker, worker.exit_code, worker.exit_signal)

    def forget_control(self, worker):
        """Stop watching ``worker``'s control channel and close it."""
        fd = worker.control.fileno()
        self.dispatcher.unwatch(fd)
        self._by_control_fd.pop(fd, None)
        worker.control.close()
        worker.control = None

    def forget_worker(self, worker):
        """``worker`` was reaped: release its slot, channels and what it never took."""
        worker._dispatched_final = self.dispatcher.worker_stats(worker.slot)[0]
        worker.state = "dead"
        self.dispatcher.remove_worker(worker.slot)
        if worker.control is not None:
            self.forget_control(worker)
        worker.data_sock.close()
        worker.data_peer.close()
        self._by_slot.pop(worker.slot, None)
        del self.workers[worker.id]

    def count_death(self, worker):
        """An unexpected death: shrink (no respawn), or apply the crash-loop policy."""
        if self.stopping:
            return
        if not self.settings.respawn:
            self.size = max(0, self.size - 1)
            return
        serving = len(slots.serving_workers(self))
        now = time.monotonic()
        verdict, delay = self.crash_loop.died(worker.index, worker.uptime, now, serving)
        streak = self.crash_loop.streak(worker.index)
        if verdict == backoff.STOP:
            log.error("workers died %d times in a row within %.1fs of starting; "
                      "not re-forking (last: %s, index %d; no worker serves). "
                      "Fix the app and restart.", streak, self.settings.min_uptime,
                      worker.label, worker.index)
            self.exit_code = EXIT_CRASH_LOOP
            self.begin_shutdown("crash loop")
        elif verdict == backoff.DEGRADED:
            # Once loud, then quiet: a slot may loop for hours until a fix is deployed.
            logger = log.error if streak == self.settings.max_restarts else log.debug
            logger("index %d is in a crash loop (%d quick deaths in a row); %d other "
                   "workers keep serving; re-forking it every %.2fs until it starts",
                   worker.index, streak, serving, delay)
        elif verdict == backoff.WAIT:
            log.warning("re-forking in %.2fs (%d quick deaths in a row)", delay, streak)

    def _live_indices(self):
        return {w.index for w in self.workers.values() if not w.stop_requested}

    def _free_index(self):
        return scaling.free_index(self._live_indices())

    def manage_workers(self):
        """Fork missing workers (when respawn allows) and stop extra ones."""
        if self.stopping or self.dispatcher is None:
            return
        counted = [w for w in self.workers.values() if not w.stop_requested and not w.in_transit()]
        to_stop, missing = scaling.plan(counted, self.size)
        for worker in to_stop:
            self.stop_worker(worker)
        if not missing:
            return
        now = time.monotonic()
        # Each index backs off on its own (backoff rule 2): one in a crash loop
        # does not hold back the others.
        for index in scaling.free_indices(self._live_indices(), missing):
            if not self.crash_loop.may_spawn(now, index):
                continue
            try:
                self.spawn_worker(index)
            except OSError as exc:
                self._spawn_failed(exc)
                return

    def _lost_data_channel(self, worker):
        # Broken (garbage acks, or a send that failed): the dispatcher sends it nothing
        # more, so a live one would idle forever; kill it and respawn.
        if worker.kill_at is None:
            worker.kill_at = time.monotonic() + DATA_CHANNEL_GRACE
            log.warning("%s (pid %d) closed or broke its data channel; killing it "
                        "unless it exits within %.1fs", worker.label, worker.pid,
                        DATA_CHANNEL_GRACE)

    def _spawn_failed(self, exc):
        # Out of fds (EMFILE at the fd limit) or processes (EAGAIN): the
        # workers still alive keep serving; dying here would take them down.
        delay = self.crash_loop.hold(time.monotonic())
        log.error("cannot start a worker: %s; trying again in %.1fs", exc, delay)

    def stop_worker(self, worker, timeout=None):
        """Retire ``worker``: no new connections, finish open ones, SIGKILL after ``timeout``."""
        if worker.stop_requested or worker.is_dead():
            return
        timeout = self.settings.graceful_timeout if timeout is None else float(timeout)
        worker.stop_requested = True
        worker.state = "stopping"
        worker.kill_at = time.monotonic() + timeout
        self.dispatcher.retire_worker(worker.slot)
        try:
            if worker.control is None:
                raise BrokenPipeError("control channel closed")
            worker.control.send({"t": "stop", "timeout": timeout})
        except OSError:
            worker.kill(signal.SIGKILL)
        log.info("stopping %s (pid %d)", worker.label, worker.pid)

    def murder_workers(self):
        """SIGKILL workers that outlived their graceful-stop deadline."""
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.kill_at is not None and now >= worker.kill_at:
                log.warning("%s (pid %d) did not stop in time; killing it", worker.label, worker.pid)
                worker.kill(signal.SIGKILL)
                worker.kill_at = None

    # -- replacing workers: reload, recycling, hangs ------------------------------------
    def reload(self) -> None:
        """Replace every worker, one at a time, new before old (SIGHUP).

        The listening sockets stay open throughout, so no client is refused.
        """
        workers = sorted((w for w in self.workers.values() if not w.stop_requested),
                         key=lambda w: w.index)
        self.emit("reload")
        log.info("reload: replacing %d workers one at a time", len(workers))
        for worker in workers:
            self.replace_worker(worker, "reload")

    def replace_worker(self, worker, reason):
        """Queue ``worker`` to be replaced new-before-old; one replacement runs at a time."""
        self.replacements.request(worker, reason)

    def advance_replacement(self):
        """Carry out what the replacement policy decides (see ``replacement``)."""
        now = time.monotonic()
        for action in self.replacements.step(now, self.crash_loop.may_spawn(now)):
            kind = action[0]
            if kind == replacement.READY:
                current = action[1]
                log.info("%s (pid %d) is ready; stopping %s (pid %d)", current.new.label,
                         current.new.pid, current.old.label, current.old.pid)
                self.stop_worker(current.old)
            elif kind == replacement.DONE:
                current = action[1]
                log.info("replaced %s by %s (%s)", current.old.label, current.new.label,
                         current.reason)
            elif kind == replacement.ABORT:
                _, current, why, dropped = action
                self.stop_worker(current.new)
                log.error("replacing %s (%s) failed: %s; %s keeps serving",
                          current.old.label, current.reason, why, current.old.label)
                if dropped:
                    log.error("reload stopped: %d more workers keep their old code", dropped)
                # Not at once: max-requests/max-memory would re-queue it at the next check.
                self.crash_loop.hold(now)
            else:
                _, old, reason = action
                log.info("replacing %s (pid %d, index %d): %s", old.label, old.pid, old.index,
                         reason)
                self.note_restart(old, reason.split(" ", 1)[0])
                try:
                    new = self.spawn_worker(old.index)
                except OSError as exc:
                    self.replacements.retry(old, reason)
                    self._spawn_failed(exc)
                    return
                self.replacements.started(old, new, reason, now)

    def check_workers(self):
        """Replace workers that hang, reached max-requests, or outgrew max-memory."""
        now = time.monotonic()
        if not self._checks_enabled() or now < self._next_check_at:
            return
        s = self.settings
        self._next_check_at = now + health.heartbeat_interval(s.timeout)
        for worker in list(self.workers.values()):
            if worker.stop_requested or worker.is_dead():
                continue
            found = health.verdict(worker, now, s.timeout, s.max_memory)
            if found is None:
                continue
            if found[0] == health.ABORT:
                self.abort_worker(worker, found[1])
            else:
                self.replace_worker(worker, found[1])

    def abort_worker(self, worker, silent):
        """A worker whose loop stopped beating: SIGABRT now (so faulthandler can
        print where it is stuck), SIGKILL after ABORT_GRACE; its replacement
        is forked at once and its unacknowledged connections go to others."""
        log.error("%s (pid %d) sent no heartbeat for %.1fs (timeout %gs): aborting it",
                  worker.label, worker.pid, silent, self.settings.timeout)
        worker.stop_requested = True
        worker.state = "hung"
        worker.kill_at = time.monotonic() + ABORT_GRACE
        self.dispatcher.retire_worker(worker.slot)
        worker.kill(signal.SIGABRT)
        self.note_restart(worker, "hang")

    # -- shutdown -------------------------------------------------------------------------
    def begin_shutdown(self, why):
        """Stop accepting, ask every worker to finish, and leave the loop when all are gone."""
        if self.stopping:
            return
        self.stopping = True
        self.replacements.clear()
        log.info("shutting down (%s): draining %d workers, timeout %.1fs",
                 why, len(self.alive_workers()), self.settings.graceful_timeout)
        self.listeners.close(self.dispatcher)
        for worker in list(self.workers.values()):
            self.stop_worker(worker)

    def force_stop(self):
        self.stopping = True
        if self.exit_code == EXIT_OK:
            self.exit_code = EXIT_FORCED
        self.listeners.close(self.dispatcher)
        for worker in self.workers.values():
            worker.stop_requested = True
            worker.kill(signal.SIGKILL)

    def _teardown(self):
        # Whatever happened (even an exception in the loop), no child outlives
        # the primary and nothing stays open.
        for worker in list(self.workers.values()):
            worker.stop_requested = True
            worker.kill(signal.SIGKILL)
        for worker in list(self.workers.values()):
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
            worker.exit_signal = worker.exit_signal or signal.SIGKILL
            self.forget_worker(worker)
        if self.dispatcher is not None:
            self.listeners.close_all(self.dispatcher)
        if self._control_server is not None:
            self._control_server.close()
            self._control_server = None
        self._close_endpoints()
        self._signals.restore()
        priority.restore()
        if self.dispatcher is not None:
            self.dispatcher.close()
            self.dispatcher = None
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1


__all__ = ["Cluster", "Worker", "EVENTS", "POLICIES", "EXIT_OK", "EXIT_FORCED",
           "EXIT_CRASH_LOOP"]
