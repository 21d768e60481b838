"""Routing around a blocked worker end to end: real primaries, workers and
sockets on loopback, in both builds (the ``impl`` fixture), each test's
process session killed afterwards.

A worker's loop blocks in a handler (``block S``: a synchronous sleep in an
async handler) or the whole worker is frozen (SIGSTOP, a loop that cannot
run at all).  The Cython build sees a blocked loop by its tick on the credit
page; the twin, and a worker frozen while idle (nothing to tick), by what it
leaves unread.  Waits are on events and the primary's status socket, with
deadlines.
"""

import concurrent.futures
import os
import signal
import socket
import time

import pytest

from fastfork.operations.status_socket import request as control_request
from tests.harness import request, wait_until
from test_faults import proc_state


def start(cluster_factory, ctl_path, policy="rr", *extra):
    cluster = cluster_factory("--workers", "2", "--policy", policy, "--control-socket",
                              ctl_path, *extra)
    address, listening = cluster.wait_listening(2)
    return cluster, address, {e["id"]: e["pid"] for e in listening}


def whoami(address):
    return int(request(address, "whoami").split()[0])


def stall_view(ctl_path):
    """Worker id -> (stalled, stalls, taken_back, dispatched), as the primary counts."""
    return {w["id"]: (w["stalled"], w["stalls"], w["taken_back"], w["dispatched"])
            for w in control_request(ctl_path)["workers"]}


def queued(ctl_path):
    return {w["id"]: w["queued"] for w in control_request(ctl_path)["workers"]}


def many_whoami(address, n):
    """``n`` clients at once; each one's worker id and seconds to its answer."""
    def one(_):
        started = time.monotonic()
        who = whoami(address)
        return who, time.monotonic() - started
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.parametrize("policy", ["rr", "least"])
def test_a_worker_blocked_in_a_handler_is_routed_around(cluster_factory, impl, ctl_path,
                                                        policy):
    cluster, address, pids = start(cluster_factory, ctl_path, policy, "--stall-ms", "5")
    with socket.create_connection(address, timeout=30) as blocker:
        blocker.sendall(b"block 3\n")
        blocked = cluster.wait_event("message")["data"]["blocking"]
        other = next(i for i in pids if i != blocked)
        answers = many_whoami(address, 20)
        # All served by the worker whose loop runs, none waiting out the block.
        assert [who for who, _ in answers] == [other] * 20
        assert max(took for _, took in answers) < 2.0, answers
        view = stall_view(ctl_path)
        assert view[blocked][:2] == (True, 1), view
        assert blocker.makefile().readline().split() == [str(blocked), "unblocked"]
    # Its loop runs again: it is picked again.
    wait_until(lambda: not stall_view(ctl_path)[blocked][0], 10, "the stall to end")
    wait_until(lambda: blocked in {whoami(address) for _ in range(4)}, 10,
               "the unblocked worker to serve again")


@pytest.mark.parametrize("policy", ["rr", "least"])
def test_what_a_frozen_worker_was_sent_is_served_by_the_other(cluster_factory, impl, ctl_path,
                                                              policy):
    """What a frozen worker was sent and had not taken is served by the other.

    Frozen while idle (its tick 0) it is found out by what it leaves unread
    for STALL_UNTAKEN_FACTOR * stall_ms; frozen within stall_ms / 3 of its
    last connection its tick is still on, and it is found out when that
    tick is stall_ms old.  Either way it is picked before it is found out
    (with 250 ms, long after the test's connections are sent), and what it
    was sent comes back."""
    cluster, address, pids = start(cluster_factory, ctl_path, policy, "--stall-ms", "250")
    frozen, other = sorted(pids)
    os.kill(pids[frozen], signal.SIGSTOP)
    try:
        wait_until(lambda: proc_state(pids[frozen]) in ("T", "t"), 5, "the worker to stop")
        answers = many_whoami(address, 8)
        # Round-robin (least: equal counts) sends some to the frozen worker
        # before it is found out; every one comes back and is served.
        assert [who for who, _ in answers] == [other] * 8
        assert min(took for _, took in answers) < 0.25, answers
        assert max(took for _, took in answers) >= 0.25 * 0.9, answers
        view = stall_view(ctl_path)
        stalled, stalls, taken_back, dispatched = view[frozen]
        assert stalls >= 1 and taken_back >= 1 and dispatched == 0, view
        assert view[other][3] == 8, view
    finally:
        os.kill(pids[frozen], signal.SIGCONT)
    # Running again, it takes what it is tried with and is picked again.
    wait_until(lambda: frozen in {whoami(address) for _ in range(4)}, 10,
               "the thawed worker to serve again")
    wait_until(lambda: not stall_view(ctl_path)[frozen][0], 10, "the stall to end")


def test_no_stall_detection_with_stall_ms_0(cluster_factory, impl, ctl_path):
    cluster, address, pids = start(cluster_factory, ctl_path, "rr", "--stall-ms", "0")
    frozen, other = sorted(pids)
    os.kill(pids[frozen], signal.SIGSTOP)
    try:
        wait_until(lambda: proc_state(pids[frozen]) in ("T", "t"), 5, "the worker to stop")
        with socket.create_connection(address, timeout=30) as stuck:
            stuck.sendall(b"whoami\n")
            assert whoami(address) == other     # rr: the first went to the frozen one
            wait_until(lambda: queued(ctl_path)[frozen] == 1, 10,
                       "one queued to the frozen worker")
            assert stall_view(ctl_path)[frozen][:3] == (False, 0, 0)
            os.kill(pids[frozen], signal.SIGCONT)
            assert int(stuck.makefile().readline().split()[0]) == frozen
    finally:
        os.kill(pids[frozen], signal.SIGCONT)


def test_a_worker_takes_one_message_a_pass_and_leaves_the_rest_unread(cluster_factory, impl,
                                                                      ctl_path):
    # Late binding: a worker whose loop then blocks holds only what it began;
    # what waits behind stays in the channel, the primary's to take back.
    # One worker (nowhere to take them back to) and a stall_ms far longer than
    # the test, so the channel is all there is to see.
    cluster = cluster_factory("--workers", "1", "--control-socket", ctl_path,
                              "--stall-ms", "60000")
    address, listening = cluster.wait_listening(1)
    (wid, pid), = [(e["id"], e["pid"]) for e in listening]
    os.kill(pid, signal.SIGSTOP)
    clients = []
    try:
        wait_until(lambda: proc_state(pid) in ("T", "t"), 5, "the worker to stop")
        # Three messages in its channel, one connection each, sent one by one.
        for n, line in enumerate((b"block 2\n", b"whoami\n", b"whoami\n"), 1):
            client = socket.create_connection(address, timeout=30)
            clients.append(client)
            client.sendall(line)
            wait_until(lambda: queued(ctl_path)[wid] == n, 10, f"{n} queued to the worker")
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert cluster.wait_event("message")["data"]["blocking"] == wid
        # Blocked on the first: what was behind it is still unread (a worker
        # that drained its channel would show 0).
        assert queued(ctl_path)[wid] >= 1
        assert clients[0].makefile().readline().split() == [str(wid), "unblocked"]
        for client in clients[1:]:
            assert int(client.makefile().readline().split()[0]) == wid
        assert queued(ctl_path)[wid] == 0
    finally:
        for client in clients:
            client.close()
