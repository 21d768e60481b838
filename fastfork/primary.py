"""The primary process: forks workers, owns the listening sockets, keeps workers alive.

Read it like gunicorn's arbiter: signal handlers only queue the signal; the
loop in ``run`` waits in the dispatcher (which accepts and hands out
connections in the same wait), then acts on control messages, queued signals,
dead children and the worker count, each in one verb-named method.
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
import traceback

from . import _impl, _sys
from .activation import inherited_sockets
from .privileges import drop_privileges, resolve_credentials
from .addresses import DEFAULT_BACKLOG, bind_listener, describe, parse_address
from .control import ControlChannel, MessageError
from .cpus import parse_workers
from .wire import DEFAULT_BATCH_MAX, DEFAULT_WINDOW

log = logging.getLogger("fastfork")

# Exit codes of the primary that mean something.
EXIT_OK = 0
EXIT_FORCED = 1          # a second SIGINT/SIGTERM: workers were killed, not drained
EXIT_CRASH_LOOP = 3      # workers kept dying right after start: re-forking stopped

# Exit code of a worker whose code could not start (import error, exec failure).
WORKER_EXEC_FAILED = 127

# Out of fds or memory, the dispatcher pauses accept() many times a second:
# the log says so at most once per interval, not once per refused connection.
PAUSE_LOG_INTERVAL = 1.0
# A worker whose data channel closed or broke is killed this long after,
# unless it exits by itself first (a dying worker closes it on the way out).
DATA_CHANNEL_GRACE = 1.0

POLICIES = ("rr", "none", "reuseport")
EVENTS = ("fork", "online", "listening", "ready", "message", "disconnect", "exit")

# Signals the primary handles; the worker resets them after fork.
HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
                   signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)

# A worker beats at most this often; more often when --timeout is short, so
# that one late beat is never taken for a hang.
HEARTBEAT_MAX_INTERVAL = 1.0
# A hung worker gets SIGABRT (faulthandler prints where it is stuck), then
# SIGKILL if it is still there this long after.
ABORT_GRACE = 5.0

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# Environment of a worker started by exec (the Node form).
ENV_CHANNELS = "FASTFORK_CHANNELS"       # "data_fd,control_fd": marks a worker
ENV_WORKER_ID = "FASTFORK_WORKER_ID"
ENV_WORKER_INDEX = "FASTFORK_WORKER_INDEX"
ENV_POLICY = "FASTFORK_POLICY"


class Worker:
    """The primary's handle on one worker process (Node's ``cluster.workers[id]``)."""

    def __init__(self, cluster, worker_id, index):
        self._cluster = cluster
        self.id = worker_id          # unique, never reused (Node's worker.id)
        self.index = index           # 0..N-1, reused by a replacement (PM2's NODE_APP_INSTANCE)
        self.pid = None
        self.state = "starting"      # starting, online, listening, stopping, dead
        self.started_at = time.monotonic()
        self.addresses = []          # what it listens on
        self.ready = False
        self.exit_code = None
        self.exit_signal = None
        self.stop_requested = False
        self.kill_at = None          # monotonic deadline for SIGKILL while stopping
        self.slot = None
        self.data_sock = None
        self.control = None
        self.last_heartbeat = self.started_at
        self.heartbeats = 0          # hang detection starts with the first beat
        self.open_connections = None # as last reported by the worker's loop
        self.served = None           # connections its loop has taken, as reported
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
        return self._cluster._dispatcher.worker_stats(self.slot)[0]

    def handled(self):
        """Connections this worker got: dispatched by the primary (``rr``) or,
        when it accepts by itself (``none``/``reuseport``), as its loop reports."""
        return max(self.dispatched(), self.served or 0)

    def rss(self):
        """Resident memory in bytes (from /proc), or None once it is gone."""
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return None

    def __repr__(self):
        return f"<Worker id={self.id} index={self.index} pid={self.pid} state={self.state}>"


class _SharedListener:
    """A listening address owned by the primary, shared by the workers that asked for it."""

    inherited = False        # passed by systemd: never unlinked by us

    def __init__(self, family, sockaddr, sock, lid):
        self.family = family
        self.sock = sock
        self.lid = lid
        bound = sock.getsockname()
        self.sockaddr = bound if family == socket.AF_UNIX else bound[:2]
        self.display = describe(family, self.sockaddr)


class _Replacement:
    """One worker being replaced new-before-old (reload, max-requests, max-memory)."""

    def __init__(self, old, new, reason, deadline):
        self.old = old
        self.new = new
        self.reason = reason
        self.deadline = deadline     # the new worker must be ready by then


class Cluster:
    """The primary: forks ``workers`` processes and dispatches connections to them.

    Two ways to start workers:

    * ``target`` given (the function form): each worker is an ``os.fork()`` of
      this process that calls ``target(*args, **kwargs)``; whatever was imported
      before is shared copy-on-write.
    * no ``target`` (the Node form): each worker re-runs this program
      (``sys.orig_argv``) with ``FASTFORK_CHANNELS`` set, so the same file sees
      ``fastfork.is_worker`` and serves.

    ``run()`` must be called from the main thread; it returns the exit code.
    """

    def __init__(self, target=None, workers="max", *, args=(), kwargs=None,
                 policy="rr", window=DEFAULT_WINDOW, batch_max=DEFAULT_BATCH_MAX,
                 respawn=True, graceful_timeout=30.0, min_uptime=1.0,
                 max_restarts=10, backoff_base=0.1, backoff_max=2.0,
                 argv=None, env=None, pure=None, timeout=None, max_requests=0,
                 max_requests_jitter=0, max_memory=0, wait_ready=False, ready_timeout=30.0,
                 user=None, group=None, control_socket=None, name=None):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.size = 0 if workers == 0 and target is None else parse_workers(workers)
        self.target = target
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.policy = policy
        self.window = window
        self.batch_max = batch_max
        self.respawn = respawn
        self.graceful_timeout = float(graceful_timeout)
        self.min_uptime = float(min_uptime)
        self.max_restarts = int(max_restarts)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.argv = list(argv) if argv else None
        self.env = dict(env or {})
        self.timeout = float(timeout) if timeout else None     # hang detection; None: off
        self.max_requests = int(max_requests)
        self.max_requests_jitter = int(max_requests_jitter)
        self.max_memory = int(max_memory)                      # bytes of RSS; 0: no limit
        self.wait_ready = bool(wait_ready)   # a replacement is ready at fastfork.ready(), not at listen
        self.ready_timeout = float(ready_timeout)
        self.name = name or "fastfork"
        self.started_at = time.monotonic()
        self._uid, self._gid, self._username = resolve_credentials(user, group)
        self._inherited = inherited_sockets()   # systemd: (family, sockaddr) -> socket
        self._control_path = control_socket
        self._control_server = None
        self._replace_queue = collections.deque()   # (worker, reason), one at a time
        self._replacement = None                    # the _Replacement in progress
        self._restarts = {}                         # index -> re-forks at that index
        self._next_check_at = 0.0
        self.workers = {}                 # id -> Worker, alive or not yet reaped
        self.pid = os.getpid()
        self.exit_code = EXIT_OK
        dispatch_mod = _impl.dispatch if pure is None else _impl.load(pure)[0]
        self.implementation = dispatch_mod.IMPLEMENTATION
        self._dispatch_mod = dispatch_mod
        self._dispatcher = None
        self._listeners = {}              # (family, sockaddr as asked) -> _SharedListener
        self._reserved = []               # reuseport: bound, not listening, holds the port
        self._handlers = {name: [] for name in EVENTS}
        self._next_id = 1
        self._signals = []
        self._wake_r = self._wake_w = -1
        self._wake_lock = threading.Lock()
        self._stopping = False
        self._stop_deadline = None
        self._quick_deaths = 0
        self._next_spawn_at = 0.0
        self._saved_handlers = {}
        self._by_control_fd = {}
        self._by_slot = {}
        self._pauses_seen = 0
        self._pause_check_at = 0.0

    # -- events -----------------------------------------------------------------
    def on(self, event, callback):
        """Subscribe to a lifecycle event (Node's names); returns ``callback``.

        fork(worker), online(worker), listening(worker, address),
        ready(worker), message(worker, data), disconnect(worker),
        exit(worker, code, signal).
        """
        if event not in self._handlers:
            raise ValueError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
        self._handlers[event].append(callback)
        return callback

    def emit(self, event, *args):
        for callback in self._handlers[event]:
            try:
                callback(*args)
            except Exception:
                log.exception("%s handler %r raised", event, callback)

    # -- public control -----------------------------------------------------------
    def fork(self):
        """Start one more worker now (Node's ``cluster.fork()``); returns it."""
        self._ensure_started()
        self.size += 1
        return self.spawn_worker(self._free_index())

    def set_workers(self, count):
        """Scale to ``count`` workers: new ones are forked, extra ones stopped gracefully."""
        self.size = parse_workers(count)
        self.manage_workers()

    def stop(self):
        """Begin a graceful shutdown (what SIGTERM does).  Safe from any thread,
        also while or after ``run()`` returns."""
        self._signals.append(signal.SIGTERM)
        # Under the lock, so that a stop from another thread never writes to
        # a wake-up fd that run() has just closed (or whose number was reused).
        with self._wake_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"\0")
                except BlockingIOError:
                    pass

    def alive_workers(self):
        return [w for w in self.workers.values() if not w.is_dead()]

    def bind(self, address, backlog=DEFAULT_BACKLOG):
        """Bind ``address`` in the primary now, so a bad address or a port in use
        fails before any worker starts; workers that listen on it share it.
        Returns the address as bound (the real port for port 0)."""
        self._ensure_started()
        family, sockaddr = parse_address(address)
        return self._shared_listener(family, sockaddr, backlog).display

    def inherited_addresses(self):
        """The addresses of the sockets systemd passed (socket activation)."""
        return [describe(family, sockaddr) for family, sockaddr in self._inherited]

    def open_control_socket(self, path):
        """Serve ``fastfork status`` on the Unix socket ``path`` (mode 0600).

        Raises OSError naming the path when it cannot (another primary owns it).
        """
        from .control_socket import ControlServer
        self._ensure_started()
        if self._control_server is not None:
            self._control_server.close()
        self._control_server = ControlServer(path, {"status": self.status},
                                             self._dispatcher.watch, self._dispatcher.unwatch)
        return self._control_server.path

    def status(self):
        """A snapshot of the primary and its workers (what ``fastfork status`` shows)."""
        workers = []
        for w in sorted(self.workers.values(), key=lambda w: (w.index, w.id)):
            workers.append({"id": w.id, "index": w.index, "pid": w.pid,
                            "uptime": round(w.uptime, 3), "restarts": w.restarts,
                            "dispatched": w.handled(), "open": w.open_connections,
                            "rss": w.rss(), "state": w.state})
        replacing = None
        if self._replacement is not None:
            r = self._replacement
            replacing = {"old": r.old.id, "new": r.new.id, "reason": r.reason}
        return {
            "primary": {"pid": self.pid, "name": self.name, "policy": self.policy,
                        "implementation": self.implementation, "size": self.size,
                        "uptime": round(time.monotonic() - self.started_at, 3),
                        "addresses": [s.display for s in self._listeners.values()],
                        "replacing": replacing, "queued": len(self._replace_queue),
                        "stopping": self._stopping},
            "workers": workers,
            "totals": {"workers": len(workers),
                       "restarts": sum(self._restarts.values()),
                       "dispatched": sum(w["dispatched"] for w in workers),
                       "open": sum(w["open"] or 0 for w in workers),
                       "rss": sum(w["rss"] or 0 for w in workers)},
        }

    # -- the loop ---------------------------------------------------------------------
    def run(self):
        """Fork the workers and run the primary until shutdown; returns the exit code."""
        self._ensure_started()
        self._install_signals()
        try:
            self.manage_workers()
            while True:
                # poll() accepts and dispatches inside until a control
                # message, a signal or the next deadline needs this loop, so
                # under load the primary spends no Python per connection.
                ready = self._dispatcher.poll(self._poll_timeout_ms())
                for fd in ready:
                    if fd == self._wake_r:
                        self._drain_wakeup()
                    else:
                        worker = self._by_control_fd.get(fd)
                        if worker is not None:
                            self.read_control(worker)
                        elif self._control_server is not None:
                            self._control_server.handle(fd)
                for slot in self._dispatcher.pop_closed():
                    worker = self._by_slot.get(slot)
                    if worker is not None and not worker.stop_requested:
                        self._lost_data_channel(worker)
                self.handle_signals()
                self.report_pauses()
                self.reap_workers()
                if self._stopping:
                    if not self.workers:
                        break
                    self.murder_workers()
                else:
                    self.murder_workers()
                    self.check_workers()
                    self.advance_replacement()
                    self.manage_workers()
        finally:
            self._teardown()
        log.info("primary %d exiting with code %d", self.pid, self.exit_code)
        return self.exit_code

    def _ensure_started(self):
        if self._dispatcher is not None:
            return
        if os.getpid() != self.pid:
            raise RuntimeError("a Cluster cannot be used in a process forked from its primary")
        self._dispatcher = self._dispatch_mod.Dispatcher(self.window, self.batch_max)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._dispatcher.watch(self._wake_r)
        log.info("primary %d started (policy %s, %s dispatcher, window %d)",
                 self.pid, self.policy, self.implementation, self.window)
        if self._control_path:
            self.open_control_socket(self._control_path)

    def _poll_timeout_ms(self):
        now = time.monotonic()
        deadlines = [now + 1.0]
        if not self._stopping and len(self._live_indices()) < self.size:
            deadlines.append(max(now, self._next_spawn_at))
        deadlines.extend(w.kill_at for w in self.workers.values() if w.kill_at is not None)
        if self._checks_enabled():
            deadlines.append(self._next_check_at)
        if self._replacement is not None:
            deadlines.append(self._replacement.deadline)
        elif self._replace_queue:
            deadlines.append(max(now, self._next_spawn_at))
        return max(0, int((min(deadlines) - now) * 1000) + 1)

    def _checks_enabled(self):
        return bool(self.timeout or self.max_requests or self.max_memory)

    def _heartbeat_interval(self):
        if self.timeout:
            return max(0.05, min(HEARTBEAT_MAX_INTERVAL, self.timeout / 4))
        return HEARTBEAT_MAX_INTERVAL

    def report_pauses(self):
        """Log accept() pauses (EMFILE and friends) at most once per PAUSE_LOG_INTERVAL."""
        now = time.monotonic()
        if now < self._pause_check_at:
            return
        self._pause_check_at = now + PAUSE_LOG_INTERVAL
        stats = self._dispatcher.stats()
        new = stats["pauses"] - self._pauses_seen
        if new > 0:
            self._pauses_seen = stats["pauses"]
            code = stats["last_pause_errno"]
            log.warning("accept paused: %s (%d times in the last interval of %.0fs)",
                        errno.errorcode.get(code, str(code)), new, PAUSE_LOG_INTERVAL)

    # -- signals ----------------------------------------------------------------------
    def _install_signals(self):
        def record(signum, frame):
            # Only record: the loop acts (set_wakeup_fd has already woken it).
            self._signals.append(signum)

        for sig in HANDLED_SIGNALS:
            self._saved_handlers[sig] = signal.signal(sig, record)
        self._saved_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _restore_signals(self):
        if not self._saved_handlers:
            return
        signal.set_wakeup_fd(self._saved_wakeup)
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._saved_handlers = {}

    def _drain_wakeup(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def handle_signals(self):
        while self._signals:
            signum = self._signals.pop(0)
            handler = getattr(self, "handle_" + signal.Signals(signum).name.lower(), None)
            if handler is not None:
                handler()

    def handle_sigchld(self):
        pass  # reap_workers runs on every turn of the loop

    def handle_sigterm(self):
        if self._stopping:
            self.force_stop()
        else:
            self.begin_shutdown("SIGTERM")

    def handle_sigint(self):
        if self._stopping:
            log.warning("second SIGINT: killing workers now")
            self.force_stop()
        else:
            self.begin_shutdown("SIGINT")

    def handle_sigquit(self):
        self.force_stop()

    def handle_sigttin(self):
        self.size += 1
        log.info("SIGTTIN: scaling up to %d workers", self.size)

    def handle_sigttou(self):
        if self.size > 1:
            self.size -= 1
            log.info("SIGTTOU: scaling down to %d workers", self.size)

    def handle_sighup(self):
        self.reload()

    # -- workers ----------------------------------------------------------------------
    def spawn_worker(self, index):
        """Fork one worker for ``index``; returns its handle."""
        worker = Worker(self, self._next_id, index)
        self._next_id += 1
        worker.restarts = self._restarts[index] = self._restarts.get(index, -1) + 1
        if self.max_requests:
            # The jitter keeps workers started together from recycling together.
            worker.request_limit = self.max_requests + random.randint(0, self.max_requests_jitter)
        data_primary, data_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ctl_primary, ctl_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become_worker(worker, data_worker, ctl_worker, (data_primary, ctl_primary))
        data_worker.close()
        ctl_worker.close()
        worker.pid = pid
        worker.data_sock = data_primary
        worker.slot = self._dispatcher.add_worker(data_primary.fileno())
        ctl_primary.setblocking(False)
        worker.control = ControlChannel(ctl_primary)
        try:
            worker.control.send({"t": "config", "heartbeat": self._heartbeat_interval()})
        except OSError:
            pass          # it died already: reap_workers will say so
        self._dispatcher.watch(ctl_primary.fileno())
        self._by_control_fd[ctl_primary.fileno()] = worker
        self._by_slot[worker.slot] = worker
        self.workers[worker.id] = worker
        log.info("forked %s (pid %d, index %d)", worker.label, pid, index)
        self.emit("fork", worker)
        return worker

    def _become_worker(self, worker, data_sock, ctl_sock, primary_ends):
        """In the child after fork: shed the primary's state, then exec or run target."""
        code = 1
        try:
            _sys.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != self.pid:
                os._exit(1)          # the primary died before prctl took effect
            self._close_primary_state(primary_ends)
            signal.set_wakeup_fd(-1)
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            # Ctrl-C reaches the whole process group; the primary coordinates
            # the shutdown, so workers must not die of KeyboardInterrupt first.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if self._uid is not None or self._gid is not None:
                drop_privileges(self._uid, self._gid, self._username)
                # Changing credentials clears the parent-death signal: set it again.
                _sys.set_parent_death_signal(signal.SIGKILL)
                if os.getppid() != self.pid:
                    os._exit(1)
            if self.target is None:
                self._exec_worker(worker, data_sock, ctl_sock)
            from . import worker as worker_side
            worker_side.start_runtime(data_sock.detach(), ctl_sock.detach(), worker.id,
                                      worker.index, self.policy, self._dispatch_mod)
            self.target(*self.args, **self.kwargs)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _close_primary_state(self, primary_ends):
        # A forked worker must not keep the primary's copies of connections or
        # sockets alive: a connection's fd held here would keep it open after
        # the primary closed its own copy.
        for sock in primary_ends:
            sock.close()
        self._dispatcher.close()
        for other in self.workers.values():
            for sock in (other.data_sock, other.control and other.control.sock):
                if sock is not None:
                    sock.close()
        for shared in self._listeners.values():
            shared.sock.close()
        for sock in self._reserved:
            sock.close()
        for sock in self._inherited.values():
            sock.close()
        if self._control_server is not None:
            self._control_server.close(unlink=False)   # the path is the primary's
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _exec_worker(self, worker, data_sock, ctl_sock):
        env = dict(os.environ)
        env.update(self.env)
        env[ENV_CHANNELS] = f"{data_sock.fileno()},{ctl_sock.fileno()}"
        env[ENV_WORKER_ID] = str(worker.id)
        env[ENV_WORKER_INDEX] = str(worker.index)
        env[ENV_POLICY] = self.policy
        os.set_inheritable(data_sock.fileno(), True)
        os.set_inheritable(ctl_sock.fileno(), True)
        argv = self.argv or [sys.executable] + list(getattr(sys, "orig_argv", sys.argv)[1:])
        try:
            os.execve(argv[0], argv, env)
        except OSError as exc:
            print(f"fastfork: cannot start worker: {argv[0]}: {exc}", file=sys.stderr)
            os._exit(WORKER_EXEC_FAILED)

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
            self._forget_worker(worker)
            how = (f"code {worker.exit_code}" if worker.exit_signal is None
                   else f"signal {signal.Signals(worker.exit_signal).name}")
            if worker.stop_requested:
                log.info("%s (pid %d) exited with %s", worker.label, worker.pid, how)
            elif worker.replaces is not None:
                # Not a crash loop: the old worker keeps serving; advance_replacement aborts.
                log.error("%s (pid %d), replacing %s, exited with %s before it was ready",
                          worker.label, worker.pid, worker.replaces.label, how)
            else:
                log.warning("%s (pid %d) died unexpectedly with %s after %.2fs",
                            worker.label, worker.pid, how, worker.uptime)
                self._count_death(worker)
            self.emit("exit", worker, worker.exit_code, worker.exit_signal)

    def _forget_worker(self, worker):
        worker._dispatched_final = self._dispatcher.worker_stats(worker.slot)[0]
        worker.state = "dead"
        self._dispatcher.remove_worker(worker.slot)
        if worker.control is not None:
            self._dispatcher.unwatch(worker.control.fileno())
            self._by_control_fd.pop(worker.control.fileno(), None)
            worker.control.close()
            worker.control = None
        worker.data_sock.close()
        self._by_slot.pop(worker.slot, None)
        del self.workers[worker.id]

    def _count_death(self, worker):
        if self._stopping:
            return
        if not self.respawn:
            self.size = max(0, self.size - 1)
            return
        if worker.uptime >= self.min_uptime:
            self._quick_deaths = 0
            return
        self._quick_deaths += 1
        if self._quick_deaths >= self.max_restarts:
            log.error("workers died %d times in a row within %.1fs of starting; "
                      "not re-forking (last: %s). Fix the app and restart.",
                      self._quick_deaths, self.min_uptime, worker.label)
            self.exit_code = EXIT_CRASH_LOOP
            self.begin_shutdown("crash loop")
            return
        delay = min(self.backoff_max, self.backoff_base * 2 ** (self._quick_deaths - 1))
        self._next_spawn_at = time.monotonic() + delay
        log.warning("re-forking in %.2fs (%d quick deaths in a row)", delay, self._quick_deaths)

    def _live_indices(self):
        return {w.index for w in self.workers.values() if not w.stop_requested}

    def _free_index(self):
        taken = self._live_indices()
        index = 0
        while index in taken:
            index += 1
        return index

    def manage_workers(self):
        """Fork missing workers (when respawn allows) and stop extra ones."""
        if self._stopping or self._dispatcher is None:
            return
        # A replacement still starting is not counted: its predecessor holds the index.
        live = sorted((w for w in self.workers.values()
                       if not w.stop_requested and not self._in_transit(w)),
                      key=lambda w: w.index)
        for worker in live[self.size:]:
            self.stop_worker(worker)
        missing = self.size - min(len(live), self.size)
        if missing <= 0 or time.monotonic() < self._next_spawn_at:
            return
        for _ in range(missing):
            try:
                self.spawn_worker(self._free_index())
            except OSError as exc:
                self._spawn_failed(exc)
                return

    def _lost_data_channel(self, worker):
        # Closed (the worker is exiting: it is reaped long before the grace
        # ends) or broken (garbage acks): the dispatcher sends it nothing
        # more, so a live one would idle forever; kill it and respawn.
        if worker.kill_at is None:
            worker.kill_at = time.monotonic() + DATA_CHANNEL_GRACE
            log.warning("%s (pid %d) closed or broke its data channel; killing it "
                        "unless it exits within %.1fs", worker.label, worker.pid,
                        DATA_CHANNEL_GRACE)

    def _spawn_failed(self, exc):
        # Out of fds (EMFILE at the fd limit) or processes (EAGAIN): the
        # workers still alive keep serving; dying here would take them down.
        self._next_spawn_at = time.monotonic() + self.backoff_max
        log.error("cannot start a worker: %s; trying again in %.1fs", exc, self.backoff_max)

    def stop_worker(self, worker, timeout=None):
        """Retire ``worker``: no new connections, finish open ones, SIGKILL after ``timeout``."""
        if worker.stop_requested or worker.is_dead():
            return
        timeout = self.graceful_timeout if timeout is None else float(timeout)
        worker.stop_requested = True
        worker.state = "stopping"
        worker.kill_at = time.monotonic() + timeout
        self._dispatcher.retire_worker(worker.slot)
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

    def reload(self):
        """Replace every worker, one at a time, new before old (SIGHUP).

        The listening sockets stay open throughout, so no client is refused.
        """
        workers = sorted((w for w in self.workers.values() if not w.stop_requested),
                         key=lambda w: w.index)
        log.info("reload: replacing %d workers one at a time", len(workers))
        for worker in workers:
            self.replace_worker(worker, "reload")

    def replace_worker(self, worker, reason):
        """Queue ``worker`` to be replaced new-before-old; one replacement runs at a time."""
        queued = any(w is worker for w, _ in self._replace_queue)
        current = self._replacement is not None and self._replacement.old is worker
        if not (queued or current or worker.stop_requested or worker.is_dead()):
            self._replace_queue.append((worker, reason))

    def advance_replacement(self):
        """Move the replacement in progress along, and start the next once it is done.

        Fork the new worker for the old one's index, wait until it is ready
        (listening on every address the old one had, or ``fastfork.ready()``
        with ``wait_ready``) within ``ready_timeout``, then stop the old one
        gracefully and wait for it to exit before the next replacement.
        """
        current = self._replacement
        if current is not None:
            old, new = current.old, current.new
            if new.replaces is not None:
                if new.is_dead() or new.stop_requested:
                    how = "exited" if new.is_dead() else f"was stopped ({new.state})"
                    self._abort_replacement(f"{new.label} {how} before it was ready")
                elif old.is_dead() or old.stop_requested:
                    new.replaces = None      # the old one went first; the new one takes its place
                elif self._is_ready_replacement(old, new):
                    log.info("%s (pid %d) is ready; stopping %s (pid %d)",
                             new.label, new.pid, old.label, old.pid)
                    new.replaces = None
                    self.stop_worker(old)
                elif time.monotonic() >= current.deadline:
                    self._abort_replacement(
                        f"{new.label} was not ready within {self.ready_timeout:g}s")
            if self._replacement is current and new.replaces is None and old.is_dead():
                log.info("replaced %s by %s (%s)", old.label, new.label, current.reason)
                self._replacement = None
        if self._replacement is not None or time.monotonic() < self._next_spawn_at:
            return
        while self._replace_queue:
            old, reason = self._replace_queue.popleft()
            if old.stop_requested or old.is_dead():
                continue
            log.info("replacing %s (pid %d, index %d): %s", old.label, old.pid, old.index, reason)
            try:
                new = self.spawn_worker(old.index)
            except OSError as exc:
                self._replace_queue.appendleft((old, reason))
                self._spawn_failed(exc)
                return
            new.replaces = old
            self._replacement = _Replacement(old, new, reason,
                                             time.monotonic() + self.ready_timeout)
            return

    def _is_ready_replacement(self, old, new):
        if self.wait_ready:
            return new.ready
        if old.addresses:
            return set(old.addresses) <= set(new.addresses)
        return new.state != "starting"   # the old one never listened: online is enough

    def _abort_replacement(self, why):
        current, self._replacement = self._replacement, None
        current.new.replaces = None
        self.stop_worker(current.new)
        log.error("replacing %s (%s) failed: %s; %s keeps serving",
                  current.old.label, current.reason, why, current.old.label)
        if current.reason == "reload":
            left = [w for w, reason in self._replace_queue if reason == "reload"]
            self._replace_queue = collections.deque(
                (w, r) for w, r in self._replace_queue if r != "reload")
            if left:
                log.error("reload stopped: %d more workers keep their old code", len(left))
        # Do not retry at once (max-requests/max-memory would re-queue it next check).
        self._next_spawn_at = time.monotonic() + self.backoff_max

    def _in_transit(self, worker):
        old = worker.replaces
        return old is not None and not old.stop_requested and not old.is_dead()

    def check_workers(self):
        """Replace workers that hang, reached max-requests, or outgrew max-memory."""
        now = time.monotonic()
        if not self._checks_enabled() or now < self._next_check_at:
            return
        self._next_check_at = now + self._heartbeat_interval()
        for worker in list(self.workers.values()):
            if worker.stop_requested or worker.is_dead():
                continue
            silent = now - worker.last_heartbeat
            if self.timeout and worker.heartbeats and silent > self.timeout:
                self.abort_worker(worker, silent)
            elif worker.replaces is not None:
                continue          # still starting: recycling it now would be pointless
            elif worker.request_limit and worker.handled() >= worker.request_limit:
                self.replace_worker(worker, f"max-requests ({worker.handled()} connections, "
                                            f"limit {worker.request_limit})")
            elif self.max_memory:
                rss = worker.rss()
                if rss is not None and rss > self.max_memory:
                    self.replace_worker(worker, f"max-memory (RSS {rss / 2**20:.1f} MiB, "
                                                f"limit {self.max_memory / 2**20:.1f} MiB)")

    def abort_worker(self, worker, silent):
        """A worker whose loop stopped beating: SIGABRT now (so faulthandler can
        print where it is stuck), SIGKILL after ABORT_GRACE; its replacement
        is forked at once and its unacknowledged connections go to others."""
        log.error("%s (pid %d) sent no heartbeat for %.1fs (timeout %gs): aborting it",
                  worker.label, worker.pid, silent, self.timeout)
        worker.stop_requested = True
        worker.state = "hung"
        worker.kill_at = time.monotonic() + ABORT_GRACE
        self._dispatcher.retire_worker(worker.slot)
        worker.kill(signal.SIGABRT)

    # -- control messages ---------------------------------------------------------------
    def read_control(self, worker):
        """Handle every message waiting on ``worker``'s control channel."""
        while worker.control is not None:
            try:
                message, fds = worker.control.recv()
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except MessageError as exc:
                self._replace_misbehaving(worker, str(exc))
                return
            except OSError:
                message, fds = None, []
            for fd in fds:
                os.close(fd)       # workers have no reason to send descriptors
            if message is None:
                self._on_disconnect(worker)
                return
            handler = getattr(self, "on_" + message["t"], None) if message["t"] in _WORKER_MESSAGES else None
            if handler is None:
                self._replace_misbehaving(worker, f"unknown message type {message['t']!r}")
                return
            try:
                handler(worker, message)
            except Exception as exc:
                # Whatever a worker's message makes a handler raise (a missing
                # field, Infinity where a count goes: OverflowError, a backlog
                # the kernel refuses) is that worker's fault: replace it, and
                # never let it out of the loop, which would take every worker down.
                self._replace_misbehaving(worker, f"bad {message['t']!r} message: {exc}")
                return

    def _replace_misbehaving(self, worker, why):
        log.error("%s (pid %d) sent a malformed message (%s); replacing it",
                  worker.label, worker.pid, why)
        # Kill before closing its channel, or it would exit on the EOF first.
        worker.kill(signal.SIGKILL)
        self._on_disconnect(worker)

    def _on_disconnect(self, worker):
        if worker.control is None:
            return
        self._dispatcher.unwatch(worker.control.fileno())
        self._by_control_fd.pop(worker.control.fileno(), None)
        worker.control.close()
        worker.control = None
        self.emit("disconnect", worker)

    def on_online(self, worker, message):
        worker.state = "online"
        log.info("%s (pid %d) online", worker.label, worker.pid)
        self.emit("online", worker)

    def on_ready(self, worker, message):
        worker.ready = True
        self.emit("ready", worker)

    def on_stopping(self, worker, message):
        # The worker got SIGTERM: retire it like any graceful stop; as a
        # stop nobody here asked for, its index is re-forked.
        log.info("%s (pid %d) is stopping on its own (SIGTERM)", worker.label, worker.pid)
        self.stop_worker(worker)

    def on_heartbeat(self, worker, message):
        worker.last_heartbeat = time.monotonic()
        worker.heartbeats += 1
        opened, served = message.get("open"), message.get("served")
        worker.open_connections = None if opened is None else int(opened)
        worker.served = None if served is None else int(served)

    def on_msg(self, worker, message):
        self.emit("message", worker, message.get("data"))

    def on_listen(self, worker, message):
        request = message["id"]
        backlog = int(message.get("backlog") or DEFAULT_BACKLOG)
        fds = []
        try:
            family, sockaddr = parse_address(message["address"])
            shared = self._shared_listener(family, sockaddr, backlog)
            own = None
            if self.policy == "rr":
                self._dispatcher.subscribe(worker.slot, shared.lid)
            elif self.policy == "none":
                fds = [shared.sock.fileno()]
            else:
                own = bind_listener(family, shared.sockaddr, backlog, reuseport=True)
                fds = [own.fileno()]
        except (OSError, ValueError) as exc:
            worker.control.send({"t": "listen_error", "id": request,
                                 "errno": getattr(exc, "errno", None) or 0,
                                 "error": str(exc)})
            log.warning("%s could not listen: %s", worker.label, exc)
            return
        try:
            worker.control.send({"t": "listening", "id": request, "address": shared.display,
                                 "lid": shared.lid, "policy": self.policy}, fds)
        finally:
            if own is not None:
                own.close()       # the worker has its own copy now
        worker.addresses.append(shared.display)
        if worker.state in ("starting", "online"):
            worker.state = "listening"
        log.info("%s (pid %d) listening on %s", worker.label, worker.pid, shared.display)
        self.emit("listening", worker, shared.display)

    def _shared_listener(self, family, sockaddr, backlog):
        key = (family, sockaddr)
        shared = self._listeners.get(key)
        if shared is not None:
            return shared
        if family == socket.AF_UNIX and self.policy == "reuseport":
            raise OSError(errno.EINVAL, f"policy reuseport needs a TCP address, not unix:{sockaddr}")
        if key in self._inherited and self.policy == "reuseport":
            raise OSError(errno.EINVAL, f"policy reuseport cannot share the socket systemd passed "
                                        f"for {describe(family, sockaddr)}; use rr or none")
        if self.policy == "reuseport":
            # Hold the port with a bound, non-listening socket: it joins the
            # reuseport group but never receives connections.
            sock = bind_listener(family, sockaddr, backlog, reuseport=True, listen=False)
            self._reserved.append(sock)
            shared = _SharedListener(family, sockaddr, sock, -1)
        else:
            inherited = self._inherited.pop(key, None)
            sock = inherited or bind_listener(family, sockaddr, backlog)
            lid = self._dispatcher.add_listener(sock.fileno()) if self.policy == "rr" else -1
            shared = _SharedListener(family, sockaddr, sock, lid)
            if inherited is not None:
                shared.inherited = True
                log.info("using the socket systemd passed for %s", shared.display)
        self._listeners[key] = shared
        return shared

    # -- shutdown -------------------------------------------------------------------------
    def begin_shutdown(self, why):
        """Stop accepting, ask every worker to finish, and leave the loop when all are gone."""
        if self._stopping:
            return
        self._stopping = True
        self._replace_queue.clear()
        log.info("shutting down (%s): draining %d workers, timeout %.1fs",
                 why, len(self.alive_workers()), self.graceful_timeout)
        self._close_listeners()
        for worker in list(self.workers.values()):
            self.stop_worker(worker)

    def force_stop(self):
        self._stopping = True
        if self.exit_code == EXIT_OK:
            self.exit_code = EXIT_FORCED
        self._close_listeners()
        for worker in self.workers.values():
            worker.stop_requested = True
            worker.kill(signal.SIGKILL)

    def _close_listeners(self):
        for shared in self._listeners.values():
            if shared.lid >= 0:
                self._dispatcher.remove_listener(shared.lid)
            shared.sock.close()
            if shared.family == socket.AF_UNIX and not shared.inherited:
                try:
                    os.unlink(shared.sockaddr)
                except OSError:
                    pass
        self._listeners.clear()
        for sock in self._reserved:
            sock.close()
        self._reserved = []

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
            self._forget_worker(worker)
        self._close_listeners()
        for sock in self._inherited.values():
            sock.close()
        self._inherited = {}
        if self._control_server is not None:
            self._control_server.close()
            self._control_server = None
        self._restore_signals()
        if self._dispatcher is not None:
            self._dispatcher.close()
            self._dispatcher = None
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1


# Message types a worker may send; anything else gets it replaced.
_WORKER_MESSAGES = frozenset(("online", "ready", "heartbeat", "msg", "listen", "stopping"))
