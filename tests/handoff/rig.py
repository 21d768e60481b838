"""The rig the hand-off's unit tests drive: a real dispatcher and receivers,
the workers' data channels as socketpairs in this process, a real TCP
listener on 127.0.0.1 and real clients.

It runs the production mode: the dispatcher gets each worker's end of the
channel (as the arbiter keeps it) and, where the build has one (Cython), a
shared credit page.  Its fixtures (``build``, ``stack``, ``rig_factory``)
are in this folder's ``conftest.py``.
"""

import contextlib
import errno
import os
import resource
import socket
import struct
import time

import pytest

from fastfork.handoff import credit as credit_page
from fastfork.handoff.wire import HEADER, LID, MSG_FDS

DEADLINE = 5.0


# -- helpers ----------------------------------------------------------------------------

def open_fds():
    """The fds open in this process (without the one listdir used)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        fds.add(int(name))
    return fds


def backlog_len(listener):
    """Connections waiting in the kernel's accept queue (tcpi_unacked of a listener)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("=I", info, 24)[0]


def wait_for(cond, what, step=None, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while True:
        if step is not None:
            step()
        if cond():
            return
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        if step is None:
            time.sleep(0.005)


def recv_exactly(sock, n):
    data = b""
    sock.settimeout(DEADLINE)
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def raw_fds_message(data, fds):
    """Send-side helper: ``(payload, ancillary)`` for socket.sendmsg."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    return [data], anc


def fds_payload(lids, kind=MSG_FDS, count=None):
    count = len(lids) if count is None else count
    return HEADER.pack(kind, count) + b"".join(LID.pack(lid) for lid in lids)


class Worker:
    """One fake worker: the primary's end of its data channel and a Receiver on the other.

    The dispatcher also gets a copy of the worker's end (as the arbiter keeps
    it): the channel outlives ``die()``, and the test calls ``remove_worker``
    as the arbiter does once it reaps the worker.
    """

    def __init__(self, rig, receiver_build, subscribe=True):
        self.rig = rig
        self.primary_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rig.stack.callback(self.primary_end.close)
        self.peer = os.dup(worker_end.fileno())
        rig.stack.callback(os.close, self.peer)
        self.credit_fd = -1
        if rig.credit:
            self.credit_fd = credit_page.create(rig.build.dispatcher.CREDIT_SIZE)
            rig.stack.callback(os.close, self.credit_fd)
        try:
            self.receiver = receiver_build.receiver.Receiver(worker_end.fileno(), self.credit_fd)
        except BaseException:
            worker_end.close()
            raise
        worker_end.detach()               # the Receiver owns it now
        rig.stack.callback(self.receiver.close)
        self.slot = rig.d.add_worker(self.primary_end.fileno(), self.peer, self.credit_fd)
        if subscribe:
            rig.d.subscribe(self.slot, rig.lid)
        self.conns = []                   # (lid, socket) received

    def receive(self):
        pairs, ended = self.receiver.receive()
        got = [(lid, self.rig.adopt(fd)) for lid, fd in pairs]
        self.conns.extend(got)
        return got, ended

    def receive_until(self, n):
        """Receive until ``n`` connections in all arrived (the dispatcher keeps polling)."""
        wait_for(lambda: len(self.conns) >= n, f"{n} connections in slot {self.slot}",
                 step=lambda: (self.rig.d.poll(5), self.receive()))
        return self.conns

    def die(self):
        """The worker process is gone: its end of the channel closes."""
        self.receiver.close()


class Rig:
    """A dispatcher, a listener, and fake workers (``add_worker``).

    ``credit``: each worker gets a shared credit page; by default where the
    build has one (the Cython build), as in production.  No stall detection
    unless a test asks for it (``stall_ms``): these workers' "loop" is the
    test, which leaves what it was sent unread as long as it likes.
    """

    def __init__(self, stack, build, receiver_build=None, credit=None, **options):
        self.stack = stack
        self.build = build
        if credit is None:
            credit = build.dispatcher.CREDIT_SIZE != 0
        self.credit = credit
        self.receiver_build = receiver_build or build
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        stack.callback(self.listener.close)
        self.address = self.listener.getsockname()
        options.setdefault("stall_ms", 0)
        self.d = build.dispatcher.Dispatcher(**options)
        stack.callback(self.d.close)
        self.lid = self.d.add_listener(self.listener.fileno())
        self.workers = []
        self.clients = []

    def add_worker(self, subscribe=True):
        worker = Worker(self, self.receiver_build, subscribe)
        self.workers.append(worker)
        return worker

    def connect(self, n=1, tag=True):
        new = []
        for _ in range(n):
            client = socket.create_connection(self.address, timeout=DEADLINE)
            self.stack.callback(client.close)
            if tag:
                client.sendall(bytes([len(self.clients)]))
            self.clients.append(client)
            new.append(client)
        return new

    def adopt(self, fd):
        sock = socket.socket(fileno=fd)
        self.stack.callback(sock.close)
        return sock

    def poll_until(self, cond, what):
        wait_for(cond, what, step=lambda: self.d.poll(5))

    def raw_worker(self):
        """A worker's channel driven by hand: ``(slot, worker's end)``; the
        dispatcher gets that end as its peer, like any worker's.  No credit
        page: the test writes ACK messages, the twin's way of giving credit
        back (which the Cython dispatcher also takes, from a twin receiver)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.stack.callback(a.close)
        self.stack.callback(b.close)
        return self.d.add_worker(a.fileno(), b.fileno()), b

    def receive_all(self, n):
        """Poll and let every worker receive until ``n`` connections arrived in all."""
        def step():
            self.d.poll(5)
            for worker in self.workers:
                worker.receive()
        wait_for(lambda: sum(len(w.conns) for w in self.workers) >= n,
                 f"{n} connections received", step=step)


# -- dispatching ------------------------------------------------------------------------


@contextlib.contextmanager
def fd_room(room):
    """Within the block this process can open only ``room`` more fds: its soft
    RLIMIT_NOFILE ``room`` above its highest fd, every free number below it
    filled, then ``room`` of the fillers closed.  (The limit has room of its
    own: a process whose fds have no holes would otherwise have no filler to
    close.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 1 + room, hard))
        while True:
            try:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        for _ in range(room):
            os.close(fillers.pop())
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
