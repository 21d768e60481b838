"""A listening socket served from the primary's own loop: one request, one answer.

The status socket (``fastfork status``) and the metrics/health endpoint are
both this: a client connects, sends one request, gets one answer, and the
connection is closed.  No thread: a thread in the primary would be forked
into every worker mid-whatever-it-was-doing.

Rules
-----
1. The primary never waits on a client.  The listening socket and every
   client live in the server's own epoll, whose one fd the primary's loop
   watches (its dispatcher only watches for readable fds; an epoll fd is
   readable while any fd in it is ready, for reading or for writing).
   Answers are written without blocking, continued when the client can take
   more.
2. Every client of a burst is answered: up to ``MAX_CLIENTS`` are held at
   once, the rest wait in the listen backlog (``BACKLOG``) until one
   finishes; memory stays bounded by ``MAX_CLIENTS`` requests of
   ``MAX_REQUEST`` and their answers.  But a client that has not sent a
   whole request within ``EVICT_AFTER`` gives its place to a new one when
   all are taken, the oldest first: else ``MAX_CLIENTS`` idle connections,
   opened again as each times out, would keep every probe of ``/livez``
   waiting in the backlog past its timeout, and the orchestrator would
   restart a primary that serves well.  A burst of real clients, each
   sending its request at once, is read long before that.
3. A client has ``CLIENT_TIMEOUT`` to send its request, and again as long to
   read its answer; then it is dropped (reset, if its answer was not all
   sent: the kernel keeps nothing for it).  ``next_deadline`` tells the
   primary's loop when to wake for that, ``expire`` does it.
4. After the answer, what the client still sends (the rest of a request too
   large to read) is read and thrown away until it closes, for ``LINGER``
   at most: closing with unread bytes would reset the connection, and a
   reset can discard the answer before the client reads it.
"""

import errno
import logging
import select
import socket
import struct
import time

log = logging.getLogger("fastfork")

MAX_CLIENTS = 512
BACKLOG = 1024                # the kernel caps it at net.core.somaxconn (4096 by default)
MAX_REQUEST = 4096
CLIENT_TIMEOUT = 5.0          # seconds to send the request, and again to read the answer
EVICT_AFTER = 0.5             # seconds without a whole request before a client may be evicted
LINGER = 1.0                  # seconds to wait for the client's close after the answer
LINGER_BYTES = 1 << 16        # the most read and thrown away after the answer
ACCEPT_RETRY = 0.1            # out of fds or memory: accept again this much later
ACCEPT_BATCH = 64             # connections accepted per turn of the primary's loop

# Out of fds or memory: accept() fails until something is closed.
_ACCEPT_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_RESET = struct.pack("ii", 1, 0)    # SO_LINGER on, 0 s: close() sends RST, keeps nothing

READING, WRITING, LINGERING = "reading", "writing", "lingering"


class _Client:
    __slots__ = ("sock", "fd", "state", "buffer", "answer", "deadline", "discarded", "accepted")

    def __init__(self, sock, now):
        self.sock = sock
        self.fd = sock.fileno()
        self.accepted = now
        self.state = READING
        self.buffer = b""
        self.answer = None
        self.deadline = now + CLIENT_TIMEOUT
        self.discarded = 0


class OneShotServer:
    """Serve ``sock`` (listening, non-blocking) from the primary's loop.

    Subclasses say when a request is complete (``complete``) and what to answer
    (``respond``, ``too_large``, ``failure``); ``admit`` may refuse a client
    before it sends anything.  The loop watches ``fileno()`` and calls
    ``handle(fd)`` when it is readable, and ``expire()`` at ``next_deadline()``.
    """

    def __init__(self, sock, watch, unwatch):
        self._sock = sock
        self._unwatch = unwatch
        self._epoll = select.epoll()          # close-on-exec
        self._clients = {}                    # fd -> _Client
        self._accepting = True
        self._retry_at = None                 # accept() ran out of fds: try again then
        self._evict_at = None                 # at the limit: a client may be evicted then
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        watch(self._epoll.fileno())

    # -- what a subclass decides ----------------------------------------------------
    def admit(self, conn):
        """None to serve ``conn``, or the answer (bytes) that refuses it."""
        return None

    def complete(self, buffer):
        """Has ``buffer`` a whole request?"""
        raise NotImplementedError

    def respond(self, request):
        """The answer (bytes) to ``request`` (bytes: complete, or all the client
        sent before it closed its side)."""
        raise NotImplementedError

    def too_large(self):
        """The answer (bytes) to a request longer than MAX_REQUEST."""
        raise NotImplementedError

    def failure(self, exc):
        """The answer (bytes) when ``respond`` raised ``exc`` (a bug, logged)."""
        raise NotImplementedError

    # -- the loop's side --------------------------------------------------------------
    def fileno(self):
        return self._epoll.fileno()

    def handle(self, fd):
        """Serve whatever is ready; False if ``fd`` is not ours."""
        if fd != self._epoll.fileno():
            return False
        listener = self._sock.fileno()
        for ready, events in self._epoll.poll(0):
            if ready == listener:
                self._accept()
                continue
            client = self._clients.get(ready)
            if client is None:
                continue                      # dropped earlier in this batch
            if client.state == WRITING:
                self._write(client)
            elif client.state == READING:
                self._read(client)
            else:
                self._linger(client)
        return True

    def next_deadline(self):
        """When ``expire`` has something to do (a monotonic time), or None."""
        deadlines = [c.deadline for c in self._clients.values()]
        deadlines += [t for t in (self._retry_at, self._evict_at) if t is not None]
        return min(deadlines, default=None)

    def expire(self, now=None):
        """Drop the clients past their deadline; accept again after running out of fds."""
        now = time.monotonic() if now is None else now
        for client in [c for c in self._clients.values() if c.deadline <= now]:
            self._drop(client, reset=client.state == WRITING)
        if self._evict_at is not None and now >= self._evict_at:
            self._evict_at = None
            if self._retry_at is None:
                self._set_accepting(True)      # _accept evicts one if it still must
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._set_accepting(True)          # _accept sees to the limit (rule 2)

    # -- accepting ----------------------------------------------------------------------
    def _set_accepting(self, on):
        if on != self._accepting:
            self._accepting = on
            self._epoll.modify(self._sock.fileno(), select.EPOLLIN if on else 0)

    def _accept(self):
        now = time.monotonic()
        for _ in range(ACCEPT_BATCH):
            if len(self._clients) >= MAX_CLIENTS and not self._evict(now):
                return                         # the rest wait in the backlog (rule 2)
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_EXHAUSTED:
                    # Level-triggered: left watched, the listener would spin the loop.
                    self._set_accepting(False)
                    self._retry_at = now + ACCEPT_RETRY
                return                         # else the client left already
            conn.setblocking(False)
            client = _Client(conn, now)
            self._clients[client.fd] = client
            self._epoll.register(client.fd, select.EPOLLIN)
            try:
                refusal = self.admit(conn)
            except OSError:
                refusal = b""                  # gone before it could be checked
            if refusal is not None:
                self._start_answer(client, refusal)

    def _evict(self, now):
        """At the limit: drop the oldest client still without a whole request if
        it has had ``EVICT_AFTER``, and say so; else stop accepting until one
        leaves, or until the oldest such client has had that long."""
        for client in self._clients.values():     # in the order they were accepted
            if client.state != READING:
                continue
            if now - client.accepted >= EVICT_AFTER:
                self._drop(client)
                return True
            self._evict_at = client.accepted + EVICT_AFTER
            break
        self._set_accepting(False)
        return False

    # -- one client ------------------------------------------------------------------------
    def _read(self, client):
        try:
            data = client.sock.recv(MAX_REQUEST + 1 - len(client.buffer))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)                 # reset: nobody to answer
            return
        client.buffer += data
        if data and len(client.buffer) <= MAX_REQUEST and not self.complete(client.buffer):
            return
        self._start_answer(client, self._answer_for(client.buffer))

    def _answer_for(self, request):
        if len(request) > MAX_REQUEST and not self.complete(request[:MAX_REQUEST]):
            return self.too_large()
        try:
            return self.respond(request[:MAX_REQUEST])
        except Exception as exc:
            # A bug must cost one answer, not the primary (and every worker with it).
            log.exception("%s failed to answer %r", type(self).__name__, request[:200])
            return self.failure(exc)

    def _start_answer(self, client, answer):
        client.state = WRITING
        client.answer = memoryview(answer)
        client.deadline = time.monotonic() + CLIENT_TIMEOUT
        self._epoll.modify(client.fd, select.EPOLLOUT)
        self._write(client)                   # most answers go out whole at once

    def _write(self, client):
        try:
            while client.answer:
                client.answer = client.answer[client.sock.send(client.answer):]
        except (BlockingIOError, InterruptedError):
            return                            # EPOLLOUT calls again when it can take more
        except OSError:
            self._drop(client)
            return
        client.answer = None
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(client)
            return
        client.state = LINGERING
        client.deadline = min(client.deadline, time.monotonic() + LINGER)
        self._epoll.modify(client.fd, select.EPOLLIN)
        self._linger(client)

    def _linger(self, client):
        try:
            data = client.sock.recv(LINGER_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        client.discarded += len(data)
        if not data or client.discarded >= LINGER_BYTES:
            self._drop(client)

    def _drop(self, client, reset=False):
        self._clients.pop(client.fd, None)
        try:
            self._epoll.unregister(client.fd)
        except OSError:
            pass
        if reset:
            try:
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            except OSError:
                pass
        client.sock.close()
        if self._retry_at is None:
            self._set_accepting(True)          # room again for one from the backlog

    def close(self, unwatch=True):
        """Stop serving; ``unwatch=False`` in a forked worker (the loop and the epoll
        are the primary's: only this process's copies of the fds are closed)."""
        if unwatch:
            self._unwatch(self._epoll.fileno())
            for client in list(self._clients.values()):
                self._drop(client)
        else:
            for client in self._clients.values():
                client.sock.close()
        self._clients.clear()
        self._sock.close()
        self._epoll.close()
