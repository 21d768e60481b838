"""The health/metrics endpoint and the status socket under many clients, idle
clients and clients that do not read (issue 24, fault 2).

Real `fastfork run` primaries, real sockets on loopback; the bursts are
driven from one thread with a selector, every client at once.
"""

import fcntl
import json
import os
import select
import selectors
import socket
import struct
import termios
import time

import pytest

from fastfork.operations.oneshot import CLIENT_TIMEOUT, EVICT_AFTER, MAX_CLIENTS
from tests.harness import wait_until
from tests.runner_harness import APPS, OPS_APP

pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")

BIG_METRICS = os.path.join(APPS, "big_metrics.py")


def endpoint_address(runner):
    status = runner.wait_status(lambda s: s["primary"]["endpoints"], "the endpoint")
    host, _, port = status["primary"]["endpoints"][0].rpartition(":")
    return host, int(port)


def burst(family, address, request, clients, timeout=15):
    """Open ``clients`` connections at once, send ``request`` on each, read each
    answer to its end; returns the answers (b"" for a connection closed or
    reset without one).  Every socket is closed on the way out."""
    selector = selectors.DefaultSelector()
    answers, pending = {}, {}
    try:
        for _ in range(clients):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(address)
            pending[sock] = request
            answers[sock] = b""
            selector.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + timeout
        while selector.get_map():
            left = deadline - time.monotonic()
            assert left > 0, (f"{len(selector.get_map())} of {clients} clients still open after "
                              f"{timeout}s; {sum(1 for a in answers.values() if a)} answered")
            for key, _ in selector.select(left):
                sock = key.fileobj
                try:
                    if sock in pending:
                        pending[sock] = pending[sock][sock.send(pending[sock]):]
                        if not pending[sock]:
                            del pending[sock]
                            selector.modify(sock, selectors.EVENT_READ)
                        continue
                    chunk = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    chunk = b""              # refused or reset: no (more) answer
                    pending.pop(sock, None)
                if chunk:
                    answers[sock] += chunk
                else:
                    selector.unregister(sock)
    finally:
        selector.close()
        for sock in answers:
            sock.close()
    return list(answers.values())


@pytest.mark.slow
def test_a_burst_of_clients_all_get_answers(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--metrics", "127.0.0.1:0")
    runner.wait_serving(1)
    endpoint = endpoint_address(runner)
    for path, clients in (("/livez", 300), ("/metrics", 300)):
        answers = burst(socket.AF_INET, endpoint, f"GET {path} HTTP/1.1\r\n\r\n".encode(),
                        clients)
        ok = [a for a in answers if a.startswith(b"HTTP/1.1 200 OK\r\n")]
        assert len(ok) == clients, (path, len(ok), {a[:30] for a in answers} - {ok[0][:30]})
        if path == "/metrics":
            assert all(b"\nfastfork_workers " in a for a in ok)
    answers = burst(socket.AF_UNIX, runner.socket_path, b'{"cmd": "status"}\n', 300)
    pids = {json.loads(a)["primary"]["pid"] if a else None for a in answers}
    assert pids == {runner.pid}
    assert runner.status()["primary"]["pid"] == runner.pid


def closes_within(sock, timeout):
    """Seconds until the server closes ``sock`` (which sent nothing); None if it
    is still open after ``timeout``."""
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        data = sock.recv(4096)
    except socket.timeout:
        return None
    except ConnectionResetError:
        data = b""
    assert data == b"", data
    return time.monotonic() - started


def test_idle_clients_are_closed_on_time(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--health", "127.0.0.1:0")
    runner.wait_serving(1)
    endpoint = endpoint_address(runner)
    # Both idle at once, and nobody else connects meanwhile: only the
    # primary's own deadline can close them.
    with socket.create_connection(endpoint, timeout=10) as http, \
            socket.socket(socket.AF_UNIX) as control:
        control.connect(runner.socket_path)
        connected = time.monotonic()
        http_after = closes_within(http, CLIENT_TIMEOUT + 3)
        control_after = closes_within(
            control, max(0.1, CLIENT_TIMEOUT + 3 - (time.monotonic() - connected)))
    assert http_after is not None, "the idle endpoint client was never closed"
    assert control_after is not None, "the idle status client was never closed"
    assert CLIENT_TIMEOUT - 0.5 < http_after < CLIENT_TIMEOUT + 1.5


def test_idle_clients_at_the_limit_do_not_starve_a_probe(runner_factory):
    # MAX_CLIENTS connections that send nothing (opened again as each is
    # closed, they would be there for good): /livez waited in the backlog
    # for the first of them to time out, past any probe's timeout (a
    # kubelet's default is 1 s), and the orchestrator restarts the primary.
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--health", "127.0.0.1:0")
    runner.wait_serving(1)
    endpoint = endpoint_address(runner)
    idle = []
    try:
        for _ in range(MAX_CLIENTS):
            idle.append(socket.create_connection(endpoint, timeout=10))
        started = time.monotonic()
        with socket.create_connection(endpoint, timeout=10) as probe:
            probe.settimeout(EVICT_AFTER + 1.5)
            probe.sendall(b"GET /livez HTTP/1.1\r\n\r\n")
            answer = probe.recv(100)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        assert took < CLIENT_TIMEOUT - 1, took
        # The probe took the place of the oldest idle client, not a newer one's.
        assert closes_within(idle[0], 1.0) is not None
        assert closes_within(idle[-1], 0.05) is None
    finally:
        for sock in idle:
            sock.close()
    assert runner.status()["primary"]["pid"] == runner.pid


def unread_bytes(sock):
    """Bytes waiting in ``sock``'s receive queue (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0]


def was_reset(sock):
    """Has the server reset ``sock`` (whose answer this client has not read)?"""
    poller = select.poll()
    poller.register(sock, select.POLLERR | select.POLLHUP)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


@pytest.mark.slow
def test_a_client_that_does_not_read_stalls_nobody(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--metrics", "127.0.0.1:0", script=BIG_METRICS)
    runner.wait_serving(1)
    endpoint = endpoint_address(runner)
    slow = []
    try:
        for _ in range(4):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(endpoint)
            sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            slow.append(sock)
        # The primary has begun answering one of them (and will never finish:
        # 6 MB do not fit in the connection's buffers while nobody reads).
        wait_until(lambda: any(unread_bytes(s) for s in slow), 20, "the first answer's bytes")
        started = time.monotonic()
        with socket.create_connection(endpoint, timeout=10) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"ok\n")
        # Before: each non-reader held the primary's loop for up to 1 s in turn.
        assert took < 1.5, f"/livez waited {took:.2f}s behind clients that do not read"
        assert runner.status()["primary"]["pid"] == runner.pid
        # The non-readers are dropped at their deadline (reset: the kernel
        # keeps nothing for them), their answers cut short.
        wait_until(lambda: all(was_reset(s) for s in slow), CLIENT_TIMEOUT + 10,
                   "the non-readers to be dropped")
        for sock in slow:
            sock.settimeout(10)
            received = 0
            try:
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
            assert received < 6_000_000
    finally:
        for sock in slow:
            sock.close()
