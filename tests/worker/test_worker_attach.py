"""How a worker attaches the connections the primary passes it: no Task per
connection, on asyncio's loop and on uvloop, every guarantee kept.

The first tests drive ``aio.Server.attach`` in one process with socketpairs
standing for connections; the others run real clusters (``attach_app.py``,
a bare protocol app) under rr and least and check what a client and the
primary see: replies, the drain at stop, least's open counts, resets.
"""

import asyncio
import os
import signal
import socket
import struct
import threading

import pytest

from fastfork.operations.status_socket import request as control_request
from fastfork.worker import connection
from fastfork.worker.listener import AcceptedFd, Listener
from tests.harness import fd_count, request, wait_until
from tests.runner_harness import APPS
from tests.worker.fakes import (Echo, FakeReceiver, Slotted, nonblocking_pair, run_on, server_on,
                                settle)

ATTACH_APP = os.path.join(APPS, "attach_app.py")


LOOPS = ["asyncio", "uvloop"]
LOOP_MODULE = {"asyncio": "asyncio.unix_events", "uvloop": "uvloop"}


@pytest.mark.parametrize("loop_name", LOOPS)
def test_connections_attach_without_a_task_and_close_counted(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        tracker, receiver = connection.Tracker(), FakeReceiver()
        server = server_on(loop, Echo, tracker, receiver)
        tasks = len(asyncio.all_tasks())
        clients = []
        for _ in range(10):
            ours, theirs = nonblocking_pair()
            server.attach(theirs)
            clients.append(ours)
        # Counted from the attach, before any transport callback has run.
        assert (tracker.active, tracker.total) == (10, 10)
        assert len(asyncio.all_tasks()) == tasks, "a Task per connection"
        for client in clients:
            client.sendall(b"x")
        for client in clients:
            client.settimeout(5)
            assert await loop.run_in_executor(None, client.recv, 1) == b"x"
            client.close()
        await settle(lambda: tracker.active == 0 and sum(receiver.reports) == 10,
                     "10 closes counted and reported")
        await asyncio.sleep(0.01)     # nothing reported twice
        return receiver.reports

    assert sum(run_on(loop_name, main())) == 10


class Broken(asyncio.Protocol):
    def __init__(self):
        raise RuntimeError("the app's factory failed")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_factory_that_raises_closes_the_socket_and_is_reported(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        tracker, receiver = connection.Tracker(), FakeReceiver()
        server = server_on(loop, Broken, tracker, receiver)
        ours, theirs = nonblocking_pair()
        server.attach(theirs)
        await settle(lambda: receiver.reports, "the close reported")
        assert theirs.fileno() == -1
        ours.settimeout(5)
        assert ours.recv(1) == b""        # the client sees the close
        ours.close()
        assert tracker.active == 0
        return errors, receiver.reports

    errors, reports = run_on(loop_name, main())
    assert reports == [1]
    assert [str(e["exception"]) for e in errors] == ["the app's factory failed"]
    assert "attaching a connection on 127.0.0.1:0 failed" in errors[0]["message"]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_protocol_with_slots_is_served_and_counted_closed_at_once(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        tracker, receiver = connection.Tracker(), FakeReceiver()
        server = server_on(loop, Slotted, tracker, receiver)
        ours, theirs = nonblocking_pair()
        server.attach(theirs)
        await settle(lambda: receiver.reports == [1] and tracker.active == 0,
                     "counted closed")
        ours.close()
        return receiver.reports

    assert run_on(loop_name, main()) == [1]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_connection_after_close_is_closed_and_reported(loop_name):
    async def main():
        loop = asyncio.get_running_loop()
        tracker, receiver = connection.Tracker(), FakeReceiver()
        server = server_on(loop, Echo, tracker, receiver)
        server.close()
        ours, theirs = nonblocking_pair()
        server.attach(theirs)
        assert theirs.fileno() == -1
        await settle(lambda: receiver.reports, "the close reported")
        ours.close()
        return tracker.active, receiver.reports

    assert run_on(loop_name, main()) == (0, [1])


def fd_is_open(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_uvloop_takes_a_bare_fd_and_leaves_a_reused_number_alone():
    # uvloop closes its file object after libuv closed the fd: by then the
    # number may be another file's, which AcceptedFd must not close.
    async def main():
        loop = asyncio.get_running_loop()
        tracker, receiver = connection.Tracker(), FakeReceiver()
        server = server_on(loop, Echo, tracker, receiver)
        assert server._attach_now == server._attach_driven
        ours, theirs = socket.socketpair()
        os.set_blocking(theirs.fileno(), False)
        bare = AcceptedFd(theirs.detach(), socket.AF_UNIX)
        number = bare.fileno()
        server.attach(bare)
        assert bare.fileno() == -1, "still owned after the transport took it"
        ours.sendall(b"x")
        ours.settimeout(5)
        assert await loop.run_in_executor(None, ours.recv, 1) == b"x"
        # Echo closed it: libuv closes the fd, then uvloop calls bare.close().
        await settle(lambda: tracker.active == 0, "the close counted")
        assert not fd_is_open(number)
        reused = os.open(os.devnull, os.O_RDONLY)
        try:
            bare.close()
            assert fd_is_open(reused)
        finally:
            os.close(reused)
        assert await loop.run_in_executor(None, ours.recv, 1) == b""
        ours.close()
        return receiver.reports

    assert run_on("uvloop", main()) == [1]


def test_uvloop_attach_that_fails_closes_the_bare_fd():
    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: None)
        tracker, receiver = connection.Tracker(), FakeReceiver()
        server = server_on(loop, Broken, tracker, receiver)
        ours, theirs = socket.socketpair()
        os.set_blocking(theirs.fileno(), False)
        bare = AcceptedFd(theirs.detach(), socket.AF_UNIX)
        number = bare.fileno()
        server.attach(bare)
        await settle(lambda: receiver.reports, "the close reported")
        assert bare.fileno() == -1 and not fd_is_open(number)
        ours.settimeout(5)
        assert ours.recv(1) == b""
        ours.close()
        return tracker.active

    assert run_on("uvloop", main()) == 0


# -- real clusters -------------------------------------------------------------------


@pytest.fixture(params=LOOPS)
def loop_name(request):
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed")
    return request.param


def start(cluster_factory, loop_name, *args, workers=1):
    cluster = cluster_factory("--loop", loop_name, "--workers", str(workers), *args,
                              script=ATTACH_APP)
    address, listening = cluster.wait_listening(workers)
    return cluster, address, {e["id"]: e["pid"] for e in listening}


@pytest.mark.parametrize("policy", ["rr", "least"])
def test_replies_on_the_loop_asked_for(cluster_factory, loop_name, policy):
    cluster, address, pids = start(cluster_factory, loop_name, "--policy", policy, workers=2)
    for i in range(20):
        assert request(address, f"line {i}") == f"line {i}"
    assert request(address, "loop") == LOOP_MODULE[loop_name]
    assert request(address, "loop") == LOOP_MODULE[loop_name]      # the other worker too
    cluster.signal(signal.SIGTERM)
    assert cluster.wait_exit(15) == 0
    assert "Traceback" not in cluster.output(), cluster.output()


def test_a_slow_request_in_flight_at_stop_finishes(cluster_factory, loop_name):
    cluster, address, _ = start(cluster_factory, loop_name)
    with socket.create_connection(address, timeout=10) as slow:
        slow.sendall(b"slow 1.0\n")
        cluster.wait_event("message")            # the worker has it, its answer is due later
        cluster.signal(signal.SIGTERM)
        assert slow.makefile().readline() == "slow done\n"
    assert cluster.wait_exit(15) == 0


def open_counts(ctl_path):
    return {w["id"]: w["open"] for w in control_request(ctl_path)["workers"]}


def test_least_open_counts_return_to_zero(cluster_factory, loop_name, ctl_path):
    cluster, address, pids = start(cluster_factory, loop_name, "--policy", "least",
                                   "--control-socket", ctl_path, workers=2)
    held = []
    for _ in range(2):
        sock = socket.create_connection(address, timeout=10)
        sock.sendall(b"hold\n")
        cluster.wait_event("message")
        held.append(sock)
    # least gives the second to the idle worker: one open on each.
    wait_until(lambda: open_counts(ctl_path) == {i: 1 for i in pids}, 10, "1 open on each")
    for i in range(20):
        assert request(address, f"quick {i}") == f"quick {i}"
    for sock in held:
        with sock:
            sock.sendall(b"go\n")
            assert sock.makefile().readline() == "released\n"
    wait_until(lambda: open_counts(ctl_path) == {i: 0 for i in pids}, 10, "0 open everywhere")


def reset(address):
    """Connect and reset at once (SO_LINGER 0): the worker gets a dead connection."""
    sock = socket.create_connection(address, timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_that_reset_before_the_attach(cluster_factory, loop_name, ctl_path):
    cluster, address, pids = start(cluster_factory, loop_name, "--policy", "least",
                                   "--control-socket", ctl_path)
    (wid, pid), = pids.items()
    assert request(address, "warm up") == "warm up"
    wait_until(lambda: open_counts(ctl_path) == {wid: 0}, 10, "the warm-up closed")
    # At most one too many (a transport's fd may still be closing): five leaked would show.
    baseline = fd_count(pid)
    with socket.create_connection(address, timeout=10) as blocker:
        blocker.sendall(b"block 0.5\n")
        cluster.wait_event("message")        # the loop is stuck: what comes next waits
        for _ in range(5):
            reset(address)
        assert blocker.makefile().readline() == "unblocked\n"
    wait_until(lambda: open_counts(ctl_path) == {wid: 0}, 10, "the resets counted closed")
    assert request(address, "open") == "1"      # the worker counts only this one open
    wait_until(lambda: fd_count(pid) <= baseline, 10, f"the worker back to {baseline} fds")
    assert "Traceback" not in cluster.output(), cluster.output()


# -- Listener.deliver: the socket it builds -------------------------------------------


class FakeRuntime:
    """What Listener.accept() reads off the runtime, for connections already queued."""

    def __init__(self):
        self.data_lock = threading.Lock()
        self.receiver = type("Receiver", (), {"ended": False})()
        self.accepted = 0
        self.heartbeat_interval = 60.0
        self.listeners = {}

    def pump(self):
        return False

    def beat_if_due(self, served=None):
        pass

    def count_accepted(self):
        self.accepted += 1


def accepted_pair(family):
    """(client, server-side fd) of one real connection, the fd non-blocking as
    the primary's accept4(SOCK_NONBLOCK) passes it."""
    if family == socket.AF_UNIX:
        client, server = socket.socketpair()
    else:
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        with socket.socket(family) as listening:
            listening.bind((host, 0))
            listening.listen(1)
            client = socket.create_connection(listening.getsockname()[:2])
            server, _ = listening.accept()
    os.set_blocking(server.fileno(), False)
    return client, server.detach()


ADDRESSES = {socket.AF_INET: "127.0.0.1:8000", socket.AF_INET6: "[::1]:8000",
             socket.AF_UNIX: "unix:/run/app.sock"}


@pytest.mark.parametrize("family", list(ADDRESSES), ids=lambda f: f.name)
def test_deliver_builds_the_socket_the_kernel_has(family):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    client, fd = accepted_pair(family)
    listener = Listener(FakeRuntime(), 1, ADDRESSES[family], None)
    got = []
    listener.on_connection(got.append)
    listener.deliver(fd)
    (sock,) = got
    with client, sock:
        # What CPython would have asked the kernel for (SO_TYPE, SO_PROTOCOL, getsockname).
        asked = socket.socket(fileno=os.dup(fd))
        with asked:
            assert (sock.family, sock.type, sock.proto) == (asked.family, asked.type, asked.proto)
        assert isinstance(sock.family, socket.AddressFamily)
        assert sock.gettimeout() == 0.0 and not os.get_blocking(fd)


@pytest.mark.parametrize("address, bare", [("127.0.0.1:8000", AcceptedFd),
                                           ("unix:/run/app.sock", AcceptedFd),
                                           ("fd://3", socket.socket)])
def test_bare_delivery_where_the_family_is_known(address, bare):
    client, fd = accepted_pair(socket.AF_INET if "." in address else socket.AF_UNIX)
    listener = Listener(FakeRuntime(), 1, address, None)
    got = []
    listener.on_connection(got.append, bare=True)
    listener.deliver(fd)
    (sock,) = got
    with client:
        assert type(sock) is bare or isinstance(sock, bare)
        assert sock.fileno() == fd and sock.type == socket.SOCK_STREAM
        sock.close()
        assert not fd_is_open(fd)


def test_accept_still_returns_blocking_sockets():
    client, fd = accepted_pair(socket.AF_INET)
    listener = Listener(FakeRuntime(), 1, ADDRESSES[socket.AF_INET], None)
    listener.deliver(fd)                      # no callback: queued for accept()
    conn, peer = listener.accept(timeout=5)
    with client, conn:
        assert peer == client.getsockname()
        assert conn.gettimeout() is None and os.get_blocking(conn.fileno())
        client.sendall(b"x")
        assert conn.recv(1) == b"x"
