"""How connections come into a worker (the engine's ``Gate``): real clusters,
real sockets on loopback.

What every connection of an address shares is found out once per address,
not asked of the kernel per connection (TCP_NODELAY, the local address), and
under ``none`` and ``reuseport`` the engine accepts for itself: the app must
see the same two ends of its connection as on uvicorn's protocols, on an
address bound to one IP and on a wildcard, and a worker at its fd limit
must neither spin nor stop serving once it has fds again.
"""

import json
import os
import resource
import signal
import socket
import time

import pytest

from fastfork.operations.status_socket import request as control_request
from tests.harness import cpu_seconds, fd_count, wait_until
from tests.implementations import DEFAULT
from tests.runner_harness import APPS, pids_of
from tests.web_harness import (call, connect, get_json, need_engine, need_web_extra,
                               raw_request, read_response)

need_web_extra()

# Seconds of the worker's CPU measured while it cannot accept: a bound against
# spinning (a level-triggered listener retried at once), not a speed claim.
AT_LIMIT_WINDOW = 1.0
MAX_CPU_AT_LIMIT = 0.5

WEB = os.path.join(APPS, "web")


def _ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("policy, bind, host", [
    ("rr", "127.0.0.1", "127.0.0.1"), ("rr", "0.0.0.0", "127.0.0.1"),
    ("none", "127.0.0.1", "127.0.0.1"), ("none", "0.0.0.0", "127.0.0.1"),
    ("rr", "[::1]", "::1")])
@pytest.mark.parametrize("app", ["starlette", "flask"])
def test_the_app_sees_both_ends_of_its_connection(web_cluster, app, policy, bind, host):
    if host == "::1" and not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    cluster = web_cluster("--app", app, "--policy", policy, "--workers", "1",
                          "--address", f"{bind}:0")
    (_, port), _ = cluster.wait_listening(1)
    conn = connect((host, port))
    try:
        for _ in range(2):                      # the first connection and the next
            response, body = call(conn, "GET", "/server")
            assert response.status == 200
            assert json.loads(body) == {"host": host, "port": port}
            response, body = call(conn, "GET", "/client")
            assert response.status == 200
            local = conn.sock.getsockname()
            assert json.loads(body) == {"host": local[0], "port": local[1]}
            conn.close()
    finally:
        conn.close()


def _ask(address, proxy):
    """A connection that asked for /whoami (behind a PROXY header if ``proxy``)
    and was answered; kept open (keep-alive)."""
    sock = socket.create_connection(address, timeout=15)
    if proxy:
        sock.sendall(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\n")
    sock.sendall(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
    return sock


@pytest.mark.parametrize("proxy", [False, True], ids=["engine-accepts", "proxy-protocol"])
def test_a_worker_out_of_fds_pauses_its_accept_and_serves_again(runner_factory, proxy):
    """Under none a worker accepts for itself (the engine's gate; the worker's
    own loop when a PROXY header comes first): at the fd limit (EMFILE) it
    stops accepting for a while, says so, and takes the waiting connection
    once a fd is free.  It does not retry at once on a listener that stays
    readable: that spun a core until a fd was free."""
    need_engine()
    runner = runner_factory(os.path.join(WEB, "starlette_app.py:app"), "--workers", "1",
                            "--bind", "127.0.0.1:0", "--policy", "none",
                            *(["--proxy-protocol"] if proxy else []), impl=DEFAULT)
    (worker,) = pids_of(runner.wait_serving(1))
    address = runner.address()
    held = []
    try:
        # One connection served first: whatever the worker opens with its
        # first connection is open before the limit is counted.
        held.append(_ask(address, proxy))
        assert read_response(held[0])[0].startswith("HTTP/1.1 200")
        fds = [int(fd) for fd in os.listdir(f"/proc/{worker}/fd")]
        limit = max(fds) + 1 + 2              # above every fd it has: room for limit - len
        _, hard = resource.prlimit(worker, resource.RLIMIT_NOFILE)
        resource.prlimit(worker, resource.RLIMIT_NOFILE, (limit, hard))
        for _ in range(limit - len(fds)):
            held.append(_ask(address, proxy))
            assert read_response(held[-1])[0].startswith("HTTP/1.1 200")
        lines_at = len(runner.output().splitlines())

        waiting = _ask(address, proxy)
        held.append(waiting)
        wait_until(lambda: "Too many open files" in "\n".join(
            runner.output().splitlines()[lines_at:]), 10, "the worker saying it is out of fds")
        cpu_at = cpu_seconds(worker)
        time.sleep(AT_LIMIT_WINDOW)             # measuring, not waiting for something
        cpu = (cpu_seconds(worker) - cpu_at) / AT_LIMIT_WINDOW
        assert cpu < MAX_CPU_AT_LIMIT, f"the worker used {cpu:.0%} of a core at its fd limit"

        for sock in held[1:-1]:
            sock.close()
        head, body = read_response(waiting)
        assert head.startswith("HTTP/1.1 200"), head
        assert json.loads(body)["pid"] == worker
        # The same worker still: nothing was restarted to get here.
        assert pids_of(runner.status()) == {worker}
    finally:
        for sock in held:
            sock.close()


def test_under_least_the_primary_counts_the_engines_connections_closed(runner_factory):
    """Under least the primary counts each worker's open connections from the
    workers' close reports: the gate's connections (one owner for all), and a
    WebSocket handed from the engine to uvicorn's protocol, are reported
    closed once, or least would see them open for ever."""
    need_engine()
    client = pytest.importorskip("websockets.sync.client",
                                 reason="the websockets package is not installed")
    pytest.importorskip("fastapi", reason="FastAPI is not installed")
    runner = runner_factory(os.path.join(WEB, "fastapi_app.py:app"), "--workers", "2",
                            "--bind", "127.0.0.1:0", "--policy", "least", impl=DEFAULT)
    runner.wait_serving(2)
    address = runner.address()
    assert "served by fastfork's engine" in runner.output()

    def open_total(want, what):
        runner.wait_status(lambda s: s["totals"]["open"] == want, what)

    for _ in range(20):                     # each on a connection of its own, closed
        sock = _ask(address, False)
        with sock:
            assert read_response(sock)[0].startswith("HTTP/1.1 200")
    open_total(0, "20 closed connections counted closed")
    kept = _ask(address, False)
    with kept:
        assert read_response(kept)[0].startswith("HTTP/1.1 200")
        open_total(1, "the kept-alive connection counted open")
        with client.connect(f"ws://{address[0]}:{address[1]}/ws", open_timeout=10) as ws:
            assert ws.recv(timeout=10).startswith("hello from worker")
            open_total(2, "the WebSocket counted open")
        open_total(1, "the WebSocket counted closed")
    open_total(0, "the kept-alive connection counted closed")


def _queued(ctl_path):
    return {w["id"]: w["queued"] for w in control_request(ctl_path)["workers"]}


def _stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def test_a_loop_blocked_in_a_handler_leaves_what_waits_behind_unread(web_cluster, ctl_path):
    # Late binding on both HTTP paths: a worker takes one message of its
    # channel a pass, so a loop blocked by the first request's handler holds
    # only that one; the connections sent after it wait unread, the
    # primary's to take back.  The engine reads a connection in the pass that
    # takes it, uvicorn's transport in the next (loopstate holds the channel
    # for that one).  One worker (nowhere to take them back to) and a
    # stall_ms far longer than the test, so the channel is all there is to see.
    cluster = web_cluster("--app", "starlette", "--workers", "1", "--control-socket", ctl_path,
                          "--stall-ms", "60000")
    address, listening = cluster.wait_listening(1)
    wid, pid = listening[0]["id"], listening[0]["pid"]
    os.kill(pid, signal.SIGSTOP)
    clients = []
    try:
        wait_until(lambda: _stopped(pid), 5, "the worker to stop")
        # Three messages in its channel, one connection each, sent one by one.
        for n, path in enumerate(("/block?s=2", "/whoami", "/whoami"), 1):
            clients.append(raw_request(address, path))
            wait_until(lambda: _queued(ctl_path)[wid] == n, 10, f"{n} queued to the worker")
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        assert cluster.wait_event("message")["data"]["blocking"] == "loop"
        # Blocked on the first: what was behind it is still unread (a worker
        # that drained its channel would show 0).
        assert _queued(ctl_path)[wid] >= 1
        for client in clients:
            _, body = read_response(client)
            assert json.loads(body)["id"] == wid
        assert _queued(ctl_path)[wid] == 0
    finally:
        for client in clients:
            client.close()


def test_a_loop_blocked_in_a_handler_is_routed_around(web_cluster):
    # The engine says when an app runs (the loop ticks then, and stops when
    # none does): a handler that blocks its loop leaves the tick stale, and
    # the primary sends that worker nothing until it runs again.  Round-robin
    # would send it every other connection.
    cluster = web_cluster("--app", "starlette", "--workers", "2")
    address, _ = cluster.wait_listening(2)
    blocker = raw_request(address, "/block?s=3")
    try:
        blocked = cluster.wait_event("message")["data"]
        assert blocked["blocking"] == "loop"
        for _ in range(4):
            assert get_json(address, "/whoami")["id"] != blocked["id"]
        _, body = read_response(blocker)
        assert json.loads(body)["id"] == blocked["id"]
    finally:
        blocker.close()


# Wake-ups of a worker's loop thread in a second while it holds only idle
# keep-alive connections: a bound against ticking (every stall_ms / 3, 600 a
# second at the default 5 ms), not a speed claim.
IDLE_WINDOW = 1.0
MAX_IDLE_WAKEUPS = 150


def _wakeups(pid):
    with open(f"/proc/{pid}/task/{pid}/status") as f:
        return sum(int(line.split()[1]) for line in f
                   if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")))


@pytest.mark.parametrize("app", ["starlette", "flask"])
def test_a_worker_holding_only_idle_keep_alive_connections_sleeps(runner_factory, app):
    """No app runs, so the loop has nothing to prove: it does not tick (the
    primary sees it idle, and what it sends wakes the loop)."""
    need_engine()
    runner = runner_factory(os.path.join(WEB, f"{app}_app.py:app"), "--workers", "1",
                            "--bind", "127.0.0.1:0", impl=DEFAULT)
    (worker,) = pids_of(runner.wait_serving(1))
    conns = [connect(runner.address()) for _ in range(4)]
    try:
        for conn in conns:
            response, _ = call(conn, "GET", "/whoami")
            assert response.status == 200
        before = _wakeups(worker)
        time.sleep(IDLE_WINDOW)                 # measuring, not waiting for something
        woke = _wakeups(worker) - before
        assert woke < MAX_IDLE_WAKEUPS, f"the idle worker's loop woke {woke} times in 1 s"
        for conn in conns:                      # held, and served again
            response, body = call(conn, "GET", "/whoami")
            assert response.status == 200 and json.loads(body)["pid"] == worker
    finally:
        for conn in conns:
            conn.close()


@pytest.mark.parametrize("policy", ["rr", "none"])
@pytest.mark.parametrize("app, threads", [("starlette", "10"), ("flask", "10"), ("flask", "0")])
def test_a_connection_whose_request_comes_late_is_served(one_web_cluster, app, threads, policy):
    """The engine reads a connection once before it watches it (a connection
    answered and closed in that pass never costs an epoll_ctl): one whose
    request is not there yet must be watched all the same, on every app
    model (a task, the pool, the loop thread), and keep-alive after it."""
    need_engine()
    cluster = one_web_cluster("--app", app, "--http", "engine", "--threads", threads,
                              "--policy", policy, "--workers", "1")
    address, _ = cluster.wait_listening(1)
    late = socket.create_connection(address, timeout=10)
    try:
        # One worker takes connections in the order they come (the channel,
        # or its own accept queue): once a later one is answered, the worker
        # has read the first, found nothing, and gone on.
        # The later one came with its request: it is watched only once its
        # answer is out (on the pool: drained), and is kept alive all the same.
        barrier = connect(address)
        try:
            for _ in range(2):
                response, body = call(barrier, "GET", "/whoami")
                assert response.status == 200
        finally:
            barrier.close()
        for _ in range(2):
            late.sendall(b"GET /whoami HTTP/1.1\r\nHost: t\r\n\r\n")
            head, body = read_response(late)
            assert head.startswith("HTTP/1.1 200 ") and "pid" in json.loads(body)
    finally:
        late.close()


def test_a_client_that_leaves_during_a_pool_call_leaves_no_fd(one_web_cluster):
    """A connection whose WSGI call is on the pool is watched only once the
    call is done (the engine reads nothing meanwhile): a client that left
    in the call is found gone then, and its fd closed, not held until the
    keep-alive time (a minute here) runs out."""
    need_engine()
    cluster = one_web_cluster("--app", "pep3333", "--http", "engine", "--threads", "1",
                              "--workers", "1", "--timeout-keep-alive", "60")
    address, listening = cluster.wait_listening(1)
    worker = listening[0]["pid"]
    idle = fd_count(worker)
    with socket.create_connection(address, timeout=10) as leaving:
        leaving.sendall(b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: t\r\n\r\n")
    # One thread takes the calls in order: this one is answered after the
    # leaving client's call is done.
    conn = connect(address)
    try:
        assert call(conn, "GET", "/whoami")[0].status == 200
    finally:
        conn.close()
    wait_until(lambda: fd_count(worker) <= idle, 15,
               "the fd of a client that left in its call closed once the call ended")
