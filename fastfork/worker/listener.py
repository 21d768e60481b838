"""A listening address in a worker, and blocking ``accept()`` on it."""

import collections
import ipaddress
import os
import select
import socket
import time
from typing import Any, Callable, List, Optional, Tuple, Union

from ..addresses import Network, parse_address, parse_networks
from . import proxy_protocol

# The primary accepts with accept4(SOCK_NONBLOCK): saying so here, with the
# family and protocol, spares CPython its two getsockopt per connection (its
# getsockname stays: it checks that the fd is a socket), and asyncio the
# ioctl of setblocking(False).
_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK


class WorkerStopping(OSError):
    """Raised by ``Listener.accept()`` once the primary asked this worker to stop
    and every connection already sent to it has been handed out."""



def _kind(address):
    """``(socket class, family, proto)`` for the connections on ``address`` (as the
    primary shows it); ``(socket.socket, -1, -1)`` if it cannot tell: CPython then
    asks the socket itself."""
    try:
        family, _ = parse_address(address)
    except ValueError:
        return socket.socket, -1, -1
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on a socket whose
    # proto says TCP, as it is on the connections it accepts itself.
    return _SOCKETS[family], family, (0 if family == socket.AF_UNIX else socket.IPPROTO_TCP)


def _connection_socket(address_family):
    class ConnectionSocket(socket.socket):
        """A ``socket.socket`` whose ``family`` and ``type`` are known."""

        __slots__ = ()
        # socket.socket's properties build these enums from the C values on
        # every read, a microsecond or more each, and the loops read them two
        # or three times per connection (uvloop's connect_accepted_socket,
        # asyncio's TCP_NODELAY check).  The same values, read for free.
        family = socket.AddressFamily(address_family)
        type = socket.SocketKind.SOCK_STREAM

    return ConnectionSocket


_SOCKETS = {family: _connection_socket(family)
            for family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)}


class AcceptedFd:
    """A passed connection as uvloop's ``connect_accepted_socket`` reads it:
    ``family``, ``type``, ``fileno()``, ``close()``, and nothing else.

    Building a ``socket.socket`` costs CPython's ``__init__`` and a
    ``getsockname`` (its check that the fd is a socket) per connection, and
    uvloop only reads these four.  Once the transport owns the fd, ``detach()``
    makes this object forget it: uvloop calls ``close()`` on its file object
    after libuv has closed the fd, and by then the number may belong to
    another thread's new file.
    """

    __slots__ = ("_fd", "family")
    type = socket.SOCK_STREAM

    def __init__(self, fd, family):
        self._fd = fd
        self.family = family

    def fileno(self):
        return self._fd

    def detach(self):
        fd, self._fd = self._fd, -1
        return fd

    def close(self):
        fd = self.detach()
        if fd >= 0:
            os.close(fd)


class Listener:
    """A listening address in a worker.

    Under the round-robin policy the primary accepts and this object is fed
    connections over the data channel; under ``none``/``reuseport`` it holds a
    real listening socket.  Either way ``accept()`` returns a blocking
    ``socket.socket`` and its peer address.
    """

    lid: int
    address: str                                  # as the primary shows it
    sock: Optional[socket.socket]
    proxy_allow: Optional[List[Network]]

    def __init__(self, runtime, lid, address, sock, proxy=None):
        self._runtime = runtime
        self.lid = lid
        self.address = address
        self.sock = sock                       # None under round-robin
        # With --proxy-protocol: the networks allowed to send a PROXY header.
        self.proxy_allow = None if proxy is None else parse_networks(proxy)
        self._queue = collections.deque()
        self._callback = None                  # asyncio: called with each new socket
        self._socket, self._family, self._proto = _kind(address)
        self._bare = False                     # deliver AcceptedFd, not a socket
        # on_fd's callback: the runtime hands the bare fd to it (Receiver.hand_out)
        self.take: Optional[Callable[[int], object]] = None

    def on_connection(self, callback: Callable[[Union[socket.socket, "AcceptedFd"]], object],
                      bare: bool = False) -> None:
        """Hand each connection that arrives to ``callback(sock)`` instead of
        queueing it for ``accept()`` (how an event loop serves round-robin).

        ``bare``: ``sock`` may be an ``AcceptedFd`` rather than a
        ``socket.socket`` (for uvloop; a real socket where the family is unknown).
        """
        self._callback = callback
        self._bare = bare and self._family > 0

    def on_fd(self, callback: Callable[[int], object]) -> None:
        """Hand each connection the primary passes to ``callback(fd)`` as the
        bare fd, with no object made for it (an engine's ``Gate.take``).

        ``callback`` reads the connection's first request in the same pass of
        the loop (at once, or in a callback it schedules with ``call_soon``),
        which lets the data reader take the next connection a pass sooner
        (``loopstate``)."""
        self.take = callback

    def local_address(self) -> Optional[Tuple[str, int]]:
        """``(host, port)``: the local address of every connection on this
        address when it is bound to one IP; None for a wildcard (``0.0.0.0``,
        ``::``), a unix path, or an address not known here."""
        try:
            if self.sock is not None:
                family, bound = self.sock.family, self.sock.getsockname()
            else:
                family, bound = parse_address(self.address)
        except (OSError, ValueError):
            return None
        if family not in (socket.AF_INET, socket.AF_INET6):
            return None
        host, port = bound[0], bound[1]
        try:
            ip = ipaddress.ip_address(host)       # not a name, nor a scoped fe80::1%eth0
        except ValueError:
            return None
        if ip.is_unspecified or not port:
            return None
        return host, port

    def deliver(self, fd: int) -> None:
        """A connection the primary passed for this address, when ``take`` is
        None (the runtime calls this): a socket for ``on_connection``'s
        callback, or for ``accept()``."""
        if self._bare:
            sock = AcceptedFd(fd, self._family)
        else:
            sock = self._socket(self._family, _STREAM, self._proto, fd)
        if self._callback is not None:
            self._callback(sock)
        else:
            self._queue.append(sock)

    def accept(self, timeout: Optional[float] = None) -> Tuple[socket.socket, Any]:
        """The next connection as ``(socket, address)``; WorkerStopping when stopping.

        ``timeout`` (seconds) raises TimeoutError if nothing arrives.  Waiting
        here sends the worker's heartbeats: a worker that stops coming back to
        ``accept()`` (a handler stuck) stops beating, and the primary's
        ``--timeout`` replaces it, as for an event loop.
        """
        runtime = self._runtime
        wait_on = self.sock if self.sock is not None else runtime.receiver
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            taken = self._next()
            if taken is not None:
                conn, addr = self._took(*taken)
                if conn is not None:
                    return conn, addr
                continue          # refused (PROXY protocol): take the next one
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                raise TimeoutError(f"no connection on {self.address} within {timeout}s")
            runtime.beat_if_due(served=runtime.accepted)
            wait = runtime.heartbeat_interval if remaining is None else min(
                remaining, runtime.heartbeat_interval)
            if self.proxy_allow is not None:
                # No loop to time it: the refusals not logged are counted here.
                proxy_protocol.flush_warnings()
                flush_in = proxy_protocol.flush_delay()
                if flush_in is not None:
                    wait = min(wait, flush_in)
            watch = [wait_on]
            if self.sock is not None:
                watch.append(runtime.stop_fd)
            select.select(watch, [], [], wait)

    def _next(self):
        """A connection ready now as ``(socket, peer)``, or None; WorkerStopping at the end."""
        runtime = self._runtime
        if self.sock is not None:
            if runtime.stopping.is_set():
                raise WorkerStopping(f"worker is stopping; no more connections on {self.address}")
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return None
            conn.setblocking(True)
            return conn, addr
        with runtime.data_lock:
            if not self._queue and not runtime.receiver.ended:
                runtime.pump()
            if self._queue:
                conn = self._queue.popleft()
                conn.setblocking(True)
                try:
                    addr = conn.getpeername()
                except OSError:
                    addr = None
                return conn, addr
            if runtime.receiver.ended:
                raise WorkerStopping(f"worker is stopping; no more connections on {self.address}")
        return None

    def _took(self, conn, addr):
        self._runtime.count_accepted()
        if self.proxy_allow is not None:
            return self._proxied(conn, addr)
        return conn, addr

    def _proxied(self, conn, peer):
        # The header is read here, in the worker, so a slow one holds up this
        # worker's accept() only (HEADER_TIMEOUT at most), never the primary.
        if not proxy_protocol.allowed(peer, self.proxy_allow):
            proxy_protocol.refuse(conn, peer, proxy_protocol.UNTRUSTED, proxy_protocol.UNTRUSTED)
            return None, None
        try:
            source = proxy_protocol.read_header_blocking(conn)
        except (proxy_protocol.ProxyHeaderError, OSError) as exc:
            proxy_protocol.refuse(conn, peer, exc, proxy_protocol.BAD_HEADER)
            return None, None
        return conn, source or peer

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else self._runtime.receiver.fileno()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        elif self._runtime.listeners.get(self.lid) is self:
            self._runtime.unlisten(self.lid)       # the primary's copy of the address
        self._runtime.listeners.pop(self.lid, None)
        while self._queue:
            self._queue.popleft().close()
