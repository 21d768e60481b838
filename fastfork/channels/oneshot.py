"""A listening socket served from the primary's own loop: one request, one answer.

The status socket (``fastfork status``) and the metrics/health endpoint are
both this: a client connects, sends one request, gets one answer, and the
connection is closed.  The primary never waits on a client: the listening
socket and each client are watched by the primary's loop (``watch`` /
``unwatch``), which calls ``handle(fd)`` when one is readable; a client
that sends nothing is dropped when newer ones arrive, and there are at most
``MAX_CLIENTS``.  No thread: a thread in the primary would be forked into
every worker mid-whatever-it-was-doing.
"""

import logging
import socket
import time

log = logging.getLogger("fastfork")

MAX_CLIENTS = 16
MAX_REQUEST = 4096
CLIENT_TIMEOUT = 5.0          # seconds an idle client may hold a connection
ANSWER_TIMEOUT = 1.0          # the most a client that does not read delays the primary


class _Client:
    __slots__ = ("sock", "buffer", "deadline")

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.deadline = time.monotonic() + CLIENT_TIMEOUT


class OneShotServer:
    """Serve ``sock`` (listening, non-blocking) from the primary's loop.

    Subclasses say when a request is complete (``complete``) and what to answer
    (``respond``); ``admit`` may refuse a client before it sends anything.
    """

    def __init__(self, sock, watch, unwatch):
        self._sock = sock
        self._watch, self._unwatch = watch, unwatch
        self._clients = {}            # fd -> _Client
        watch(sock.fileno())

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
        return self._sock.fileno()

    def handle(self, fd):
        """Serve whatever is readable on ``fd``; False if ``fd`` is not ours."""
        if fd == self._sock.fileno():
            self._accept()
            return True
        client = self._clients.get(fd)
        if client is None:
            return False
        self._read(client)
        return True

    def _accept(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return         # out of fds or the client left: it can retry
            refusal = self.admit(conn)
            if refusal is not None:
                self._answer(conn, refusal)
                conn.close()
                continue
            conn.setblocking(False)
            self._expire()
            if len(self._clients) >= MAX_CLIENTS:
                self._drop(min(self._clients.values(), key=lambda c: c.deadline))
            self._clients[conn.fileno()] = _Client(conn)
            self._watch(conn.fileno())

    def _read(self, client):
        try:
            data = client.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        client.buffer += data
        if data and len(client.buffer) <= MAX_REQUEST and not self.complete(client.buffer):
            return
        self._answer(client.sock, self._answer_for(client.buffer))
        self._drop(client)

    def _answer_for(self, request):
        if len(request) > MAX_REQUEST and not self.complete(request[:MAX_REQUEST]):
            return self.too_large()
        try:
            return self.respond(request[:MAX_REQUEST])
        except Exception as exc:
            # A bug must cost one answer, not the primary (and every worker with it).
            log.exception("%s failed to answer %r", type(self).__name__, request[:200])
            return self.failure(exc)

    def _answer(self, sock, answer):
        try:
            sock.settimeout(ANSWER_TIMEOUT)
            sock.sendall(answer)
            sock.shutdown(socket.SHUT_WR)
            # Closing with unread bytes (the rest of a request too large to
            # read) resets the connection, and a reset can discard the answer
            # before the client reads it: read what already came, unused.
            for _ in range(16):          # bounded: a client may send without end
                if not sock.recv(65536, socket.MSG_DONTWAIT):
                    break
        except OSError:
            pass

    def _expire(self):
        now = time.monotonic()
        for client in [c for c in self._clients.values() if c.deadline < now]:
            self._drop(client)

    def _drop(self, client):
        fd = client.sock.fileno()
        self._clients.pop(fd, None)
        self._unwatch(fd)
        client.sock.close()

    def close(self, unwatch=True):
        """Stop serving; ``unwatch=False`` in a forked worker (the loop is the primary's)."""
        for client in list(self._clients.values()):
            if unwatch:
                self._drop(client)
            else:
                client.sock.close()
        self._clients.clear()
        self._sock.close()
