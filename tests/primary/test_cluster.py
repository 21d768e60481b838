"""The core, end to end: real primaries, real workers, real sockets on loopback.

Every test runs against the Cython hot path and the pure-Python twin (the
``impl`` fixture) and kills its whole process session afterwards.
"""

import collections
import errno
import os
import signal
import socket

import pytest

from tests.harness import fd_count, request, session_pids, wait_until


def whoami(address):
    worker_id, pid, index = request(address, "whoami").split()
    return int(worker_id), int(pid), int(index)


@pytest.mark.parametrize("form", ["function", "node"])
@pytest.mark.parametrize("style", ["asyncio", "blocking"])
def test_forms_start_n_workers_that_all_serve(cluster_factory, impl, form, style):
    args = ["--workers", "3", "--form", form] + (["--blocking"] if style == "blocking" else [])
    cluster = cluster_factory(*args)
    primary = cluster.wait_event("primary")
    assert primary["implementation"] == impl.implementation
    address, listening = cluster.wait_listening(3)
    # One bound port, announced by each worker.
    assert {event["address"] for event in listening} == {f"{address[0]}:{address[1]}"}
    forked = {event["pid"] for event in listening}
    answers = [whoami(address) for _ in range(6)]
    assert {pid for _, pid, _ in answers} == forked
    assert sorted({index for _, _, index in answers}) == [0, 1, 2]
    # The workers are children of the primary.
    for pid in forked:
        with open(f"/proc/{pid}/status") as f:
            ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
        assert ppid == cluster.pid


@pytest.mark.parametrize("policy", ["rr", "none", "reuseport"])
def test_every_policy_serves_from_all_workers(cluster_factory, impl, policy):
    cluster = cluster_factory("--workers", "2", "--policy", policy)
    address, listening = cluster.wait_listening(2)
    pids = {event["pid"] for event in listening}
    seen = set()
    # none/reuseport leave the choice to the kernel, so keep asking (bounded).
    for _ in range(200):
        seen.add(whoami(address)[1])
        if seen == pids:
            break
    assert seen == pids


def test_round_robin_spreads_connections_within_one(cluster_factory, impl):
    cluster = cluster_factory("--workers", "3")
    address, _ = cluster.wait_listening(3)
    order = [whoami(address)[0] for _ in range(31)]
    counts = collections.Counter(order)
    assert len(counts) == 3
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    # Strict rotation: each worker comes back every third connection.
    assert all(order[i] == order[i + 3] for i in range(len(order) - 3)), order


def test_blocked_worker_receives_no_more_than_its_window(cluster_factory, impl):
    # The window's bound, without stall detection (which takes even those
    # back: test_stall_cluster).
    window = 4
    cluster = cluster_factory("--workers", "2", "--window", str(window), "--stall-ms", "0")
    address, _ = cluster.wait_listening(2)
    first = whoami(address)[0]
    # The next connection goes to the other worker: block that worker's loop.
    blocker = socket.create_connection(address, timeout=30)
    blocker.sendall(b"block 2\n")
    cluster.wait_event("message", data={"blocking": {1: 2, 2: 1}[first]})
    clients = []
    for _ in range(20):
        sock = socket.create_connection(address, timeout=30)
        sock.sendall(b"whoami\n")
        clients.append(sock)
    replies = []
    for sock in clients:
        with sock:
            replies.append(int(sock.makefile().readline().split()[0]))
    blocked = {1: 2, 2: 1}[first]
    with blocker:
        assert blocker.makefile().readline().split() == [str(blocked), "unblocked"]
    got = collections.Counter(replies)
    print(f"window {window}: blocked worker {blocked} took {got[blocked]} of 20, "
          f"the other {got[first]}")
    assert len(replies) == 20
    assert 0 < got[blocked] <= window
    assert got[first] == 20 - got[blocked]


def test_killed_worker_is_reforked_and_its_unacked_connections_served(cluster_factory, impl):
    cluster = cluster_factory("--workers", "2", "--window", "8", "--min-uptime", "0")
    address, listening = cluster.wait_listening(2)
    pids = {event["id"]: event["pid"] for event in listening}
    first = whoami(address)[0]
    victim = {1: 2, 2: 1}[first]
    # The victim takes the next connection and blocks its loop: whatever it is
    # sent after that stays unacknowledged in its channel.
    blocker = socket.create_connection(address, timeout=30)
    blocker.sendall(b"block 30\n")
    cluster.wait_event("message", data={"blocking": victim})
    clients = []
    for _ in range(10):
        sock = socket.create_connection(address, timeout=30)
        sock.sendall(b"whoami\n")
        clients.append(sock)
    # Replies from the healthy worker prove the primary has dispatched every
    # connection accepted before them, the victim's included.
    survivor_replies = [int(clients[i].makefile().readline().split()[0]) for i in (0, 2, 4, 6, 8)]
    assert set(survivor_replies) == {first}
    os.kill(pids[victim], signal.SIGKILL)
    died = cluster.wait_event("exit", id=victim)
    assert died["signal"] == signal.SIGKILL and died["code"] is None
    replacement = cluster.wait_event("listening", index=died["index"])
    assert replacement["id"] not in pids and replacement["pid"] != pids[victim]
    late = [int(clients[i].makefile().readline().split()[0]) for i in (1, 3, 5, 7, 9)]
    print(f"unacknowledged connections of worker {victim} were served by {late}")
    assert victim not in late
    for sock in clients:
        sock.close()
    blocker.close()
    # And the cluster is whole again.
    answers = {whoami(address)[0] for _ in range(4)}
    assert answers == {first, replacement["id"]}


def test_crash_loop_stops_reforking_and_exits_non_zero(cluster_factory, impl):
    cluster = cluster_factory("--workers", "2", "--crash-on-start", "--max-restarts", "4")
    assert cluster.wait_exit(30) == 3
    exits = [e for e in cluster.events if e["event"] == "exit"]
    assert len(exits) >= 4 and all(e["code"] == 3 for e in exits)
    assert "not re-forking" in cluster.output()
    assert cluster.leftovers() == []


@pytest.mark.parametrize("form", ["function", "node"])
def test_primary_sigkill_leaves_no_worker(cluster_factory, impl, form):
    cluster = cluster_factory("--workers", "2", "--form", form)
    _, listening = cluster.wait_listening(2)
    workers = [event["pid"] for event in listening]
    cluster.signal(signal.SIGKILL)
    cluster.wait_exit(5)
    wait_until(lambda: not any(pid in session_pids(cluster.pid)[0] for pid in workers), 5,
               "workers to die with their primary")


def test_messages_both_ways(cluster_factory, impl):
    cluster = cluster_factory("--workers", "2")
    address, _ = cluster.wait_listening(2)
    worker_id = int(request(address, "whoami").split()[0])
    assert request(address, "send hello") == "sent"
    event = cluster.wait_event("message")
    sender = event["id"]
    assert event["data"] == {"text": "hello"}
    assert sender != worker_id  # round-robin: the next worker took it
    # The primary answered with {"pong": ...}; the worker echoes what it got.
    echoed = cluster.wait_event("message", id=sender)
    assert echoed["data"] == {"echo": {"pong": "hello"}}


def test_malformed_message_replaces_the_worker(cluster_factory, impl):
    cluster = cluster_factory("--workers", "2")
    address, listening = cluster.wait_listening(2)
    # The worker may be killed before it answers: the reply does not matter.
    request(address, "garbage")
    died = cluster.wait_event("exit")
    assert died["signal"] == signal.SIGKILL
    cluster.wait_event("listening", index=died["index"])
    assert "sent a malformed message" in cluster.output()
    assert len({whoami(address)[0] for _ in range(4)}) == 2


def test_bind_errors_surface_in_listen(cluster_factory, impl):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        cluster = cluster_factory("--workers", "1", "--bad-address", f"127.0.0.1:{port}")
        error = cluster.wait_event("message")["data"]
        assert error["listen_error"] == errno.EADDRINUSE
        assert f"127.0.0.1:{port}" in error["message"]
        # The primary kept running and the worker still serves its good address.
        address, _ = cluster.wait_listening(1)
        assert whoami(address)[2] == 0
    finally:
        taken.close()
    # 203.0.113.0/24 is TEST-NET-3: never a local address, so bind fails locally.
    cluster = cluster_factory("--workers", "1", "--bad-address", "203.0.113.1:8080")
    error = cluster.wait_event("message")["data"]
    assert error["listen_error"] == errno.EADDRNOTAVAIL
    assert "203.0.113.1:8080" in error["message"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_leaves_no_child_and_no_fd(cluster_factory, impl, sig):
    cluster = cluster_factory("--workers", "2", "--primary-sched", "batch")
    address, listening = cluster.wait_listening(2)
    # An open connection in the middle of a request must be finished, not cut.
    slow = socket.create_connection(address, timeout=30)
    slow.sendall(b"block 1\n")
    cluster.wait_event("message")
    cluster.signal(sig)
    with slow:
        assert slow.makefile().readline().endswith("unblocked\n")
    done = cluster.wait_event("done", timeout=20)
    assert cluster.wait_exit(10) == 0
    assert done["code"] == 0
    assert done["children"] == []
    assert done["fds_after"] == done["fds_before"], done
    assert done["sched"] == os.SCHED_OTHER      # run() gives back the policy it lowered
    exits = [e for e in cluster.events if e["event"] == "exit"]
    assert sorted(e["pid"] for e in exits) == sorted(e["pid"] for e in listening)
    assert all(e["code"] == 0 for e in exits)
    assert cluster.leftovers() == []
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()


def test_second_sigint_forces_shutdown(cluster_factory, impl):
    cluster = cluster_factory("--workers", "2", "--graceful-timeout", "60")
    address, _ = cluster.wait_listening(2)
    stuck = socket.create_connection(address, timeout=30)
    stuck.sendall(b"block 30\n")
    cluster.wait_event("message")
    cluster.signal(signal.SIGINT)
    wait_until(lambda: "shutting down" in cluster.output(), 10, "the graceful shutdown to start")
    cluster.signal(signal.SIGINT)
    assert cluster.wait_exit(10) == 1
    assert cluster.leftovers() == []
    stuck.close()


def test_worker_identity_id_never_reused_index_reused(cluster_factory, impl):
    cluster = cluster_factory("--workers", "2", "--min-uptime", "0")
    address, listening = cluster.wait_listening(2)
    fds = fd_count(cluster.pid)      # idle: no connection held
    ids = {event["id"] for event in listening}
    for round_ in range(3):
        victim = listening[round_ % 2]
        os.kill(victim["pid"], signal.SIGKILL)
        cluster.wait_event("exit", id=victim["id"])
        new = cluster.wait_event("listening", index=victim["index"])
        assert new["id"] not in ids
        ids.add(new["id"])
        listening[round_ % 2] = new
    whoami(address)
    # Re-forking leaks nothing in the primary (once the last ack is in).
    wait_until(lambda: fd_count(cluster.pid) == fds, 5, f"the primary back to {fds} fds")


def test_sigterm_to_a_worker_drains_it_and_reforks_its_index(cluster_factory, impl):
    cluster = cluster_factory("--workers", "2")
    address, listening = cluster.wait_listening(2)
    busy = socket.create_connection(address, timeout=30)
    busy.sendall(b"block 1\n")
    blocking = cluster.wait_event("message")["data"]["blocking"]
    victim = next(event for event in listening if event["id"] == blocking)
    os.kill(victim["pid"], signal.SIGTERM)
    # The request in progress is finished, not cut ...
    with busy:
        assert busy.makefile().readline().split() == [str(blocking), "unblocked"]
    # ... the worker exits on its own, and its index is served again.
    died = cluster.wait_event("exit", id=blocking)
    assert (died["code"], died["signal"]) == (0, None)
    # (the replacement may be listening before the old one has exited)
    original = {event["id"] for event in listening}
    replacement = wait_until(lambda: next(
        (e for e in cluster.events if e["event"] == "listening" and e["id"] not in original),
        None), 15, "the replacement to listen")
    assert replacement["index"] == victim["index"]
    assert {whoami(address)[0] for _ in range(4)} == {replacement["id"]} | (
        {event["id"] for event in listening} - {blocking})


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_a_blocking_worker_stuck_in_its_handler_is_replaced(cluster_factory, impl, policy):
    # Blocking workers beat from accept(): idle ones keep beating, one whose
    # handler never comes back stops, and --timeout replaces it.
    cluster = cluster_factory("--workers", "2", "--blocking", "--sequential", "--timeout", "1",
                              "--policy", policy, "--min-uptime", "0")
    address, listening = cluster.wait_listening(2)
    pids = {event["id"]: event["pid"] for event in listening}
    stuck = socket.create_connection(address, timeout=30)
    stuck.sendall(b"block 60\n")
    exited = cluster.wait_event("exit", timeout=20)
    assert exited["signal"] == signal.SIGABRT, exited      # aborted, not crashed
    assert exited["pid"] == pids[exited["id"]]
    # Its index is re-forked (the replacement starts at the abort, so it may
    # listen before the aborted one has exited).
    wait_until(lambda: any(e["event"] == "listening" and e["index"] == exited["index"]
                           and e["id"] not in pids for e in cluster.events), 15,
               "the replacement listening")
    stuck.close()
    # The other worker sat idle in accept() for longer than the timeout and is
    # still there: it answers, under its own id.
    survivor = next(wid for wid in pids if wid != exited["id"])
    assert not any(e["event"] == "exit" and e["id"] == survivor for e in cluster.events)
    os.kill(pids[survivor], 0)                              # alive, never replaced
    seen = {whoami(address)[0] for _ in range(6)}
    if policy == "rr":
        assert survivor in seen, (survivor, seen)           # and it serves (rr deals to it)
    else:
        assert seen, "nothing answered"    # under none the kernel may pick one worker only


@pytest.mark.parametrize("policy", ["rr", "least"])
def test_a_worker_that_closes_its_server_is_sent_nothing_more(cluster_factory, impl, policy):
    # A worker that closes its server while it goes on living must not be sent
    # the address's connections any more: it could only close them unanswered.
    cluster = cluster_factory("--workers", "2", "--policy", policy)
    address, listening = cluster.wait_listening(2)
    closer_id, closer_pid = request(address, "close").split()[0], None
    closer_pid = next(e["pid"] for e in listening if str(e["id"]) == closer_id)
    other_pid = next(e["pid"] for e in listening if e["pid"] != closer_pid)
    served = [whoami(address)[1] for _ in range(20)]
    assert served == [other_pid] * 20
    # It is alive, as it said: it was not replaced, only taken off the address.
    os.kill(closer_pid, 0)
    assert not [e for e in cluster.events if e["event"] == "exit"], cluster.output()
