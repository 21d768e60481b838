"""The demo's primary side: ``Demo`` prints the cluster's events and drives the client.

The cluster loop must own the main thread (signals), so the scripted client
runs on a helper thread started once every worker listens.
"""

import os
import re
import signal
import socket
import sys
import threading

from .options import EXIT_USAGE
from .output import count as _count

EXIT_DEMO_FAILED = 1
WAIT = 10.0                # seconds the client waits for any one thing the cluster does

HELLO = re.compile(r"hello from worker (\d+) \(pid (\d+)\)")


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
        elif policy == "least":
            out.line(f"   only the primary (pid {pid}) bound it. It accepts each connection "
                     "and passes it to")
            out.line("   the worker with the fewest open connections (policy least).")
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
        heading = {"rr": "3. Round-robin dispatch",
                   "least": "3. Least-connections dispatch"}.get(
            policy, f"3. Dispatch by the kernel (policy {policy})")
        out.line(out.heading(heading))
        out.line(f"   The demo is now a client: it opens {count} short HTTP connections, "
                 "one after another.")
        order = self.do_round(count, 1)
        if policy == "rr":
            out.line(f"   The primary handed them out in turn: {', '.join(map(str, order))}.")
        elif policy == "least":
            out.line(f"   Each went to a worker with the fewest open (ties in turn): "
                     f"{', '.join(map(str, order))}.")
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
