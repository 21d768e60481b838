"""Policy least end to end: real primaries, workers and sockets on loopback.

Every test runs on both implementations (the ``impl`` fixture) and kills its
process session afterwards.  Where a test needs to know what the primary
counts, it asks the primary's control socket (what ``fastfork status`` shows)
and waits for the condition with a deadline.
"""

import collections
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import fastfork
from fastfork.operations.status_socket import request as control_request
from fastfork.settings import SettingError, Settings
from tests.harness import PY, request, wait_until
from tests.loadgen import Load
from tests.runner_harness import OPS_APP
from test_faults import held_client_ports, proc_state


def start_least(cluster_factory, ctl_path, workers, *extra):
    cluster = cluster_factory("--policy", "least", "--workers", str(workers),
                              "--control-socket", ctl_path, *extra)
    address, listening = cluster.wait_listening(workers)
    return cluster, address, {e["id"]: e["pid"] for e in listening}


def counts(ctl_path):
    """Worker id -> (open, queued), as the primary counts them."""
    return {w["id"]: (w["open"], w["queued"]) for w in control_request(ctl_path)["workers"]}


def wait_counts(ctl_path, want, what):
    return wait_until(lambda: counts(ctl_path) == want, 10, what)


def whoami(address):
    return int(request(address, "whoami").split()[0])


def hold(cluster, address):
    """A connection its worker keeps open (the loop runs); returns (socket, worker id)."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(b"hold\n")
    event = cluster.wait_event("message")      # the only messages here are these
    return sock, event["data"]["holding"]


def release(sock):
    with sock:
        sock.sendall(b"go\n")
        return sock.makefile().readline().split()


def test_a_worker_busy_on_a_slow_request_gets_nothing_while_others_idle(
        cluster_factory, impl, ctl_path):
    cluster, address, pids = start_least(cluster_factory, ctl_path, 3)
    slow, busy = hold(cluster, address)
    idle = sorted(set(pids) - {busy})
    got = []
    for _ in range(12):
        # Wait for the closes to be counted, so each pick is the one least makes.
        wait_counts(ctl_path, {busy: (1, 0), idle[0]: (0, 0), idle[1]: (0, 0)},
                    "the idle workers back at 0 open")
        got.append(whoami(address))
    spread = collections.Counter(got)
    assert set(spread) == set(idle), got
    assert abs(spread[idle[0]] - spread[idle[1]]) <= 1, spread
    assert release(slow) == [str(busy), "released"]
    wait_counts(ctl_path, {i: (0, 0) for i in pids}, "every connection counted closed")


def test_a_blocked_worker_gets_one_connection_not_its_share(cluster_factory, impl, ctl_path):
    # By open counts alone a worker whose loop is blocked looks least loaded
    # (it closes nothing, but it also got nothing): it would be sent
    # connections until its count matched the others'.  Rule 7 puts a worker
    # with a connection in flight after those that took theirs, so it gets
    # only the one that finds it blocked.  Without stall detection, which
    # would take that one back too (test_stall_cluster).
    cluster, address, pids = start_least(cluster_factory, ctl_path, 2, "--stall-ms", "0")
    held = collections.defaultdict(list)
    for _ in range(4):
        sock, worker = hold(cluster, address)
        held[worker].append(sock)
    assert sorted(len(socks) for socks in held.values()) == [2, 2], held
    blocked, busy = sorted(held)
    for sock in held.pop(blocked):
        release(sock)
    wait_counts(ctl_path, {blocked: (0, 0), busy: (2, 0)}, "the blocked-to-be worker idle")
    os.kill(pids[blocked], signal.SIGSTOP)
    try:
        wait_until(lambda: proc_state(pids[blocked]) in ("T", "t"), 5, "the worker to stop")
        stuck = socket.create_connection(address, timeout=10)
        stuck.sendall(b"whoami\n")
        wait_counts(ctl_path, {blocked: (1, 1), busy: (2, 0)},
                    "the first to the stopped worker (fewest open), not taken")
        for _ in range(3):
            assert whoami(address) == busy
            wait_counts(ctl_path, {blocked: (1, 1), busy: (2, 0)}, "the close counted")
    finally:
        os.kill(pids[blocked], signal.SIGCONT)
    with stuck:
        assert int(stuck.makefile().readline().split()[0]) == blocked
    for sock in held[busy]:
        release(sock)
    wait_counts(ctl_path, {i: (0, 0) for i in pids}, "every connection counted closed")


def test_even_work_spreads_within_one_like_rr(cluster_factory, impl, ctl_path):
    cluster, address, pids = start_least(cluster_factory, ctl_path, 3)
    order = []
    for _ in range(31):
        wait_counts(ctl_path, {i: (0, 0) for i in pids}, "every close counted")
        order.append(whoami(address))
    spread = collections.Counter(order)
    assert len(spread) == 3 and max(spread.values()) - min(spread.values()) <= 1, spread
    assert all(order[i] == order[i + 3] for i in range(len(order) - 3)), order


def listen_backlog(port):
    """Connections in the accept queue of the LISTEN socket on ``port`` (rx_queue)."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    total += int(fields[4].split(":")[1], 16)
    return total


def test_the_cap_leaves_connections_in_the_backlog_until_one_closes(
        cluster_factory, impl, ctl_path):
    cluster, address, pids = start_least(cluster_factory, ctl_path, 2,
                                         "--worker-connections", "1")
    held = {}
    for _ in range(2):
        sock, worker = hold(cluster, address)
        held[worker] = sock
    assert set(held) == set(pids)
    waiting = socket.create_connection(address, timeout=10)
    waiting.sendall(b"whoami\n")
    # Every worker is at its cap: the primary leaves it to the kernel.
    wait_until(lambda: listen_backlog(address[1]) == 1, 10, "one connection in the backlog")
    assert counts(ctl_path) == {i: (1, 0) for i in pids}
    first = min(held)
    assert release(held.pop(first)) == [str(first), "released"]
    with waiting:
        assert int(waiting.makefile().readline().split()[0]) == first
    assert listen_backlog(address[1]) == 0
    (other,) = held
    assert counts(ctl_path)[other] == (1, 0)
    release(held[other])
    wait_counts(ctl_path, {i: (0, 0) for i in pids}, "every connection counted closed")


def test_freeze_then_kill_under_churn_loses_only_what_it_held(cluster_factory, impl, ctl_path):
    cap = 2
    cluster, address, pids = start_least(cluster_factory, ctl_path, 3, "--worker-connections",
                                         str(cap), "--min-uptime", "0")
    victim = min(pids)
    # More clients than the three caps together: the cap bites, the backlog holds the rest.
    load = Load(address, concurrency=8, duration=60, keep_records=True).start()
    try:
        wait_until(lambda: load.answered >= 300, 20, "load on the cluster")
        os.kill(pids[victim], signal.SIGSTOP)
        wait_until(lambda: proc_state(pids[victim]) in ("T", "t"), 5, "the victim to stop")
        stopped_at = time.monotonic()
        # Churn goes on around the frozen worker.
        answered = load.answered
        wait_until(lambda: load.answered >= answered + 300, 20, "load around the frozen worker")
        seen_open = counts(ctl_path)[victim][0]
        held = held_client_ports(pids[victim], address[1])
        os.kill(pids[victim], signal.SIGKILL)
        died = cluster.wait_event("exit", id=victim)
        cluster.wait_event("listening", index=died["index"])
        answered = load.answered
        wait_until(lambda: load.answered >= answered + 300, 20, "load on the healed cluster")
    finally:
        load.stop()
        report = load.join()
    assert seen_open <= cap and len(held) <= cap, (seen_open, held)
    failures = report.failures()
    unexplained = [r for r in failures if not (r.port in held and r.start <= stopped_at)]
    print(f"least kill: sent={report.sent} failed={report.failed} held={len(held)} "
          f"open_at_kill={seen_open}")
    assert not unexplained, unexplained[:10]
    assert report.failed <= cap


def test_listen_under_least_is_refused_before_any_dispatch(cluster_factory, impl):
    cluster = cluster_factory("--policy", "least", "--workers", "1", "--blocking")
    event = cluster.wait_event("message")
    refused = event["data"]["listen_refused"]
    assert "cannot serve under policy 'least'" in refused
    assert "fastfork.serve()" in refused and "policy rr" in refused
    assert not [e for e in cluster.events if e["event"] == "listening"]


def test_worker_connections_needs_least():
    with pytest.raises(SettingError, match="worker_connections: needs policy least"):
        Settings(worker_connections=2)
    assert Settings(policy="least", worker_connections=2).worker_connections == 2
    with pytest.raises(SettingError, match="worker_connections"):
        Settings(policy="least", worker_connections=-1)
    assert "least" in fastfork.POLICIES


def test_fastfork_run_least_and_its_status(runner_factory):
    env = PY.env()
    helped = subprocess.run([sys.executable, "-m", "fastfork", "run", "--help"], env=env,
                            capture_output=True, text=True, timeout=20)
    assert "--worker-connections N" in helped.stdout and "least" in helped.stdout
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--policy", "least", "--worker-connections", "4")
    runner.wait_serving(2)
    address = runner.address()
    slow = socket.create_connection(address, timeout=10)
    with slow:
        # Answered after 3 s, so the status below has 3 s to see it open.
        slow.sendall(b"slow 3\n")
        status = runner.wait_status(lambda s: (s["totals"]["open"], s["totals"]["queued"])
                                    == (1, 0), "one open connection, acknowledged")
        assert status["primary"]["policy"] == "least"
        assert sorted((w["open"], w["queued"]) for w in status["workers"]) == [(0, 0), (1, 0)]
        cli = subprocess.run([sys.executable, "-m", "fastfork", "status", "--socket",
                              runner.socket_path], env=env, capture_output=True, text=True,
                             timeout=20)
        assert cli.returncode == 0, cli.stderr
        header = cli.stdout.splitlines()[1].split()
        assert header[header.index("open") + 1] == "queued"
        assert slow.makefile().readline().split()[1] == "slept"
    runner.wait_status(lambda s: s["totals"]["open"] == 0, "the slow connection counted closed")
