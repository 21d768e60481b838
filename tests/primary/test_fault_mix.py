"""The soak of issue 24: every fault it fixed, at once, against one running primary.

A real `python -m fastfork run` of a small ASGI app, three workers, under a
steady load of new-connection requests, while:

* worker 0 runs out of file descriptors (its RLIMIT_NOFILE lowered under it,
  and idle connections held past it) and recovers;
* slowloris clients trickle request heads byte by byte;
* 300 clients flood the health endpoint at once;
* malformed lines arrive on the status socket;
* slot 2 crash-loops: the app on disk is broken and its worker stopped, so
  every re-fork fails, until the file is fixed.

Every healthy worker keeps serving: workers 0 and 1 are the same processes at
the end, the primary never exits, every flood client and every bad line gets
an answer.  The only requests the load may lose are those the kernel cut off
while passing them to worker 0 as it hit its limit (the fault itself; at most
a window each time it does), and each such loss is a reset, never a hang.
"""

import json
import os
import resource
import select
import signal
import socket
import threading
import time

import pytest

from tests.harness import fd_count, http_get, wait_until
from tests.loadgen import HttpClient, Load
from tests.runner_harness import BROKEN_APP, PID_APP

pytest.importorskip("uvicorn", reason="the web extra is not installed")
parser = pytest.importorskip("prometheus_client.parser",
                             reason="the metrics extra is not installed")


HEAD_DEADLINE = 2.0
WINDOW = 8                     # the default credit window: what a worker can be sent at once
FLOOD = 300
SLOWLORIS = 30
HELD = 45                      # idle connections, a third of them to worker 0
ROOM = 10                      # the fds worker 0 may still open
BAD_LINES = [b"{\"cmd\": {}}\n", b"{\"cmd\": [\"status\"]}\n", b"[1, 2]\n", b"\xff\xfe\n",
             b"{\"cmd\": \"nonsense\"}\n", b"[" * 4000 + b"\n", b"null\n", b"\"status\"\n"]



def at_fd_limit(endpoint):
    """``{worker index: 1.0 or 0.0}`` of the metric fastfork_worker_at_fd_limit."""
    status, body = http_get(endpoint, "/metrics")
    assert status == 200, body
    return {sample.labels["index"]: sample.value
            for family in parser.text_string_to_metric_families(body)
            for sample in family.samples if sample.name == "fastfork_worker_at_fd_limit"}


def status_line(path, line):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(line)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return json.loads(answer)


def flood(endpoint):
    """``FLOOD`` clients connect and ask /livez at once; returns their status lines."""
    socks = []
    try:
        for _ in range(FLOOD):
            sock = socket.create_connection(endpoint, timeout=20)
            socks.append(sock)
        for sock in socks:
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        lines = []
        for sock in socks:
            answer = b""
            while b"\r\n" not in answer:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            lines.append(answer.split(b"\r\n", 1)[0])
        return lines
    finally:
        for sock in socks:
            sock.close()


class Slowloris:
    """Clients that send a request head one byte at a time, never finishing it;
    each stops sending as soon as the server answers, and reads the answer
    (sending on would make the kernel reset the connection and drop it)."""

    def __init__(self, address):
        self.closed_after = []
        self._threads = [threading.Thread(target=self._trickle, args=(address,), daemon=True)
                         for _ in range(SLOWLORIS)]
        for thread in self._threads:
            thread.start()

    def _trickle(self, address):
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 1000
        with socket.create_connection(address, timeout=HEAD_DEADLINE + 10) as sock:
            started = time.monotonic()
            for byte in head:
                sock.sendall(bytes([byte]))
                if select.select([sock], [], [], 0.2)[0]:
                    break             # answered (or closed): stop sending
            answer = b""
            try:
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            except OSError:
                pass
            self.closed_after.append((time.monotonic() - started,
                                      answer.split(b"\r\n", 1)[0]))

    def join(self):
        for thread in self._threads:
            thread.join(HEAD_DEADLINE + 15)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_fault_mix_leaves_every_healthy_worker_serving(runner_factory, tmp_path, figures):
    app = tmp_path / "mix_app.py"
    app.write_text(PID_APP)
    runner = runner_factory(f"{app}:app", "--workers", "3", "--bind", "127.0.0.1:0",
                            "--metrics", "127.0.0.1:0", "--lifespan", "off",
                            "--timeout-request-head", str(HEAD_DEADLINE),
                            "--max-restarts", "3", "--min-uptime", "2",
                            "--backoff-base", "0.05", "--backoff-max", "0.3",
                            env={"PYTHONDONTWRITEBYTECODE": "1"})
    status = runner.wait_serving(3)
    address = runner.address()
    host, _, port = status["primary"]["endpoints"][0].rpartition(":")
    endpoint = (host, int(port))
    pid = {w["index"]: w["pid"] for w in status["workers"]}
    assert http_get(endpoint, "/readyz") == (200, "ready: 3 of 3 workers serving\n")

    with Load(address, concurrency=4, duration=100, keep_records=True,
              client=HttpClient("/", keep_alive=False)) as load:
        load.wait_more(50, "load before the faults")

        # Slot 2 crash-loops from here on: its replacement cannot import.  Its
        # worker is stopped gracefully (it finishes what it took) and is gone
        # before the other faults begin.
        app.write_text(BROKEN_APP)
        os.kill(pid[2], signal.SIGTERM)
        runner.wait_status(lambda s: s["primary"].get("degraded") == 1
                           and pid[2] not in {w["pid"] for w in s["workers"]},
                           "worker 2 gone, its slot failing")
        slow = Slowloris(address)

        # Worker 0 runs out of fds: a small room left, more idle connections
        # held than fit.  The head deadline closes them, and it has room again.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.prlimit(pid[0], resource.RLIMIT_NOFILE, (fd_count(pid[0]) + ROOM, hard))
        held = [socket.create_connection(address, timeout=10) for _ in range(HELD)]
        try:
            wait_until(lambda: at_fd_limit(endpoint).get("0") == 1.0, 15,
                       "worker 0 at its fd limit")
            flooded = flood(endpoint)
            answers = [status_line(runner.socket_path, line) for line in BAD_LINES]
        finally:
            for sock in held:
                sock.close()
        wait_until(lambda: at_fd_limit(endpoint).get("0") == 0.0, 15,
                   "worker 0 with room again")
        resource.prlimit(pid[0], resource.RLIMIT_NOFILE, (soft, hard))
        crash_loop = runner.wait_status(
            lambda s: s["primary"].get("degraded") == 1 and any(
                c["index"] == 2 and c["quick_deaths"] >= 3
                for c in s["primary"].get("crash_loops", [])),
            "slot 2 in a crash loop", timeout=30)
        load.wait_more(100, "load through the faults")
        slow.join()

        app.write_text(PID_APP)
        after = runner.wait_serving(3, timeout=30)
        load.wait_more(50, "load after the fix")
    report = load.report()

    # The primary and the healthy workers never stopped.
    assert runner.proc.proc.poll() is None and after["primary"]["pid"] == runner.pid
    assert {w["index"]: w["pid"] for w in after["workers"]}.items() >= {
        0: pid[0], 1: pid[1]}.items(), (pid, after["workers"])
    assert http_get(endpoint, "/readyz") == (200, "ready: 3 of 3 workers serving\n")
    # Every flood client and every bad line was answered.
    assert flooded == [b"HTTP/1.1 200 OK"] * FLOOD
    assert all(isinstance(a.get("error"), str) for a in answers), answers
    # Each slowloris client was closed at the deadline, not before, not long after.
    assert len(slow.closed_after) == SLOWLORIS
    assert all(HEAD_DEADLINE - 0.05 <= t <= HEAD_DEADLINE + 5 and line.startswith(b"HTTP/1.1 408")
               for t, line in slow.closed_after), slow.closed_after
    # Lost: at most what the kernel cut off as worker 0 hit its limit, each a
    # reset or a close, never a timeout.
    failures = [r.detail for r in report.failures()]
    assert len(failures) <= 2 * WINDOW, failures
    assert all("Timeout" not in detail and "timed out" not in detail for detail in failures), \
        failures
    figures(sent=report.sent, answered=report.answered, failed=report.failed,
            failures=sorted(set(failures)), flood=FLOOD, bad_lines=len(BAD_LINES),
            slowloris=SLOWLORIS, crash_loop_deaths=max(
                c["quick_deaths"] for c in crash_loop["primary"]["crash_loops"]),
            rate=f"{report.rate:.0f}/s")
