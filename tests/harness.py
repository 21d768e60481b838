"""Run clusters as real processes and talk to them, with deadlines, never sleeps.

``ClusterProcess`` starts a primary in its own session, reads its stdout on a
thread, and lets a test wait for ``EVENT`` lines; ``close()`` kills the whole
session (primary and any worker) whatever happened, and reports leftovers.
"""

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

from tests.implementations import DEFAULT, ROOT, Impl

APP = os.path.join(ROOT, "tests", "apps", "cluster_app.py")
PY = Impl("py")       # for tests that are about something else than the hot path




def http_get(address, path="/", method="GET"):
    """``(status, body text)`` of one request on a fresh connection, closed after it.
    ``address`` is ``(host, port)`` or ``"host:port"`` (as the status shows endpoints)."""
    if isinstance(address, str):
        host, _, port = address.rpartition(":")
        address = (host, int(port))
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()

def free_port(host="127.0.0.1"):
    """A TCP port on ``host`` that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]

def session_pids(sid):
    """Pids of live (non-zombie) processes in session ``sid``, and of zombies."""
    alive, zombies = [], []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:
            (zombies if fields[0] == "Z" else alive).append(int(entry))
    return alive, zombies


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def cpu_seconds(pid):
    """CPU seconds (user + system) ``pid`` has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid):
    """Open fds of ``pid``, less a spare one on /dev/null: uvloop's libuv opens it
    once per loop, with the loop's first connection (to shed connections when
    out of fds), so it is not a leak though it was not there at "listening"."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            spare = int(fd) > 2 and os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
        except OSError:
            spare = False         # closed meanwhile: counted, as before
        count += not spare
    return count


class ClusterProcess:
    def __init__(self, args, impl=DEFAULT, env=None, script=APP):
        self.env = impl.env(env)
        self.lines = []
        self.events = []
        self._queue = queue.Queue()
        self.proc = subprocess.Popen([sys.executable, script] + list(args),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True, text=True)
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("EVENT "):
                event = json.loads(line[6:])
                self.events.append(event)
                self._queue.put(event)
        self._queue.put(None)

    def output(self):
        return "\n".join(self.lines)

    def wait_event(self, event, timeout=15, **match):
        """The next ``event`` (after those already consumed) whose fields match."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {event} {match} within {timeout}s; "
                                     f"output:\n{self.output()}")
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                self._queue.put(None)
                raise AssertionError(f"primary exited before {event} {match}; "
                                     f"output:\n{self.output()}")
            if item["event"] == event and all(item.get(k) == v for k, v in match.items()):
                return item

    def wait_events(self, event, count, timeout=15, **match):
        return [self.wait_event(event, timeout, **match) for _ in range(count)]

    def wait_listening(self, workers, timeout=15):
        """Wait for ``workers`` listening events; returns (host, port) and the events."""
        events = self.wait_events("listening", workers, timeout)
        host, _, port = events[0]["address"].rpartition(":")
        return (host.strip("[]"), int(port)), events

    def signal(self, sig):
        os.kill(self.pid, sig)

    def wait_exit(self, timeout=30):
        return self.proc.wait(timeout)

    def close(self):
        """Kill the session (primary and workers) and reap the primary."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            alive, _ = session_pids(self.pid)
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(10)
        self._reader.join(5)
        self.proc.stdout.close()

    def leftovers(self):
        """Processes of this cluster's session still alive (should be none after exit)."""
        return session_pids(self.pid)[0]


def request(address, line, timeout=10):
    """Open a connection, send one line, return the reply line."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()
