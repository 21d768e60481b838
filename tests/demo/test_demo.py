"""``python -m fastfork demo``: every part of its output checked against what really happened.

The demo runs as a subprocess in its own session.  With ``--step`` it waits
for Enter after parts 2 and 5, which is when the test looks at the real
processes (parent pids, who holds the listening socket) while they are alive.
"""

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.harness import PY, ROOT, session_pids

DEMO = [sys.executable, "-m", "fastfork", "demo"]
WAIT = 15.0

LISTENING = re.compile(r"listening\s+worker (\d+) \(pid (\d+)\) listens on 127\.0\.0\.1:(\d+)$")
FORK = re.compile(r"fork\s+worker (\d+): pid (\d+), index (\d+)")
REQUEST = re.compile(r"request (\d+)\s+-> worker (\d+) \(pid (\d+)\): "
                     r"\"hello from worker (\d+) \(pid (\d+)\)\"$")
SERVED = re.compile(r"worker (\d+) \(pid (\d+)\)\s+served (\d+)")
EXIT_STOPPED = re.compile(r"exit\s+worker (\d+) \(pid (\d+)\): code 0, signal None, "
                          r"stopped by the primary$")


class DemoProcess:
    """``python -m fastfork demo ARGS`` in its own session, its lines read on threads."""

    def __init__(self, args, impl=PY):
        self.proc = subprocess.Popen(DEMO + list(args), cwd=ROOT, env=impl.env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.lines, self.errors = [], []
        self.done = False
        self.cursor = 0
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.errors),
                                          daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read(self, stream, into):
        for line in stream:
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            if into is self.lines:
                self.done = True
            self._cond.notify_all()

    def output(self):
        return "\n".join(self.lines + ["-- stderr --"] + self.errors)

    def expect(self, pattern, timeout=WAIT):
        """The next output line (from the cursor on) matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for number in range(self.cursor, len(self.lines)):
                    match = regex.search(self.lines[number])
                    if match:
                        self.cursor = number + 1
                        return match
                self.cursor = len(self.lines)
                remaining = deadline - time.monotonic()
                if self.done or remaining <= 0:
                    raise AssertionError(f"no line matching {pattern!r}; output:\n{self.output()}")
                self._cond.wait(remaining)

    def expect_n(self, pattern, count):
        return [self.expect(pattern) for _ in range(count)]

    def enter(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def wait_exit(self, timeout=WAIT):
        code = self.proc.wait(timeout)
        for thread in self._threads:
            thread.join(5)
        return code

    def close(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def start_demo():
    started = []

    def start(*args, impl=PY):
        demo = DemoProcess(args, impl)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.close()


def ppid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise AssertionError(f"no PPid in /proc/{pid}/status")


def port_sockets(port):
    """``{inode: tcp state}`` of every socket bound to 127.0.0.1:``port`` ("0A" = listening)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {fields[9]: fields[3] for fields in rows if fields[1] == want and fields[9] != "0"}


def socket_inodes(pid):
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


def unix_socket_inodes():
    with open("/proc/net/unix") as f:
        return {line.split()[6] for line in f.readlines()[1:]}


def holds_socket(pid, inode):
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:
            pass
    return False


def no_leftovers(demo):
    alive, _ = session_pids(demo.pid)
    assert alive == [], f"processes left behind: {alive}"


# -- the scripted demo ---------------------------------------------------------------------

def test_walkthrough(start_demo, impl):
    """Each part of the scripted demo, checked against the real processes."""
    impl.backend       # the Cython test fails if its build is missing
    demo = start_demo("--workers", "3", "--port", "0", "--no-color", "--step", impl=impl)

    # 1-2: the port, the primary, its workers on one port.
    port = int(demo.expect(r"port 0: picked the free port (\d+)$").group(1))
    assert int(demo.expect(r"primary\s+pid (\d+):").group(1)) == demo.pid
    forks = {int(m[1]): (int(m[2]), int(m[3])) for m in demo.expect_n(FORK.pattern + "$", 3)}
    assert sorted(forks) == [1, 2, 3]
    assert sorted(index for _, index in forks.values()) == [0, 1, 2]
    pids = {wid: pid for wid, (pid, _) in forks.items()}
    assert len(set(pids.values())) == 3
    for match in demo.expect_n(LISTENING.pattern, 3):
        assert pids[int(match[1])] == int(match[2])
        assert int(match[3]) == port
    demo.expect(r"only the primary \(pid %d\) bound it" % demo.pid)
    demo.expect(r"press Enter")
    # Paused: the workers are alive children of the primary, and the listening
    # socket is held by the primary alone.
    bound = port_sockets(port)
    listening = [inode for inode, state in bound.items() if state == "0A"]
    assert len(listening) == 1 and holds_socket(demo.pid, listening[0])
    unix = unix_socket_inodes()
    for pid in pids.values():
        assert ppid(pid) == demo.pid
        # No client is connected yet: a worker's sockets are its Unix channels to
        # the primary and nothing else (no copy of the port's socket, bound or not).
        assert socket_inodes(pid) <= unix, f"worker {pid} holds a TCP socket"
    demo.enter()

    # 3: round-robin in connection order.
    requests = [demo.expect(REQUEST.pattern) for _ in range(6)]
    assert [int(m[1]) for m in requests] == [1, 2, 3, 4, 5, 6]
    order = [int(m[2]) for m in requests]
    by_index = [wid for wid, _ in sorted(forks.items(), key=lambda item: item[1][1])]
    assert order == by_index * 2
    for m in requests:
        assert int(m[2]) == int(m[4]) and pids[int(m[2])] == int(m[3]) == int(m[5])
    demo.expect(r"handed them out in turn: %s\.$" % ", ".join(map(str, order)))

    # 4: each worker's own counter, and the primary's total.
    counts = {int(m[1]): int(m[3]) for m in demo.expect_n(SERVED.pattern, 3)}
    assert counts == {wid: order.count(wid) for wid in pids}
    total = demo.expect(r"primary\s+\(pid (\d+)\)\s+total\s+(\d+)")
    assert int(total[1]) == demo.pid
    assert int(total[2]) == sum(counts.values()) == len(requests)

    # 5: a worker killed, re-forked with the same index and a new id.
    killed = demo.expect(r"killing worker (\d+) \(pid (\d+)\) with SIGKILL")
    victim, victim_pid = int(killed[1]), int(killed[2])
    assert pids[victim] == victim_pid
    victim_index = forks[victim][1]
    demo.expect(r"exit\s+worker %d \(pid %d, index %d\): code None, signal SIGKILL$"
                % (victim, victim_pid, victim_index))
    spare = demo.expect(FORK.pattern + "$")
    spare_id, spare_pid = int(spare[1]), int(spare[2])
    assert int(spare[3]) == victim_index
    demo.expect(r"^\s+replaces worker %d \(pid %d\): same index, new id and pid$"
                % (victim, victim_pid))
    assert spare_id not in pids and spare_pid != victim_pid
    demo.expect(r"listening\s+worker %d \(pid %d\)" % (spare_id, spare_pid))
    demo.expect(r"press Enter")
    assert ppid(spare_pid) == demo.pid
    assert not os.path.exists(f"/proc/{victim_pid}") or ppid(victim_pid) != demo.pid
    live = {wid: pid for wid, pid in pids.items() if wid != victim}
    live[spare_id] = spare_pid
    for pid in live.values():
        assert ppid(pid) == demo.pid
    demo.enter()
    again = [demo.expect(REQUEST.pattern) for _ in range(3)]
    assert [int(m[1]) for m in again] == [7, 8, 9]
    assert sorted(int(m[2]) for m in again) == sorted(live)      # one full rotation
    for m in again:
        assert live[int(m[2])] == int(m[3])
    demo.expect(r"The replacement, worker %d \(pid %d\), answered 1 of them"
                % (spare_id, spare_pid))

    # 6: every worker stopped and reaped, exit 0, nothing left.
    stopped = {int(m[1]): int(m[2]) for m in demo.expect_n(EXIT_STOPPED.pattern, 3)}
    assert stopped == live
    demo.expect(r"every worker exited and was reaped; no child process is left\.$")
    demo.expect(r"^done: 4 workers forked \(1 re-forked\), 9 requests answered; "
                r"the primary exits 0 after")
    assert demo.wait_exit() == 0
    assert demo.errors == []
    no_leftovers(demo)


def usable_cpus():
    env = PY.env()
    out = subprocess.run([sys.executable, "-c", "import fastfork, json, os; "
                          "print(json.dumps([fastfork.usable_cpus(), os.cpu_count()]))"],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_defaults_one_worker_per_core(start_demo):
    """No --workers: one worker per usable core; --requests M need not be a whole round."""
    cores, cpu_count = usable_cpus()
    demo = start_demo("--port", "0", "--requests", "5")
    line = demo.expect(r"usable cores: (\d+)(?: \(os\.cpu_count\(\) says (\d+);)?")
    assert int(line[1]) == cores
    assert line[2] == (None if cpu_count == cores else str(cpu_count))
    demo.expect(r"so the primary forks %d workers?, one per core\.$" % cores)
    forks = {int(m[1]): int(m[3]) for m in demo.expect_n(FORK.pattern + "$", cores)}
    order = [int(m[2]) for m in (demo.expect(REQUEST.pattern) for _ in range(5))]
    by_index = sorted(forks, key=forks.get)
    assert order == (by_index * 5)[:5]
    counts = {int(m[1]): int(m[3]) for m in demo.expect_n(SERVED.pattern, cores)}
    assert counts == {wid: order.count(wid) for wid in forks}
    assert int(demo.expect(r"total\s+(\d+)")[1]) == 5
    demo.expect(r"^done: %d workers forked \(1 re-forked\), %d requests answered; "
                r"the primary exits 0" % (cores + 1, 5 + cores))
    assert demo.wait_exit() == 0
    assert "\033[" not in demo.output()      # stdout is a pipe: no colors
    no_leftovers(demo)


def run_on_terminal(args):
    """Run the demo with stdout on a pseudo-terminal; returns (exit code, output)."""
    master, slave = pty.openpty()
    env = PY.env()
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(DEMO + args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=subprocess.PIPE, start_new_session=True)
    os.close(slave)
    data, deadline = b"", time.monotonic() + WAIT
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], deadline - time.monotonic())[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:          # EIO: the demo closed the terminal
                    break
                if not chunk:
                    break
                data += chunk
        code = proc.wait(WAIT)
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert session_pids(proc.pid)[0] == []
    return code, data.decode()


def test_colors_only_on_a_terminal():
    code, text = run_on_terminal(["--port", "0", "--workers", "max"])
    assert code == 0 and "\033[1m1. One process = one core\033[0m" in text
    assert re.search(r"\033\[\d+mworker 1\033\[0m", text)
    code, text = run_on_terminal(["--port", "0", "--workers", "max", "--no-color"])
    assert code == 0 and "1. One process = one core" in text and "\033[" not in text


# -- --serve: the reference HTTP server ---------------------------------------------------

class Client:
    """A loopback HTTP client connection that keeps what it read past one response."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.data = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _more(self, what):
        chunk = self.sock.recv(4096)
        assert chunk, f"connection closed inside a response {what}: {self.data!r}"
        self.data += chunk

    def response(self, head_only=False):
        """The next HTTP response: ``(status, headers, body)``."""
        while b"\r\n\r\n" not in self.data:
            self._more("head")
        head, _, self.data = self.data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers["content-length"])
        while len(self.data) < length:
            self._more("body")
        body, self.data = self.data[:length], self.data[length:]
        return status, headers, body.decode()

    def assert_closed(self, timeout=WAIT):
        """The server closes the connection, with nothing more sent."""
        self.sock.settimeout(timeout)
        assert self.data == b"" and self.sock.recv(4096) == b""


def start_server(start_demo, workers, *extra, impl=PY):
    demo = start_demo("--serve", "--port", "0", "--workers", str(workers), *extra, impl=impl)
    pids = {int(m[1]): int(m[2]) for m in demo.expect_n(LISTENING.pattern, workers)}
    ready = demo.expect(r"^ready: %d workers? serving http://127\.0\.0\.1:(\d+)/" % workers)
    port = int(ready[1])
    return demo, port, pids


def hello(body, pids):
    match = re.fullmatch(r"hello from worker (\d+) \(pid (\d+)\)\n", body)
    assert match, body
    assert pids[int(match[1])] == int(match[2])
    return int(match[1])


GET = "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n"


def test_serve_http(start_demo, impl):
    """Every worker answers; keep-alive, close, pipelining, HTTP/1.0, HEAD, bodies, errors."""
    impl.backend       # the Cython test fails if its build is missing
    demo, port, pids = start_server(start_demo, 2, impl=impl)

    # Connection: close, one connection after another: every worker answers, in turn.
    seen = []
    for _ in range(4):
        with Client(port) as client:
            client.send(GET.format("Connection: close\r\n"))
            status, headers, body = client.response()
            assert (status, headers["connection"]) == (200, "close")
            seen.append(hello(body, pids))
            client.assert_closed()
    assert seen == [1, 2, 1, 2]

    with Client(port) as client:
        # Keep-alive: the same worker answers every request of one connection.
        answers = set()
        for _ in range(3):
            client.send(GET.format(""))
            status, headers, body = client.response()
            assert status == 200 and "connection" not in headers
            answers.add(hello(body, pids))
        # HEAD: the same head, no body; a request body is read and skipped,
        # even when it arrives in pieces.
        client.send("HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = client.response(head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0 and body == ""
        client.send("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
        client.send("56789\r\n")          # a stray empty line after a body is allowed
        answers.add(hello(client.response()[2], pids))
        # Pipelined: two requests in one write, answered in order, then closed.
        client.send(GET.format("") + GET.format("Connection: close\r\n"))
        answers.add(hello(client.response()[2], pids))
        status, headers, body = client.response()
        assert headers["connection"] == "close"
        answers.add(hello(body, pids))
        client.assert_closed()
        assert len(answers) == 1

    # HTTP/1.0 closes unless it asks for keep-alive, which the answer then confirms.
    with Client(port) as client:
        client.send("GET / HTTP/1.0\r\n\r\n")
        assert client.response()[1]["connection"] == "close"
        client.assert_closed()
    with Client(port) as client:
        for _ in range(2):
            client.send("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert client.response()[1]["connection"] == "keep-alive"

    # A malformed request: 400 and the connection closed.
    with Client(port) as client:
        client.send("NONSENSE\r\n\r\n")
        status, headers, _ = client.response()
        assert (status, headers["connection"]) == (400, "close")
        client.assert_closed()

    demo.proc.send_signal(signal.SIGTERM)
    assert demo.wait_exit() == 0
    demo.expect(r"no child process is left")
    assert demo.errors == []
    no_leftovers(demo)


@pytest.mark.parametrize("policy", ["none", "reuseport"])
def test_serve_other_policies(start_demo, policy):
    """Under none/reuseport the kernel picks the worker; each answer comes from a real one."""
    demo, port, pids = start_server(start_demo, 2, "--policy", policy)
    with Client(port) as client:
        client.send(GET.format("") * 2)
        assert hello(client.response()[2], pids) == hello(client.response()[2], pids)
    for _ in range(4):
        with Client(port) as client:
            client.send(GET.format("Connection: close\r\n"))
            hello(client.response()[2], pids)
            client.assert_closed()
    demo.proc.send_signal(signal.SIGTERM)
    assert demo.wait_exit() == 0
    no_leftovers(demo)


def test_sigterm_closes_idle_and_finishes_busy(start_demo):
    """SIGTERM: an idle keep-alive connection is closed at once (not after the
    graceful timeout); a request in progress is answered with Connection: close."""
    demo, port, pids = start_server(start_demo, 1, "--graceful-timeout", "120")
    with Client(port) as idle, Client(port) as busy:
        for client in (busy, idle):            # both attached to the one worker
            client.send(GET.format(""))
            hello(client.response()[2], pids)
        busy.send("GET / HTTP/1.1\r\nHost: t\r\n")
        # The worker reads the busy connection's bytes before this answer goes
        # out (both are ready in the same turn of its loop, or it read them earlier).
        idle.send(GET.format(""))
        hello(idle.response()[2], pids)
        demo.proc.send_signal(signal.SIGTERM)
        idle.assert_closed(timeout=30)         # well before the 120 s graceful timeout
        busy.send("\r\n")
        status, headers, body = busy.response()
        assert status == 200 and headers["connection"] == "close"
        hello(body, pids)
        busy.assert_closed()
    assert demo.wait_exit(timeout=30) == 0
    no_leftovers(demo)


# -- bad options -------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "worker count must be a positive integer or 'max', got '0'"),
    (["--workers", "-1"], "worker count must be a positive integer or 'max', got '-1'"),
    (["--workers", "abc"], "worker count must be a positive integer or 'max', got 'abc'"),
    (["--port", "70000"], "port must be a number in 0..65535 (0 picks a free port), got '70000'"),
    (["--port", "-1"], "port must be a number in 0..65535 (0 picks a free port), got '-1'"),
    (["--port", "abc"], "port must be a number in 0..65535 (0 picks a free port), got 'abc'"),
    (["--requests", "0"], "request count must be a positive integer, got '0'"),
    (["--policy", "fifo"], "argument --policy: invalid choice: 'fifo'"),
], ids=["workers-0", "workers-negative", "workers-abc", "port-too-big", "port-negative",
        "port-abc", "requests-0", "policy"])
def test_bad_option(args, message):
    check_usage_error(args, message)


def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        check_usage_error(["--port", str(port)], f"port {port} on 127.0.0.1 is already in use")


def check_usage_error(args, message):
    proc = subprocess.Popen(DEMO + args, cwd=ROOT, env=PY.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, (out, err)
    assert out == ""                     # it stopped before forking or printing anything
    assert len(err.splitlines()) == 1 and message in err, err
    alive, _ = session_pids(proc.pid)
    assert alive == []


def test_output_piped_into_head_ends_the_demo():
    """`python -m fastfork demo | head -3`: the reader leaves, the demo stops at once."""
    proc = subprocess.Popen([sys.executable, "-m", "fastfork", "demo", "--port", "0",
                             "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=PY.env(), cwd=ROOT, start_new_session=True)
    try:
        for _ in range(3):
            assert proc.stdout.readline()
        proc.stdout.close()                  # what head does after its lines
        # Well under the demo's own 10 s waits: it reacted to the closed pipe,
        # it did not time out waiting for events it failed to print.
        code = proc.wait(5)
        assert code in (0, 1), proc.stderr.read()
        alive, _ = session_pids(proc.pid)
        assert alive == [], f"processes left behind: {alive}"
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc.stderr.close()
