"""The engine's pool of WSGI threads (``--threads N``, the default): which thread a
call goes to (fastfork/engine/_c/pool.pxi).  Calls that never block share one
thread, however many arrive together; once a call has slept, calls that
arrive together get a thread each; a call that blocks before the pool knows
it does not hold the calls behind it (/hold and /release, in
test_wsgi_responses.py, on every path).  Through a real cluster of one worker
and real sockets; the thread is the one the app itself names.
"""

import collections
import json
import os
import socket
import time

import pytest

from tests.harness import ROOT
from tests.web_harness import fetch, need_engine, need_web_extra, raw_request, read_response

need_web_extra()
need_engine()

THREADS = 10
PATIENCE = 20.0           # seconds: far past the pool's eager time after a stray sleep
ATTEMPTS = 5


@pytest.fixture
def pooled(one_web_cluster):
    cluster = one_web_cluster("--app", "pep3333", "--http", "engine", "--workers", "1",
                              "--threads", str(THREADS))
    address, _ = cluster.wait_listening(1)
    return cluster, address


def thread_of(sock):
    head, body = read_response(sock)
    assert head.startswith("HTTP/1.1 200 "), head
    return json.loads(body)["thread"]


@pytest.mark.parametrize("connections, spin, sleep_first", [
    (8, 0, False), (32, 0.0005, False), (8, 0.003, True)],
    ids=["8-connections", "32-connections-of-busy-calls", "3-ms-calls-after-one-that-slept"])
def test_calls_that_never_block_share_one_thread(pooled, connections, spin, sleep_first):
    """Connections keep a request each in flight: with a queue that woke a thread
    per call they ran on up to eight threads, taking turns with the GIL.  With
    32 calls of 0.5 ms of CPU each waiting, the thread has more than the GIL's
    switch interval (5 ms) of work in a row: it lets the loop have its turn
    between calls, or the loop would take the GIL in mid-call and the call
    would look as if it had blocked.  A round is 20 calls per connection; one
    stray sleep (a page fault, a loaded machine) may make the pool eager for a
    while, so rounds go on until one is calm.  After a call that slept the pool
    is eager for a while (half a second the first time), then calm again
    while 3 ms calls keep eight threads' worth of work waiting."""
    _, address = pooled
    if sleep_first:
        assert fetch(address, "/sleep?s=0.05")[0].status == 200
    socks = [socket.create_connection(address, timeout=10) for _ in range(connections)]
    request = b"GET /thread?spin=%r HTTP/1.1\r\nHost: t\r\n\r\n" % spin
    try:
        deadline = time.monotonic() + PATIENCE
        rounds = 0
        while True:
            threads = collections.Counter()
            for _ in range(20):
                for sock in socks:
                    sock.sendall(request)
                for sock in socks:
                    threads[thread_of(sock)] += 1
            rounds += 1
            # Two rounds at least: one slowed past the deadline by a loaded
            # machine (once over 20 s) must not be the only one.
            if len(threads) == 1 or (time.monotonic() > deadline and rounds >= 2):
                break
        assert len(threads) == 1, f"calls that never block ran on several threads: {threads}"
        assert sum(threads.values()) == 20 * connections
    finally:
        for sock in socks:
            sock.close()


def test_once_a_call_has_slept_calls_that_arrive_together_get_a_thread_each(pooled):
    """A call that sleeps (I/O, a lock) shows the app blocks: the pool turns eager,
    for half a second the first time.  Six requests made ready together, by
    blocking the loop for a quarter of a second while they arrive, are then
    read in one pass and each wakes an idle thread; calm, they would have
    waited for one thread in turn.  (A call that was also preempted is not
    counted, since a preempted thread loses the GIL as a sleeping one does:
    on a loaded machine a round may miss, so up to ATTEMPTS rounds are
    tried; a pool that never turns eager fails every one.)"""
    cluster, address = pooled
    socks = [socket.create_connection(address, timeout=10) for _ in range(6)]
    try:
        for sock in socks:                    # attached and idle before the loop blocks
            sock.sendall(b"GET /thread HTTP/1.1\r\nHost: t\r\n\r\n")
            thread_of(sock)
        rounds = []
        for _ in range(ATTEMPTS):
            response, _ = fetch(address, "/sleep?s=0.05")
            assert response.status == 200
            blocker = raw_request(address, "/block?s=0.25")
            try:
                assert cluster.wait_event("message")["data"]["blocking"] == "loop"
                for sock in socks:
                    sock.sendall(b"GET /thread HTTP/1.1\r\nHost: t\r\n\r\n")
                assert read_response(blocker)[0].startswith("HTTP/1.1 200 ")
            finally:
                blocker.close()
            threads = [thread_of(sock) for sock in socks]
            assert all(name.startswith("fastfork-wsgi-") for name in threads)
            rounds.append(threads)
            if len(set(threads)) == 6:
                break
        else:
            pytest.fail(f"calls made ready together shared threads in every round: {rounds}")
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("args, expected", [
    (("--wsgi-sched-batch",), "SCHED_BATCH"),
    ((), "SCHED_OTHER"),
    (("--wsgi-sched-batch", "--threads", "0"), "SCHED_OTHER"),
], ids=["wsgi-sched-batch", "default", "no-pool"])
def test_a_worker_with_a_pool_runs_under_sched_batch(runner_factory, args, expected):
    """With ``--wsgi-sched-batch`` the pool puts the loop's thread under
    SCHED_BATCH before it starts its threads, which inherit it: a thread of
    the worker woken while the other holds the GIL does not preempt it.  By
    default the policy is left alone, as it is in a worker with no pool.
    Through ``fastfork run``: the setting, the CLI and the engine (as any
    user, no privilege asked)."""
    app = os.path.join(ROOT, "tests", "apps", "web", "pep3333_app.py")
    run = runner_factory(f"{app}:app", "--workers", "1", "--http", "engine",
                         "--bind", "127.0.0.1:0", "--no-access-log", *args)
    run.wait_serving(1)
    response, body = fetch(run.address(), "/policy")
    assert response.status == 200, body
    seen = json.loads(body)
    assert seen["thread"].startswith("fastfork-wsgi-") == ("--threads" not in args), seen
    assert (seen["policy"], seen["main"]) == (expected, expected), seen
