"""``python -m fastfork demo``: the cluster model, shown live with real processes.

The scripted demo runs in six parts: the core count, the primary forking its
workers onto one port, round-robin dispatch (the demo itself is the client),
per-worker counters against the primary's total, a worker killed and
re-forked, and a clean shutdown.  ``--serve`` skips the script and serves
HTTP until SIGINT/SIGTERM: it is the reference server the benchmarks use.

Threads: the cluster loop must own the main thread (signals), so the scripted
client runs on a helper thread started once every worker listens.  Both
threads print, and the primary forks while the client may be printing, so
printing and forking share one lock (``_OUTPUT_LOCK``, taken around every
fork): a child never starts with stdout's buffer locked by a thread it does
not have.
"""

import argparse
import asyncio
import errno
import logging
import os
import re
import signal
import socket
import sys
import threading
import time

import fastfork

from . import http as _http
from .primary import EXIT_OK

DEFAULT_PORT = 3000
DEFAULT_HOST = "127.0.0.1"
EXIT_USAGE = 2
EXIT_DEMO_FAILED = 1
WAIT = 10.0                # seconds the client waits for any one thing the cluster does
GRACEFUL_TIMEOUT = 5.0

HELLO = re.compile(r"hello from worker (\d+) \(pid (\d+)\)")

_OUTPUT_LOCK = threading.Lock()
_fork_hooks_installed = False
_probe = None              # the primary's port reservation; a forked worker closes its copy


def _install_fork_hooks():
    global _fork_hooks_installed
    if not _fork_hooks_installed:
        _fork_hooks_installed = True
        os.register_at_fork(before=_OUTPUT_LOCK.acquire,
                            after_in_parent=_OUTPUT_LOCK.release,
                            after_in_child=_OUTPUT_LOCK.release)


# -- options -------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, no usage block: the line names the problem, --help the rest.
        self.exit(EXIT_USAGE, f"fastfork demo: error: {message} (see --help)\n")


def _workers_arg(text):
    try:
        return fastfork.parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port_arg(text):
    try:
        port = int(text)
    except ValueError:
        port = None
    if port is None or not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"port must be a number in 0..65535 (0 picks a free port), got {text!r}")
    return port


def _requests_arg(text):
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"request count must be a positive integer, got {text!r}")
    return count


def _seconds_arg(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def build_parser():
    parser = _Parser(
        prog="python -m fastfork demo",
        description="Show the cluster model live: cores, one primary and its workers on one "
                    "port, round-robin dispatch, per-worker memory, a worker killed and "
                    "re-forked, a clean shutdown.")
    parser.add_argument("--workers", type=_workers_arg, default=None, metavar="N",
                        help="workers to fork: a positive integer or 'max' "
                             "(default: the usable cores)")
    parser.add_argument("--port", type=_port_arg, default=DEFAULT_PORT, metavar="P",
                        help=f"port to serve (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to serve on (default {DEFAULT_HOST})")
    parser.add_argument("--requests", type=_requests_arg, default=None, metavar="M",
                        help="connections the demo opens to show round-robin "
                             "(default: 2 rounds, 2 per worker)")
    parser.add_argument("--serve", action="store_true",
                        help="skip the script: serve HTTP until Ctrl-C or SIGTERM")
    parser.add_argument("--policy", choices=fastfork.POLICIES, default="rr",
                        help="how connections reach workers (default rr)")
    parser.add_argument("--graceful-timeout", type=_seconds_arg, default=GRACEFUL_TIMEOUT,
                        metavar="S", help="how long a stopping worker may take to finish "
                                          f"its connections (default {GRACEFUL_TIMEOUT:g})")
    parser.add_argument("--step", action="store_true",
                        help="pause for Enter between parts (to look at the processes)")
    parser.add_argument("--no-color", action="store_true", help="never use colors")
    return parser


class UsageError(Exception):
    """A bad value found after parsing (the port is taken, the host unknown)."""


def reserve_port(host, port):
    """Bind ``host:port`` the way the primary will (SO_REUSEADDR, not listening).

    Returns the bound socket: it holds the port (``0`` becomes a real one)
    until the cluster has bound its own listener, which it only does when the
    first worker asks to listen.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror as exc:
        sock.close()
        raise UsageError(f"cannot use host {host!r}: {exc.strerror}") from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = (f"port {port} on {host} is already in use "
                   "(choose another with --port, or --port 0 for a free one)")
        elif exc.errno == errno.EACCES:
            why = f"port {port} on {host}: permission denied (ports below 1024 need privileges)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = f"cannot use host {host!r}: not an address of this machine"
        else:
            why = f"cannot bind {host}:{port}: {exc.strerror or exc}"
        raise UsageError(why) from None
    return sock


def _count(number, noun):
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


# -- output ----------------------------------------------------------------------------

_WORKER_COLORS = (36, 33, 35, 32, 34, 31)


class Output:
    """Plain lines on stdout; ANSI colors only on a terminal and unless --no-color."""

    def __init__(self, color):
        self.color = color
        self.reader_gone = False
        self.on_reader_gone = None      # called once if stdout's reader goes away

    def line(self, text=""):
        with _OUTPUT_LOCK:
            if self.reader_gone:
                return
            try:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                # `python -m fastfork demo | head`: nobody reads any more.  Send
                # stdout to /dev/null (so no later flush fails) and end the demo.
                self.reader_gone = True
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
                if self.on_reader_gone is not None:
                    self.on_reader_gone()

    def error(self, text):
        with _OUTPUT_LOCK:
            sys.stdout.flush()
            sys.stderr.write(f"fastfork demo: error: {text}\n")
            sys.stderr.flush()

    def _paint(self, code, text):
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def heading(self, text):
        return self._paint(1, text)

    def dim(self, text):
        return self._paint(2, text)

    def worker(self, worker_id, index, text=None):
        return self._paint(_WORKER_COLORS[index % len(_WORKER_COLORS)],
                           text or f"worker {worker_id}")


# -- the worker side -------------------------------------------------------------------

def worker_main(address, report):
    """A worker: serve HTTP on ``address``; with ``report``, tell the primary
    about every request (the demo's global total)."""
    if _probe is not None:
        _probe.close()      # fork copied the primary's port reservation: drop it
    asyncio.run(_serve(address, report))


async def _serve(address, report):
    body = f"hello from worker {fastfork.worker_id} (pid {os.getpid()})\n".encode()
    # Sent before the answer is written: by the time a client reads the answer,
    # the primary's channel already holds the report.
    on_request = (lambda: fastfork.send({"served": 1})) if report else None
    app = _http.HelloApp(body, on_request)

    def on_message(data):
        if data == "count?":
            fastfork.send({"count": app.requests})

    fastfork.on_message(on_message)
    fastfork.on_stop(app.close_idle)
    try:
        server = await fastfork.create_server(app.protocol_factory, address)
    except OSError as exc:
        fastfork.send({"listen_error": str(exc)})
        await fastfork.wait_stopping()
        return
    await fastfork.wait_stopping()
    await fastfork.drain([server])


# -- the primary side ------------------------------------------------------------------

class Demo:
    """The primary's side of the demo: prints the cluster's events, drives the client."""

    def __init__(self, args, out, size, host, port, probe):
        self.args = args
        self.out = out
        out.on_reader_gone = self._reader_gone
        self.size = size
        self.host = host
        self.port = port
        self.probe = probe
        self.connect_host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        self.cluster = None
        self.address = None
        self.all_workers = []        # every Worker handle ever forked
        self.dead_at_index = {}      # index -> Worker that died unexpectedly there
        self.total = 0               # requests reported by the workers (scripted mode)
        self.answered = 0            # answers the client received
        self.failure = None          # (exit code, message) once the demo cannot go on
        self.client = None
        self.finished = False
        self.interrupted = False     # the primary began stopping without the demo asking
        self._stop_sent = False
        self._live = {}              # id -> Worker, kept by the loop's thread
        self._started = False
        self._events = []            # (kind, worker, extra) for the client thread
        self._cond = threading.Condition()

    # -- the cluster's events (main thread) ------------------------------------------
    def attach(self, cluster):
        self.cluster = cluster
        cluster.on("fork", self.on_fork)
        cluster.on("listening", self.on_listening)
        cluster.on("message", self.on_message)
        cluster.on("exit", self.on_exit)

    def _post(self, kind, worker, extra=None):
        with self._cond:
            self._events.append((kind, worker, extra))
            self._cond.notify_all()

    def on_fork(self, worker):
        out = self.out
        self.all_workers.append(worker)
        with self._cond:
            self._live[worker.id] = worker
        name = out.worker(worker.id, worker.index)
        old = self.dead_at_index.pop(worker.index, None)
        out.line(f"   fork       {name}: pid {worker.pid}, index {worker.index}")
        if old is not None:
            out.line(f"              replaces worker {old.id} (pid {old.pid}): same index, "
                     "new id and pid")
        self._post("fork", worker)

    def on_listening(self, worker, address):
        out = self.out
        if self.probe is not None:
            self.probe.close()       # the cluster holds the port from here on
            self.probe = None
        self.address = address
        out.line(f"   listening  {out.worker(worker.id, worker.index)} (pid {worker.pid}) "
                 f"listens on {address}")
        self._post("listening", worker, address)
        listening = sum(1 for w in self.cluster.alive_workers() if w.addresses)
        if not self._started and listening >= self.size:
            self._started = True
            self.explain_shared_port()
            if self.args.serve:
                self.announce_ready()
            else:
                self.client = threading.Thread(target=self.run_client, name="demo-client",
                                               daemon=True)
                self.client.start()

    def on_message(self, worker, data):
        if not isinstance(data, dict):
            return
        if "served" in data:
            self.total += 1
        elif "count" in data:
            self._post("count", worker, data["count"])
        elif "listen_error" in data and self.failure is None:
            self.failure = (EXIT_USAGE, str(data["listen_error"]))
            self._stop_sent = True
            self.out.error(self.failure[1])
            self.cluster.stop()

    def on_exit(self, worker, code, sig):
        out = self.out
        name = out.worker(worker.id, worker.index)
        with self._cond:
            self._live.pop(worker.id, None)
        if worker.stop_requested and not self._stop_sent and not self.args.serve:
            self.interrupted = True      # Ctrl-C or SIGTERM: the client's errors are expected
        how = f"code {code}, signal None" if sig is None else \
            f"code None, signal {signal.Signals(sig).name}"
        if worker.stop_requested:
            out.line(f"   exit       {name} (pid {worker.pid}): {how}, stopped by the primary")
        else:
            self.dead_at_index[worker.index] = worker
            out.line(f"   exit       {name} (pid {worker.pid}, index {worker.index}): {how}")
            out.line(f"              it was not asked to stop, so the primary re-forks index "
                     f"{worker.index}")
        self._post("exit", worker, (code, sig))

    # -- what the primary says once every worker listens --------------------------------
    def explain_shared_port(self):
        out, policy, pid = self.out, self.cluster.policy, os.getpid()
        if self.size == 1:
            out.line(f"   The worker listens on {self.address} without having bound it:")
        else:
            out.line(f"   All {self.size} workers listen on the same {self.address}, and none got "
                     "\"address in use\":")
        if policy == "rr":
            out.line(f"   only the primary (pid {pid}) bound it. It accepts each connection "
                     "and passes")
            out.line("   the socket to one worker over a Unix socket (policy rr, round-robin).")
        elif policy == "none":
            out.line(f"   only the primary (pid {pid}) bound it, then gave each worker a "
                     "copy of that one")
            out.line("   socket; the workers race to accept (policy none: the kernel decides).")
        else:
            out.line(f"   the primary (pid {pid}) reserved it, and each worker bound its "
                     "own socket with")
            out.line("   SO_REUSEPORT (policy reuseport: the kernel spreads connections by hash).")

    def announce_ready(self):
        url = f"http://{self.address}/"
        self.out.line("")
        workers, policy = _count(self.size, "worker"), self.cluster.policy
        self.out.line(f"ready: {workers} serving {url} (policy {policy}); press Ctrl-C to stop")
        self.out.line(self.out.dim(f"   try: curl {url}   (each answer names its worker)"))

    def _reader_gone(self):
        with self._cond:
            self.interrupted = True
            self._cond.notify_all()
        self._stop_sent = True
        if self.cluster is not None:
            self.cluster.stop()

    # -- the client (helper thread) --------------------------------------------------------
    def run_client(self):
        try:
            self.script()
            self.finished = True
        except Exception as exc:           # report it, then shut the cluster down cleanly
            if self.failure is None and not self.interrupted:
                self.failure = (EXIT_DEMO_FAILED, f"the demo could not go on: {exc}")
                self.out.error(self.failure[1])
        finally:
            self._stop_sent = True
            self.cluster.stop()

    def _wait_for(self, predicate, what):
        """The first posted event matching ``predicate``; waits up to WAIT seconds."""
        def find():
            for event in self._events:
                if predicate(*event):
                    return event
            return None

        with self._cond:
            event = self._cond.wait_for(lambda: find() or self.interrupted, WAIT)
        if self.interrupted:
            raise RuntimeError("interrupted")
        if event is None:
            raise TimeoutError(f"no {what} within {WAIT:g}s")
        return event

    def live_workers(self):
        """The workers alive now, by index (a snapshot: the loop's thread updates them)."""
        with self._cond:
            return sorted(self._live.values(), key=lambda w: w.index)

    def pause(self):
        if self.args.step:
            self.out.line(self.out.dim("   (press Enter to continue)"))
            sys.stdin.readline()

    def request(self):
        """One short HTTP connection; returns ``(worker id, pid, body line)``."""
        with socket.create_connection((self.connect_host, self.port), timeout=WAIT) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {self.address}\r\n"
                         "Connection: close\r\n\r\n".encode())
            chunks = []
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
        data = b"".join(chunks).decode("latin-1")
        head, _, body = data.partition("\r\n\r\n")
        match = HELLO.search(body)
        if not head.startswith("HTTP/1.1 200 ") or match is None:
            raise RuntimeError(f"unexpected answer {data[:80]!r}")
        self.answered += 1
        return int(match.group(1)), int(match.group(2)), body.strip()

    def do_round(self, count, first):
        out, by_id = self.out, {w.id: w for w in self.all_workers}
        order = []
        for number in range(first, first + count):
            worker_id, pid, body = self.request()
            worker = by_id.get(worker_id)
            index = worker.index if worker is not None else 0
            out.line(f"   request {number:<3} -> {out.worker(worker_id, index)} (pid {pid}): "
                     f"\"{body}\"")
            order.append(worker_id)
        return order

    def script(self):
        out, policy = self.out, self.cluster.policy
        self.pause()
        count = self.args.requests or 2 * self.size

        out.line("")
        out.line(out.heading("3. Round-robin dispatch" if policy == "rr"
                             else f"3. Dispatch by the kernel (policy {policy})"))
        out.line(f"   The demo is now a client: it opens {count} short HTTP connections, "
                 "one after another.")
        order = self.do_round(count, 1)
        if policy == "rr":
            out.line(f"   The primary handed them out in turn: {', '.join(map(str, order))}.")
        else:
            out.line(f"   Answered by: {', '.join(map(str, order))} (policy {policy}: the kernel "
                     "picked, so no strict rotation).")

        out.line("")
        out.line(out.heading("4. Memory is not shared"))
        out.line("   Each worker counts the requests it served in its own variable; the "
                 "primary adds up")
        out.line("   the reports the workers send it over the message channel.")
        live = self.live_workers()
        for worker in live:
            worker.send("count?")
        counts = []
        for worker in live:
            _, _, served = self._wait_for(
                lambda kind, w, extra, worker=worker: kind == "count" and w is worker,
                f"count from {worker.label}")
            counts.append(served)
            who = f"{worker.label} (pid {worker.pid})"
            out.line(f"   {out.worker(worker.id, worker.index, f'{who:<22}')} served {served:<4} "
                     f"{out.dim('its own counter: it cannot see the others')}")
        who = f"primary  (pid {os.getpid()})"
        out.line(f"   {who:<22} total  {self.total:<4} "
                 f"{out.dim('= ' + ' + '.join(map(str, counts)) + ', known only to the primary')}")

        out.line("")
        out.line(out.heading("5. Resilience: a worker dies, the primary re-forks it"))
        victim = live[0]
        name = out.worker(victim.id, victim.index)
        out.line(f"   killing {name} (pid {victim.pid}) with SIGKILL: no chance to clean up")
        victim.kill(signal.SIGKILL)
        self._wait_for(lambda kind, w, extra: kind == "exit" and w is victim,
                       f"exit event of {victim.label}")
        _, spare, _ = self._wait_for(
            lambda kind, w, extra: (kind == "listening" and w.index == victim.index
                                    and w.id != victim.id),
            f"a replacement at index {victim.index}")
        self.pause()
        rest = len(self.live_workers())
        out.line(f"   One more round of {rest} requests:")
        order = self.do_round(rest, count + 1)
        served = order.count(spare.id)
        if served:
            out.line(f"   The replacement, worker {spare.id} (pid {spare.pid}), answered {served} "
                     "of them: it serves the same port.")
        else:
            out.line(f"   The replacement, worker {spare.id} (pid {spare.pid}), answered none of "
                     "them this time: the kernel picked.")

        out.line("")
        out.line(out.heading("6. Clean shutdown"))
        out.line("   The primary asks every worker to finish its connections and exit, then reaps "
                 "it.")


def _no_child_left():
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False if pid == 0 else _no_child_left()


def main(argv=None):
    """``python -m fastfork demo [options]``; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:       # --help (0) or a bad value (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    color = (not args.no_color and sys.stdout.isatty()
             and os.environ.get("NO_COLOR", "") == "")
    out = Output(color)
    try:
        probe = reserve_port(args.host, args.port)
    except UsageError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    global _probe
    _probe = probe
    try:
        return _run(args, out, probe)
    finally:
        _probe = None
        probe.close()


def _run(args, out, probe):
    started = time.monotonic()
    _install_fork_hooks()
    # The demo explains deaths it causes itself; the library's warnings about
    # them would only repeat it.  Errors still reach stderr.
    logger = logging.getLogger("fastfork")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("fastfork: %(message)s"))
        handler.setLevel(logging.ERROR)
        logger.addHandler(handler)

    cores, cpu_count = fastfork.usable_cpus(), os.cpu_count()
    size = args.workers or cores
    port = probe.getsockname()[1]
    host = args.host
    demo = Demo(args, out, size, host, port, probe)
    cluster = fastfork.Cluster(worker_main, size, args=((host, port), not args.serve),
                               policy=args.policy, graceful_timeout=args.graceful_timeout)
    demo.attach(cluster)

    out.line(out.heading("fastfork demo") + out.dim(
        f": the cluster model, shown live ({cluster.implementation} dispatcher)"))
    out.line("")
    out.line(out.heading("1. One process = one core"))
    out.line("   A Python process runs its code on one core at a time (the GIL), so a server "
             "uses")
    out.line("   the whole machine only as one process per core.")
    if cpu_count and cpu_count != cores:
        out.line(f"   usable cores: {cores} (os.cpu_count() says {cpu_count}; CPU affinity or a "
                 "cgroup quota allows only these)")
    else:
        out.line(f"   usable cores: {cores}")
    if args.workers is None:
        out.line(f"   so the primary forks {_count(size, 'worker')}, one per core.")
    else:
        out.line(f"   --workers {size}: the primary forks {_count(size, 'worker')}.")
    if args.port == 0:
        out.line(f"   port 0: picked the free port {port}")

    out.line("")
    out.line(out.heading("2. The primary/worker model"))
    out.line(f"   primary    pid {os.getpid()}: forks the workers, owns the port, hands out "
             "connections;")
    out.line("              it serves no request itself.")
    out.line(out.dim("   A worker's id is unique and never reused; its index (0..N-1) is its "
                     "slot, which a"))
    out.line(out.dim("   replacement takes over."))
    code = cluster.run()
    if demo.client is not None and not demo.interrupted:
        demo.client.join(WAIT)      # not when interrupted: it may be waiting for Enter

    left = "no child process is left" if _no_child_left() else "SOME CHILD PROCESSES ARE LEFT"
    out.line(f"   every worker exited and was reaped; {left}.")
    if demo.failure is not None:
        code = demo.failure[0]
    elif not args.serve and not demo.finished:
        out.error("interrupted: the primary stopped before the demo finished")
        code = code or EXIT_DEMO_FAILED
    forked = len(demo.all_workers)
    refork = forked - size
    if args.serve:
        served = ""
        if args.policy == "rr":
            dispatched = sum(w.dispatched() for w in demo.all_workers)
            served = f", {_count(dispatched, 'connection')} dispatched"
    else:
        served = f", {_count(demo.answered, 'request')} answered"
    out.line("")
    out.line(out.heading("done") + f": {_count(forked, 'worker')} forked ({refork} re-forked)"
             f"{served}; the primary exits {code} after {time.monotonic() - started:.1f}s.")
    return code if code is not None else EXIT_OK
