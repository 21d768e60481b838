"""Fault and load tests: attack a running cluster and count (issue 6).

Each test drives real processes on loopback (tests/apps/fault_app.py) with
bounded, self-stopping load (tests/loadgen.py) and prints its figures (sent,
answered, failed, fds before/after) straight to the terminal, so a CI log
shows them whether or not pytest captures output.
"""

import array
import ctypes
import json
import os
import random
import signal
import socket
import struct
import time
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from fastfork.handoff import control, wire
from fastfork.primary import arbiter, messages
from tests.harness import (ClusterProcess, ROOT, cpu_seconds, fd_count, http_get, request,
                           session_pids, wait_until)
from tests.implementations import DEFAULT
from tests.loadgen import Load

FAULT_APP = os.path.join(ROOT, "tests", "apps", "fault_app.py")
WINDOW = wire.DEFAULT_WINDOW

# Tests that are not about the hot path run once, on the build a user gets
# (tests.implementations.DEFAULT); the hot-path tests run on both through the
# ``impl`` fixture, strictly.

# The issue asks for 20 s of kills and of reloads.  These run 8 s each (kills
# on both implementations) because the whole suite must stay under 10 minutes
# on two cores: 16 kills per implementation (about 60 reloads), each checked
# on its own, where 20 s would only repeat the same checks.
KILL_DURATION = 8.0
KILL_INTERVAL = 0.5
KILL_CONCURRENCY = 2 * WINDOW     # more clients than one window, so the bound bites
RELOAD_DURATION = 8.0

# The soak is 200,000 connections.  Measured here (2 cores, 16 client
# threads in this process) that takes 30 s per implementation on a quiet
# machine (6,700 connections a second) and 53 s with other test runs beside
# it: twice that is too much of the suite's budget, so the soak runs
# SOAK_CONNECTIONS after warm-up.  Over the full 200,000 the primary's fds and
# RSS did not move at all after warm-up; the workers' RSS rose by about
# 200 KiB over the first 25,000 (caches filling) and then not at all.
SOAK_WARMUP = 5_000
SOAK_CONNECTIONS = 30_000
SOAK_CONCURRENCY = 16
# Margins for "the same after as after warm-up": descriptors exactly; resident
# memory within these (allocator noise, never growth per connection: 30,000
# connections leaking even 32 bytes each would be 940 KiB).
SOAK_PRIMARY_RSS_MARGIN_KIB = 256
SOAK_WORKER_RSS_MARGIN_KIB = 512

# Out of fds: the primary's soft RLIMIT_NOFILE.  It uses 11 for itself and two
# workers (stdio, epoll, wakeup pipe, listener, two channels per worker),
# which leaves fewer free than the two workers' credit windows: a flood
# reaches the fd limit before the workers' credit runs out.
NOFILE = 24
AT_LIMIT_WINDOW = 2.0        # seconds of CPU measured while at the limit
MAX_CPU_AT_LIMIT = 0.5       # of one core: a bound against spinning, not a speed claim

# A pid no Linux process can have (PID_MAX_LIMIT is 2**22): kill() on it fails.
FAKE_PID = 2 ** 22 + 1


# -- processes ---------------------------------------------------------------------------
@pytest.fixture
def start_cluster():
    """Start fault_app clusters on the default build; all are killed after the test."""
    started = []

    def start(*args, impl=DEFAULT):
        proc = ClusterProcess(list(args), impl=impl, script=FAULT_APP)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


def fault_cluster(factory, *args):
    return factory(*args, script=FAULT_APP)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def proc_state(pid):
    """The state letter of ``pid`` (R, S, T, Z...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def children(pid):
    """``(alive, zombies)``: pids of the children of ``pid``."""
    alive, zombies = [], []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                (zombies if fields[0] == "Z" else alive).append(int(entry))
    return sorted(alive), sorted(zombies)


def workers_view(proc):
    """Worker id -> {pid, index, listening} of workers forked and not yet exited,
    from the EVENT lines the primary printed so far."""
    live = {}
    for event in list(proc.events):
        kind = event["event"]
        if kind == "fork":
            live[event["id"]] = {"pid": event["pid"], "index": event["index"], "listening": False}
        elif kind == "listening" and event["id"] in live:
            live[event["id"]]["listening"] = True
        elif kind == "exit":
            live.pop(event["id"], None)
    return live


def listening(proc):
    return {wid: w for wid, w in workers_view(proc).items() if w["listening"]}


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438        # the same number on every Linux architecture


def held_client_ports(pid, server_port):
    """Client ports of the TCP connections process ``pid`` holds on ``server_port``.

    Each of its sockets is duplicated here with pidfd_getfd() and asked for its
    peer, then closed (the connection stays the worker's).  /proc/net/tcp
    would say the same but is read in seconds once TIME_WAIT fills it.
    """
    ports = set()
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                raise OSError(ctypes.get_errno(), f"pidfd_getfd({pid}, {name})")
            with socket.socket(fileno=fd) as sock:
                if sock.family != socket.AF_INET or sock.getsockname()[1] != server_port:
                    continue
                try:
                    ports.add(sock.getpeername()[1])
                except OSError:
                    pass           # the client already reset it
    finally:
        os.close(pidfd)
    return ports


def accept_backlog(pid, server_port):
    """Connections waiting in the accept queue of ``pid``'s listener on ``server_port``
    (a listener's tcpi_unacked), read through a pidfd_getfd copy of it."""
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            fd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                continue
            try:
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)            # not a socket
                continue
            with sock:
                if (sock.family != socket.AF_INET or sock.getsockname()[1] != server_port
                        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                    continue
                info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
                return struct.unpack_from("=I", info, 24)[0]
    finally:
        os.close(pidfd)
    raise AssertionError(f"no listener on port {server_port} in pid {pid}")


def log_lines(proc, start=0, contains=""):
    return [line for line in proc.lines[start:] if line.startswith("LOG ") and contains in line]


# ==========================================================================================
# 1. Kill under load
# ==========================================================================================
class Kill:
    def __init__(self, pid, stopped_at, held):
        self.pid, self.stopped_at, self.held = pid, stopped_at, held


def freeze_and_kill(pid, server_port):
    """SIGSTOP ``pid``, note which connections it holds, then SIGKILL it.

    Freezing first makes the snapshot exact: a stopped worker neither takes
    nor finishes a connection, so what it holds when killed is what it held
    when looked at.  Its unacknowledged connections are among them; the
    primary still has its own copy of those and must hand them to another
    worker, so they may not fail.
    """
    try:
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: proc_state(pid) in ("T", "t", "Z", None), 5, f"worker {pid} to stop")
        if proc_state(pid) not in ("T", "t"):
            return None
        stopped_at = time.monotonic()
        held = held_client_ports(pid, server_port)
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, FileNotFoundError):
        return None         # it died on its own in the meantime
    return Kill(pid, stopped_at, held)


@pytest.mark.slow
def test_kill_under_load(cluster_factory, impl, figures):
    proc = fault_cluster(cluster_factory, "--workers", "2", "--min-uptime", "0",
                         "--max-restarts", "1000000", "--log")
    address, _ = proc.wait_listening(2)
    fds_before = fd_count(proc.pid)
    load = Load(address, concurrency=KILL_CONCURRENCY, duration=KILL_DURATION + 20,
                keep_records=True).start()
    kills, vanished = [], []
    try:
        started = time.monotonic()
        for n in range(1, int(KILL_DURATION / KILL_INTERVAL) + 1):
            # Pacing the kills, not waiting for a condition.
            time.sleep(max(0.0, started + n * KILL_INTERVAL - time.monotonic()))
            killed = {k.pid for k in kills}
            ready = {wid: w for wid, w in listening(proc).items() if w["pid"] not in killed}
            if not ready:
                continue        # both killed and none back yet: the next tick kills
            oldest = ready[min(ready)]
            kill = freeze_and_kill(oldest["pid"], address[1])
            if kill is None:
                vanished.append(oldest["pid"])
            else:
                kills.append(kill)
        wait_until(lambda: len(listening(proc)) == 2, 15, "two workers listening again")
        # Some load on the healed cluster, then stop.
        healed_at = load.answered
        wait_until(lambda: load.answered >= healed_at + 200, 15, "load on the healed cluster")
    finally:
        load.stop()
        report = load.join()
    wait_until(lambda: fd_count(proc.pid) == fds_before, 5,
               f"the primary's fds back to {fds_before}")
    fds_after = fd_count(proc.pid)

    # Every failure must be a connection a killed worker held (received) when
    # it was killed: never one no worker had received.
    unexplained = [r for r in report.failures()
                   if not any(r.start <= k.stopped_at <= r.end and r.port in k.held
                              for k in kills)]
    held = [len(k.held) for k in kills]
    figures(sent=report.sent, answered=report.answered, failed=report.failed,
            kills=len(kills), held_at_kill_total=sum(held),
            held_at_kill_max=max(held, default=0), unexplained=len(unexplained),
            rate=f"{report.rate:.0f}/s", errors=dict(report.errors),
            fds_before=fds_before, fds_after=fds_after)
    assert not vanished, f"workers died before they were killed:\n{proc.output()[-6000:]}"
    assert len(kills) >= int(KILL_DURATION / KILL_INTERVAL) - 2, f"only {len(kills)} kills"
    assert report.answered > 0
    assert not unexplained, f"failed requests no killed worker held: {unexplained[:10]}"
    assert report.failed <= len(kills) * WINDOW, (
        f"{report.failed} failures for {len(kills)} kills exceed {WINDOW} per kill")
    assert fds_after == fds_before


# ==========================================================================================
# 2. Reload under load
# ==========================================================================================
@pytest.mark.slow
def test_reload_under_load(start_cluster, figures):
    proc = start_cluster("--workers", "2", "--graceful-timeout", "10")
    address, _ = proc.wait_listening(2)
    fds_before = fd_count(proc.pid)
    load = Load(address, concurrency=8, duration=RELOAD_DURATION + 40,
                keep_records=True).start()
    reloads = 0
    try:
        end = time.monotonic() + RELOAD_DURATION
        while time.monotonic() < end:
            old = set(workers_view(proc))
            proc.signal(signal.SIGHUP)

            def replaced():
                view = workers_view(proc)
                return (not old & set(view) and len(view) == 2
                        and all(w["listening"] for w in view.values()))

            wait_until(replaced, 20, f"reload {reloads + 1} to replace workers {sorted(old)}")
            reloads += 1
    finally:
        load.stop()
        report = load.join()
    wait_until(lambda: fd_count(proc.pid) == fds_before, 5,
               f"the primary's fds back to {fds_before}")
    figures(sent=report.sent, answered=report.answered, failed=report.failed,
            reloads=reloads, rate=f"{report.rate:.0f}/s", errors=dict(report.errors),
            fds_before=fds_before, fds_after=fd_count(proc.pid))
    assert reloads >= 2
    assert report.answered > 0
    assert report.failed == 0, f"failed during reloads: {report.failures()[:10]}"


# ==========================================================================================
# 3. Soak
# ==========================================================================================
def snapshot(pids):
    return {pid: (fd_count(pid), rss_kib(pid)) for pid in pids}


@pytest.mark.slow
def test_soak(cluster_factory, impl, figures):
    proc = fault_cluster(cluster_factory, "--workers", "2")
    address, events = proc.wait_listening(2)
    workers = sorted(e["pid"] for e in events)
    pids = [proc.pid] + workers
    idle_fds = {pid: fd_count(pid) for pid in pids}

    warm = Load(address, concurrency=SOAK_CONCURRENCY, max_requests=SOAK_WARMUP, duration=60).run()
    assert warm.failed == 0, str(warm)
    wait_until(lambda: {pid: fd_count(pid) for pid in pids} == idle_fds, 5,
               "fds back to idle after warm-up")
    after_warmup = snapshot(pids)

    soak = Load(address, concurrency=SOAK_CONCURRENCY, max_requests=SOAK_CONNECTIONS,
                duration=110).run()
    # A worker closes a connection's fd just after answering: give it a moment,
    # then compare (a leak shows in the assertions below, with the numbers).
    deadline = time.monotonic() + 5
    while ({pid: fd_count(pid) for pid in pids} != idle_fds
           and time.monotonic() < deadline):
        time.sleep(0.02)
    after_soak = snapshot(pids)
    assert sorted(e["pid"] for e in workers_view(proc).values()) == workers, \
        "a worker was replaced during the soak"

    figures(connections=soak.sent, answered=soak.answered, failed=soak.failed,
            rate=f"{soak.rate:.0f}/s", seconds=f"{soak.elapsed:.1f}",
            **{f"{'primary' if pid == proc.pid else 'worker'}{pid}":
               f"fds {after_warmup[pid][0]}->{after_soak[pid][0]} "
               f"rss {after_warmup[pid][1]}->{after_soak[pid][1]}KiB"
               for pid in pids})
    assert soak.sent == SOAK_CONNECTIONS
    assert soak.failed == 0, str(soak)
    for pid in pids:
        margin = SOAK_PRIMARY_RSS_MARGIN_KIB if pid == proc.pid else SOAK_WORKER_RSS_MARGIN_KIB
        (fds0, rss0), (fds1, rss1) = after_warmup[pid], after_soak[pid]
        assert fds1 == fds0, f"pid {pid}: {fds0} fds after warm-up, {fds1} after the soak"
        assert rss1 <= rss0 + margin, (
            f"pid {pid}: RSS grew from {rss0} to {rss1} KiB (margin {margin} KiB)")


# ==========================================================================================
# 4. Out of file descriptors
# ==========================================================================================
@pytest.mark.slow
def test_out_of_fds(cluster_factory, impl, figures):
    # The primary sends each connection on and keeps no copy, so what a dead
    # worker never read comes back to it as new fds: fewer free fds than a
    # window must still be enough (the spares the dispatcher keeps).  Stall
    # detection is off: a frozen worker would be found stalled and sent
    # nothing, where this test needs each to hold a window (stalls and fds:
    # tests/handoff/test_stalls.py).
    proc = fault_cluster(cluster_factory, "--workers", "2", "--nofile", str(NOFILE), "--log",
                         "--min-uptime", "0", "--stall-ms", "0")
    address, events = proc.wait_listening(2)
    workers = [e["pid"] for e in events]
    base = fd_count(proc.pid)
    assert 2 <= NOFILE - base < WINDOW, (
        f"the primary uses {base} fds: NOFILE={NOFILE} must leave 2..{WINDOW - 1} free")
    flood = []
    try:
        # Frozen workers read nothing: each gets one window, held by its
        # channel, and the rest waits in the kernel's backlog.
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        for _ in range(4 * WINDOW):
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(b"flood\n")
            flood.append(sock)
        wait_until(lambda: accept_backlog(proc.pid, address[1]) == 2 * WINDOW, 5,
                   "both windows sent, the rest in the backlog")
        assert fd_count(proc.pid) == base       # in flight, and no copy kept

        # Killed, worker 0 leaves WINDOW unread connections on its channel.
        lines_at = len(proc.lines)
        os.kill(workers[0], signal.SIGKILL)
        proc.wait_event("exit", pid=workers[0])
        assert proc.proc.poll() is None, f"the primary died:\n{proc.output()}"
        cpu_at = cpu_seconds(proc.pid)
        time.sleep(AT_LIMIT_WINDOW)          # measuring, not waiting for something
        cpu = (cpu_seconds(proc.pid) - cpu_at) / AT_LIMIT_WINDOW
        os.kill(workers[1], signal.SIGCONT)

        replies = []
        for sock in flood:
            sock.settimeout(15)
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(64)
                if not chunk:
                    break
                data += chunk
            replies.append(data)
        wait_until(lambda: len(listening(proc)) == 2, 15, "the killed worker replaced")
        after = Load(address, concurrency=4, max_requests=200, duration=30).run()
        wait_until(lambda: fd_count(proc.pid) == base, 5, f"the primary's fds back to {base}")
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        for sock in flood:
            sock.close()
    figures(nofile=NOFILE, fds_idle=base, free_fds=NOFILE - base, window=WINDOW,
            cpu_after_kill=f"{cpu:.1%}", flood=len(flood),
            flood_answered=sum(r == b"flood\n" for r in replies),
            sent_after=after.sent, answered_after=after.answered, failed_after=after.failed,
            fds_after=fd_count(proc.pid))
    assert cpu < MAX_CPU_AT_LIMIT, f"the primary used {cpu:.0%} of a core at its fd limit"
    assert not log_lines(proc, lines_at, "Traceback"), proc.output()[-4000:]
    assert replies == [b"flood\n"] * len(flood)
    assert after.failed == 0 and after.answered == 200, str(after)


# A worker out of fds (issue 24, fault 1): the workers' soft RLIMIT_NOFILE,
# and how many connections the test holds open: more than both workers
# together have fds for (each uses about 15 for itself), so both reach it.
WORKER_NOFILE = 64
HELD_PAST_THE_LIMIT = 150



def fd_limit_gauges(endpoint, parser):
    """``{worker index: value}`` of the metric fastfork_worker_at_fd_limit."""
    status, body = http_get(endpoint, "/metrics")
    assert status == 200, body
    return {sample.labels["index"]: sample.value
            for family in parser.text_string_to_metric_families(body)
            for sample in family.samples if sample.name == "fastfork_worker_at_fd_limit"}


def test_a_worker_out_of_fds_is_sent_connections_again_once_it_has_room(cluster_factory, impl,
                                                                        figures):
    # The fds passed to a worker past its limit arrive cut off (MSG_CTRUNC):
    # the kernel closes what it could not install.  The worker must still
    # give that credit back and say it is at its limit, the primary must
    # send it nothing while it is, and send again once it has room.
    parser = pytest.importorskip("prometheus_client.parser",
                                 reason="the metrics extra is not installed")
    proc = fault_cluster(cluster_factory, "--workers", "2", "--worker-nofile",
                         str(WORKER_NOFILE), "--metrics", "127.0.0.1:0", "--min-uptime", "0")
    endpoint = proc.wait_event("endpoint")["address"]
    address, events = proc.wait_listening(2)
    workers = {e["pid"] for e in events}
    assert request(address, "before") == "before"
    held = []
    readyz = []
    try:
        # Never a full line: each connection stays open in its worker.
        for _ in range(HELD_PAST_THE_LIMIT):
            held.append(socket.create_connection(address, timeout=10))

        def not_ready():
            readyz.append(http_get(endpoint, "/readyz"))
            return readyz[-1][0] == 503
        wait_until(not_ready, 15, "/readyz to say 503 with both workers at their fd limit")
        assert "file-descriptor limit" in readyz[-1][1], readyz[-1]
        assert fd_limit_gauges(endpoint, parser) == {"0": 1.0, "1": 1.0}
        fds_at_limit = sorted(fd_count(pid) for pid in workers)
    finally:
        for sock in held:
            sock.close()
    # The workers see their connections close and have room again.
    wait_until(lambda: http_get(endpoint, "/readyz")[0] == 200, 15, "/readyz back to 200")
    wait_until(lambda: fd_limit_gauges(endpoint, parser) == {"0": 0.0, "1": 0.0}, 5,
               "the metrics to show no worker at its fd limit")
    answered_by = set()
    for i in range(4 * WINDOW):
        reply = request(address, "whoami", timeout=10)
        answered_by.add(int(reply.split()[1]))
    # Both original workers answer: neither died of the cut-off messages.
    assert answered_by == workers, (answered_by, workers)
    assert not [e for e in proc.events if e["event"] == "exit"], proc.output()[-4000:]
    figures(worker_nofile=WORKER_NOFILE, held=len(held), fds_at_limit=fds_at_limit,
            readyz_at_limit=readyz[-1][1].strip(), answered_after=4 * WINDOW)


# ==========================================================================================
# 5. Bad messages
# ==========================================================================================
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
    | st.sampled_from([float("inf"), float("nan"), 10 ** 30, -1]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)
# The fields the primary's handlers read, and any other.
message_fields = st.sampled_from(["id", "address", "backlog", "open", "served", "data"]) | st.text(
    max_size=8)
message_types = st.sampled_from(sorted(messages.HANDLERS)) | st.text(max_size=10)
# Addresses a fake worker may ask for: never one that binds outside loopback.
listen_addresses = (st.sampled_from(["127.0.0.1:0", ["127.0.0.1", 0], "", "nonsense",
                                     "127.0.0.1:http", "127.0.0.1:99999", "unix:", [1, 2, 3]])
                    | st.none() | st.floats() | st.booleans())


@st.composite
def worker_messages(draw):
    """Messages a (buggy) worker could send: well-formed JSON of any shape."""
    message = draw(st.dictionaries(message_fields, json_values, max_size=5))
    message["t"] = draw(message_types)
    if message["t"] == "listen" or "address" in message:
        message["address"] = draw(listen_addresses)
    return message


def _json_bytes(message):
    # allow_nan: a worker's json.dumps writes NaN and Infinity unless told not to.
    return json.dumps(message).encode()


frames = st.one_of(
    st.binary(max_size=256),
    worker_messages().map(_json_bytes),
    # truncated frames: a well-formed message cut short
    st.tuples(worker_messages().map(_json_bytes), st.floats(0, 1)).map(
        lambda mf: mf[0][:int(len(mf[0]) * mf[1])]),
    # oversized frames, around the limit
    st.integers(control.MAX_MESSAGE - 16, control.MAX_MESSAGE + 64).map(
        lambda n: b'{"t":"msg","data":"' + b"x" * max(0, n - 21) + b'"}'),
    # deep nesting and huge numbers: what json.loads raises for these is not ValueError's usual
    st.integers(10, 60000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(4000, 6000).map(lambda n: b'{"t":"msg","data":' + b"9" * n + b"}"),
    st.sampled_from([b"", b"\xff", b'{"t":"online"}\x00', b"null", b'{"t":1}']),
)


@settings(max_examples=300, deadline=None, database=None)
@given(frames)
@example(b"[" * 100000)
@example(b'{"t":"msg","data":' + b"1" * 5000 + b"}")
def test_decode_raises_only_message_error(data):
    try:
        message = control.decode(data)
    except control.MessageError as exc:
        assert str(exc)
    else:
        assert isinstance(message, dict) and isinstance(message["t"], str)


@settings(max_examples=100, deadline=None, database=None)
@given(worker_messages())
def test_decode_rejects_every_truncation(message):
    data = json.dumps(message, separators=(",", ":")).encode()
    assert control.decode(data)["t"] == message["t"]
    for cut in range(len(data)):
        with pytest.raises(control.MessageError):
            control.decode(data[:cut])


def open_fds():
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


def spare_fds(count):
    """``count`` descriptors to pass over a channel (pipe ends; the caller closes them)."""
    fds = []
    while len(fds) < count:
        fds.extend(os.pipe())
    for fd in fds[count:]:
        os.close(fd)
    return fds[:count]


def send_frame(sock, data, nfds):
    fds = spare_fds(nfds)
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sock.sendmsg([data], anc)
    finally:
        for fd in fds:
            os.close(fd)


@settings(max_examples=200, deadline=None, database=None)
@given(frames, st.integers(0, control.MAX_FDS + 4))
def test_channel_recv_raises_only_message_error_and_leaks_nothing(data, nfds):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        ours.setblocking(False)
        before = open_fds()
        send_frame(theirs, data, nfds)
        channel = control.ControlChannel(ours)
        try:
            message, fds = channel.recv()
        except control.MessageError:
            pass
        else:
            for fd in fds:
                os.close(fd)
            if message is None:
                assert data == b"" and nfds == 0
            else:
                assert len(fds) == nfds <= control.MAX_FDS
        assert open_fds() == before, "a descriptor sent with the frame was not closed"


def attach_fake_worker(cluster):
    """Register a worker through the real ``spawn_worker`` without forking.

    Returns the worker and our ends of its channels ``(data, control)``.  Its
    pid is one no process has, so replacing it (SIGKILL) reaches no one.
    """
    kept = []
    real_socketpair = socket.socketpair

    def socketpair(*args):
        pair = real_socketpair(*args)
        kept.append(pair[1].dup())       # spawn_worker closes the worker's end
        return pair

    with mock.patch.object(arbiter.socket, "socketpair", socketpair), \
            mock.patch.object(arbiter.os, "fork", return_value=FAKE_PID):
        worker = cluster.spawn_worker(0)
    data, ctl = kept
    return worker, data, ctl


def test_read_control_never_raises(impl):
    """Whatever a worker writes on its control channel, the primary's reader
    returns; a bad message disconnects and replaces that worker, and every
    descriptor that came with it is closed."""
    cluster = arbiter.Cluster(lambda: None, 1, pure=impl.pure)
    cluster._ensure_started()
    seen = {"replaced": 0, "kept": 0}
    try:
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(st.lists(st.tuples(frames, st.integers(0, control.MAX_FDS + 2)),
                        min_size=1, max_size=4))
        @example([(b'{"t":"heartbeat","open":Infinity}', 0)])
        @example([(b'{"t":"listen","id":1,"address":"127.0.0.1:0","backlog":1e300}', 1)])
        @example([(b'{"t":"online"}', 2), (b"", 0)])
        def check(frames_and_fds):
            before = open_fds()
            worker, data_end, ctl_end = attach_fake_worker(cluster)
            try:
                # Non-blocking: four near-64 KiB frames overflow the channel's
                # buffer, and a blocking send would wait for a reader that is us.
                ctl_end.setblocking(False)
                for data, nfds in frames_and_fds:
                    try:
                        send_frame(ctl_end, data, nfds)
                    except BlockingIOError:
                        messages.read_control(cluster, worker)   # let the primary read
                        if worker.control is None:
                            break
                        send_frame(ctl_end, data, nfds)
                messages.read_control(cluster, worker)     # must not raise
                bad = worker.control is None
                seen["replaced" if bad else "kept"] += 1
                if bad:
                    assert cluster._by_control_fd.get(ctl_end.fileno()) is not worker
                else:
                    # Everything was well-formed: the reader drained the channel.
                    with pytest.raises(BlockingIOError):
                        worker.control.recv()
            finally:
                cluster.forget_worker(worker)
                data_end.close()
                ctl_end.close()
                cluster.listeners.close(cluster.dispatcher)   # a fake worker may have asked for one
            assert open_fds() == before, "the primary kept a descriptor"

        check()
    finally:
        cluster._teardown()
    assert seen["replaced"] and seen["kept"], seen


# End to end: a worker writes garbage, the primary replaces it, the other serves.
CONTROL_KINDS = ["invalid-json", "not-object", "no-type", "unknown-type", "not-utf8",
                 "truncated", "oversized", "deep-nesting", "huge-int", "bad-backlog",
                 "heartbeat-overflow", "heartbeat-negative", "heartbeat-lag-nan",
                 "too-many-fds", "empty"]
DATA_KINDS = ["short", "long", "bad-type", "over-ack", "empty"]
# Well-formed but with descriptors nobody asked for: tolerated, nothing leaks.
TOLERATED = [("control", "fds-on-valid"), ("data", "ack-with-fds")]


@pytest.mark.slow
def test_bad_messages_end_to_end(cluster_factory, impl, figures):
    proc = fault_cluster(cluster_factory, "--workers", "2", "--min-uptime", "0",
                         "--graceful-timeout", "2", "--log")
    address, _ = proc.wait_listening(2)
    base = fd_count(proc.pid)
    results = {}
    cases = ([("control", k) for k in CONTROL_KINDS] + [("data", k) for k in DATA_KINDS])
    for channel, kind in cases + TOLERATED:
        tolerated = (channel, kind) in TOLERATED
        before = listening(proc)
        reply = request(address, f"garbage {channel} {kind} {0 if tolerated else 30}")
        assert reply.startswith("ok "), reply
        culprit = int(reply.split()[1])
        (culprit_id,) = [wid for wid, w in before.items() if w["pid"] == culprit]
        # The culprit's loop is blocked: what the primary sends it now stays
        # unacknowledged and must reach the other worker instead.
        load = Load(address, concurrency=4, duration=30, keep_records=True).start()
        try:
            if tolerated:
                wait_until(lambda: load.answered >= 100, 15, "load after tolerated garbage")
            else:
                def replaced():
                    view = workers_view(proc)
                    return (culprit_id not in view and len(view) == 2
                            and all(w["listening"] for w in view.values()))
                wait_until(replaced, 15, f"worker {culprit} replaced after {channel} {kind}")
                healed = load.answered
                wait_until(lambda: load.answered >= healed + 50, 15, "load after replacement")
        finally:
            load.stop()
            report = load.join()
        assert proc.proc.poll() is None, f"the primary died on {channel} {kind}:\n{proc.output()}"
        wait_until(lambda: fd_count(proc.pid) == base, 5,
                   f"the primary's fds back to {base} after {channel} {kind}")
        exit_event = [e for e in proc.events if e["event"] == "exit" and e["id"] == culprit_id]
        how = ("kept" if tolerated else
               f"replaced(code={exit_event[0]['code']},signal={exit_event[0]['signal']})")
        results[f"{channel}:{kind}"] = f"{how},{report.answered}/{report.sent}"
        assert report.failed == 0, f"{channel} {kind}: {report} {report.failures()[:5]}"
        if tolerated:
            assert culprit_id in workers_view(proc), f"worker replaced for {channel} {kind}"
    figures(cases=len(results), fds_before=base, fds_after=fd_count(proc.pid), **results)


# ==========================================================================================
# 6. Slow and half-open clients
# ==========================================================================================
IDLE_CLIENTS = 200
TRICKLE_CLIENTS = 10
HALF_CLOSED_CLIENTS = 10
SLOW_PHASE = 3.0                      # seconds of trickling while normal load runs
SLOW_PRIMARY_RSS_MARGIN_KIB = 256


@pytest.mark.slow
def test_slow_and_half_open_clients(start_cluster, figures):
    proc = start_cluster("--workers", "2")
    address, events = proc.wait_listening(2)
    workers = [e["pid"] for e in events]
    # Baselines from the idle cluster (listening, no connection held), and
    # the warm-up waited out: a count taken while a worker is still closing
    # its last connection would be one too high for good.
    idle_fds = {pid: fd_count(pid) for pid in [proc.pid] + workers}
    Load(address, concurrency=4, max_requests=500, duration=30).run()   # warm-up
    wait_until(lambda: {pid: fd_count(pid) for pid in idle_fds} == idle_fds, 5,
               "the warm-up's connections all closed")
    fds_before, rss_before = idle_fds[proc.pid], rss_kib(proc.pid)
    worker_fds_before = sum(idle_fds[pid] for pid in workers)
    idle, trickle, half = [], [], []
    try:
        for _ in range(IDLE_CLIENTS):
            idle.append(socket.create_connection(address, timeout=10))
        for _ in range(TRICKLE_CLIENTS):
            trickle.append(socket.create_connection(address, timeout=10))
        for _ in range(HALF_CLOSED_CLIENTS):
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(b"half")
            sock.shutdown(socket.SHUT_WR)
            half.append(sock)
        # The workers took every connection (the primary keeps none).
        wait_until(lambda: sum(fd_count(pid) for pid in workers)
                   >= worker_fds_before + IDLE_CLIENTS + TRICKLE_CLIENTS, 30,
                   "the workers to hold the slow connections")
        load = Load(address, concurrency=4, duration=SLOW_PHASE, max_requests=100_000,
                    timeout=5).start()
        deadline = time.monotonic() + SLOW_PHASE
        while time.monotonic() < deadline:
            for sock in trickle:
                sock.sendall(b"x")
            time.sleep(1.0)                  # a byte a second: the pace is the test
        report = load.join()
        half_replies = []
        for sock in half:
            data = b""
            while True:
                chunk = sock.recv(64)
                if not chunk:
                    break
                data += chunk
            half_replies.append(data)
        # The primary holds a connection only until its worker acknowledges
        # it: once the last ack is in, it holds none of the slow ones.
        try:
            wait_until(lambda: fd_count(proc.pid) == fds_before, 5,
                       "the primary to hold none of the slow connections")
        except AssertionError:
            pass                             # the assertion below reports the numbers
        fds_during, rss_during = fd_count(proc.pid), rss_kib(proc.pid)
    finally:
        for sock in idle + trickle + half:
            sock.close()
    figures(idle=IDLE_CLIENTS, trickle=TRICKLE_CLIENTS, half_closed=HALF_CLOSED_CLIENTS,
            sent=report.sent, answered=report.answered, failed=report.failed,
            primary_fds=f"{fds_before}->{fds_during}",
            primary_rss=f"{rss_before}->{rss_during}KiB")
    assert report.failed == 0 and report.answered > 0, str(report)
    assert half_replies == [b"half\n"] * HALF_CLOSED_CLIENTS
    assert fds_during == fds_before
    assert rss_during <= rss_before + SLOW_PRIMARY_RSS_MARGIN_KIB


# ==========================================================================================
# 7. Primary death
# ==========================================================================================
@pytest.mark.parametrize("form", ["function", "node"])
def test_primary_sigkill_takes_every_worker(start_cluster, form, figures):
    proc = start_cluster("--workers", "3", "--form", form)
    _, events = proc.wait_listening(3)
    workers = [e["pid"] for e in events]
    assert children(proc.pid)[0] == sorted(workers)
    killed_at = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    # Zombies are dead: reaping orphans is init's business, not fastfork's.
    wait_until(lambda: all(proc_state(pid) in (None, "Z") for pid in workers), 2.0,
               f"every worker of the killed primary gone ({form} form)")
    gone_in = time.monotonic() - killed_at
    figures(form=form, workers=len(workers), gone_in=f"{gone_in * 1000:.0f}ms",
            session_left=len(session_pids(proc.pid)[0]))
    assert session_pids(proc.pid)[0] == []


# ==========================================================================================
# 8. Signal storms
# ==========================================================================================
STORM_SIGNALS = 60


def primary_state(proc, address):
    """The primary's own view: size and workers (asked through a worker)."""
    seen = len([e for e in proc.events if e["event"] == "state"])
    assert request(address, "state") == "sent"
    wait_until(lambda: len([e for e in proc.events if e["event"] == "state"]) > seen, 10,
               "the primary's state")
    return [e for e in proc.events if e["event"] == "state"][-1]


@pytest.mark.slow
def test_signal_storm_ends_consistent(start_cluster, figures):
    proc = start_cluster("--workers", "2", "--graceful-timeout", "5", "--min-uptime", "0")
    address, _ = proc.wait_listening(2)
    rng = random.Random(6)
    # Balanced so the cluster stays small on two cores whatever gets coalesced.
    storm = ([signal.SIGHUP] * (STORM_SIGNALS // 3) + [signal.SIGTTIN] * (STORM_SIGNALS // 3)
             + [signal.SIGTTOU] * (STORM_SIGNALS // 3))
    rng.shuffle(storm)
    for sig in storm:
        proc.signal(sig)
        time.sleep(rng.choice((0, 0.001, 0.005)))   # the storm's rhythm, not a wait

    def settled():
        state = primary_state(proc, address)
        ws = state["workers"]
        if (len(ws) == state["size"] and all(w["state"] == "listening" for w in ws)
                and not any(w["stopping"] for w in ws)):
            return state
        return None

    state = wait_until(settled, 30, "the worker set to settle after the storm")
    pids = sorted(w["pid"] for w in state["workers"])
    indices = sorted(w["index"] for w in state["workers"])
    wait_until(lambda: children(proc.pid) == (pids, []), 5,
               "the primary's children to be exactly its workers, no zombie")
    whoami = {request(address, "whoami").split()[1] for _ in range(4 * len(pids))}
    figures(signals=len(storm), size=state["size"], workers=len(pids), indices=indices,
            forks=len([e for e in proc.events if e["event"] == "fork"]),
            exits=len([e for e in proc.events if e["event"] == "exit"]),
            serving=len(whoami))
    assert indices == list(range(state["size"]))
    assert whoami <= {str(pid) for pid in pids}

    proc.signal(signal.SIGTERM)
    assert proc.wait_exit(20) == 0
    assert session_pids(proc.pid) == ([], [])
