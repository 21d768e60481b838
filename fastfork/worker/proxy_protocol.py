"""The PROXY protocol (v1 and v2, HAProxy's spec), read by the worker before the app.

A load balancer in front (HAProxy ``send-proxy``/``send-proxy-v2``, nginx
``proxy_protocol on``, AWS NLB) writes one header on each connection that
says who the client is; the app then sees that address instead of the
balancer's: as the asyncio transport's ``peername`` and its socket's
``getpeername()``, so also as the ASGI scope's ``client``, WSGI's
``REMOTE_ADDR`` and uvicorn's access log.

Rules
-----
1. Only peers in ``allow`` (networks, from ``--proxy-allow-from``) may send a
   header; any other peer's connection is closed unread, with a log line.
2. The header is read without reading past it (v1: up to its CRLF, found
   with MSG_PEEK; v2: exactly its announced length), so whatever the client
   sent after it is left in the socket for the app.
3. A header that is malformed, or not complete within ``HEADER_TIMEOUT``,
   closes the connection with a log line.  Nothing else happens: the worker
   serves on.  The log lines are rate-limited (``WarningLimiter``): one per
   kind per ``WARN_INTERVAL``, then how many more were refused.
4. ``PROXY UNKNOWN`` (v1) and the ``LOCAL`` command (v2, a balancer's own
   health check) carry no client: the real peer is kept.

``HeaderParser`` is the protocol alone (no I/O, table-tested); the readers
below drive it on a non-blocking socket, from an event loop or blocking.
"""

import asyncio
import ipaddress
import logging
import select
import socket
import struct
import threading
import time

log = logging.getLogger("fastfork.worker")

HEADER_TIMEOUT = 5.0
V1_PREFIX = b"PROXY "
V1_MAX = 107                       # the spec's longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = struct.Struct("!12sBBH")
V2_MAX = 16 + 4096                 # more address/TLV bytes than any balancer sends
_V2_ADDRESSES = {0x1: (socket.AF_INET, 4, struct.Struct("!4s4sHH")),
                 0x2: (socket.AF_INET6, 16, struct.Struct("!16s16sHH"))}


class ProxyHeaderError(ValueError):
    """The bytes at the start of a connection are not a valid PROXY header."""


def allowed(peer, networks):
    """May ``peer`` (a socket's peername) send a PROXY header?"""
    if not isinstance(peer, tuple):
        return True        # a unix socket: only local processes can connect
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class HeaderParser:
    """Feed it bytes until ``done``; then ``source`` is the client or None (rule 4).

    ``want(peeked)`` says how many bytes to consume next: never more than
    belong to the header (rule 2); ``peeked`` is what MSG_PEEK showed.
    """

    def __init__(self):
        self.buffer = b""
        self.done = False
        self.source = None
        self.version = None

    def want(self, peeked=b""):
        """How many of the bytes available (``peeked``) are surely header bytes."""
        have = len(self.buffer)
        if have < len(V1_PREFIX):
            return len(V1_PREFIX) - have
        if self.version == 1:
            end = peeked.find(b"\n")
            if end >= 0:
                return end + 1
            return len(peeked)                    # no end yet: all of it is header
        if have < V2_HEADER.size:
            return V2_HEADER.size - have
        return V2_HEADER.size + V2_HEADER.unpack(self.buffer[:16])[3] - have

    def feed(self, data):
        self.buffer += data
        have = len(self.buffer)
        if self.version is None and have >= len(V1_PREFIX):
            if self.buffer.startswith(V1_PREFIX):
                self.version = 1
            elif self.buffer.startswith(V2_SIGNATURE[:len(V1_PREFIX)]):
                self.version = 2
            else:
                raise ProxyHeaderError(f"not a PROXY header (starts {self.buffer[:16]!r})")
        if self.version == 1:
            if self.buffer.endswith(b"\n"):
                self._parse_v1()
            elif have >= V1_MAX:
                raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
        elif self.version == 2 and have >= V2_HEADER.size:
            signature, ver_cmd, _, length = V2_HEADER.unpack(self.buffer[:16])
            if signature != V2_SIGNATURE:
                raise ProxyHeaderError("bad v2 signature")
            if ver_cmd >> 4 != 2:
                raise ProxyHeaderError(f"v2 header of version {ver_cmd >> 4}")
            if 16 + length > V2_MAX:
                raise ProxyHeaderError(f"v2 header of {16 + length} bytes")
            if have == 16 + length:
                self._parse_v2()

    def _parse_v1(self):
        if not self.buffer.endswith(b"\r\n"):
            raise ProxyHeaderError("v1 header does not end in CRLF")
        fields = self.buffer[:-2].decode("ascii", "replace").split(" ")
        self.done = True
        if len(fields) >= 2 and fields[1] == "UNKNOWN":
            return
        if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
            raise ProxyHeaderError(f"v1 header {self.buffer[:-2]!r} is not "
                                   f"'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
        version = 4 if fields[1] == "TCP4" else 6
        try:
            src = ipaddress.ip_address(fields[2])
            ipaddress.ip_address(fields[3])
            sport, dport = int(fields[4]), int(fields[5])
        except ValueError:
            raise ProxyHeaderError(f"v1 header {self.buffer[:-2]!r} has a bad address "
                                   f"or port") from None
        if src.version != version or not (0 <= sport <= 65535 and 0 <= dport <= 65535) \
                or fields[4] != str(sport) or fields[5] != str(dport):
            raise ProxyHeaderError(f"v1 header {self.buffer[:-2]!r} has a bad address or port")
        self.source = (str(src), sport)

    def _parse_v2(self):
        _, ver_cmd, family, length = V2_HEADER.unpack(self.buffer[:16])
        command = ver_cmd & 0xF
        self.done = True
        if command == 0x0:
            return                                   # LOCAL: the balancer itself
        if command != 0x1:
            raise ProxyHeaderError(f"v2 command {command} is neither LOCAL nor PROXY")
        spec = _V2_ADDRESSES.get(family >> 4)
        if spec is None or family & 0xF != 0x1:
            return                                   # UNSPEC or unix: no client address
        af, _, layout = spec
        if length < layout.size:
            raise ProxyHeaderError(f"v2 header too short for its addresses ({length} bytes)")
        src, _, sport, _ = layout.unpack(self.buffer[16:16 + layout.size])
        self.source = (socket.inet_ntop(af, src), sport)


def _step(sock, parser):
    """Consume what is available of the header; False when the socket has nothing."""
    peeked = b""
    if parser.version == 1:
        peeked = sock.recv(V1_MAX - len(parser.buffer), socket.MSG_PEEK)
        if not peeked:
            raise ProxyHeaderError("connection closed inside the header")
    data = sock.recv(parser.want(peeked))
    if not data:
        raise ProxyHeaderError("connection closed inside the header")
    parser.feed(data)
    return True


async def read_header(loop, sock, timeout=HEADER_TIMEOUT):
    """Read the header from non-blocking ``sock`` on ``loop``; returns the source or None."""
    parser = HeaderParser()
    deadline = loop.time() + timeout
    while not parser.done:
        try:
            _step(sock, parser)
            continue
        except (BlockingIOError, InterruptedError):
            pass
        readable = loop.create_future()
        loop.add_reader(sock.fileno(), readable.set_result, None)
        try:
            await asyncio.wait_for(readable, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise ProxyHeaderError(f"no complete header within {timeout:g}s") from None
        finally:
            loop.remove_reader(sock.fileno())
    return parser.source


def read_header_blocking(sock, timeout=HEADER_TIMEOUT):
    """The same for a blocking worker's ``accept()``; ``sock`` is made non-blocking
    while the header is read."""
    parser = HeaderParser()
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    try:
        while not parser.done:
            try:
                _step(sock, parser)
                continue
            except (BlockingIOError, InterruptedError):
                pass
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise ProxyHeaderError(f"no complete header within {timeout:g}s")
    finally:
        sock.setblocking(True)
    return parser.source


class WarningLimiter:
    """At most one line per ``interval`` seconds per kind of event; the events
    in between are counted, and reported with the next line or, if none comes,
    by ``due`` once the interval is over.  No I/O: ``now`` is given (a
    monotonic time), so the rules are tested as a table.
    """

    def __init__(self, interval):
        self.interval = interval
        self._kinds = {}       # kind -> [quiet_until, suppressed, last_line_at, last detail]

    def hit(self, kind, now, detail=None):
        """One event: None to stay silent (counted), else how many were not
        logged since the last line of ``kind`` (to be said with this one)."""
        state = self._kinds.get(kind)
        if state is not None and now < state[0]:
            state[1] += 1
            state[3] = detail
            return None
        suppressed = state[1] if state is not None else 0
        self._kinds[kind] = [now + self.interval, 0, now, None]
        return suppressed

    def due(self, now):
        """``[(kind, count, seconds since the last line, last detail)]`` of kinds
        whose interval ended with events not logged; each counts as a line."""
        found = []
        for kind, state in self._kinds.items():
            if state[1] and now >= state[0]:
                found.append((kind, state[1], now - state[2], state[3]))
                self._kinds[kind] = [now + self.interval, 0, now, None]
        return found

    def next_due(self):
        """When ``due`` will have something to say (a monotonic time), or None."""
        return min((state[0] for state in self._kinds.values() if state[1]), default=None)


# A flood of refused connections (a scanner, a misconfigured balancer) must
# not flood the log: one line per kind per WARN_INTERVAL, then a count.
WARN_INTERVAL = 5.0
UNTRUSTED = "not in --proxy-allow-from"
BAD_HEADER = "bad or missing header"
_warnings = WarningLimiter(WARN_INTERVAL)
_warnings_lock = threading.Lock()        # blocking workers accept() from several threads
_flush_timers = {}                       # id(loop) -> its pending flush (TimerHandle)


def refuse(sock, peer, why, kind=BAD_HEADER, loop=None):
    """Close a connection whose header is missing, bad or from an untrusted peer;
    say so in the log (rate-limited).  ``loop``: the event loop that will say
    how many were not logged, if no other refusal comes to say it."""
    sock.close()
    with _warnings_lock:
        suppressed = _warnings.hit(kind, time.monotonic(), f"{_show(peer)}: {why}")
    if suppressed is not None:
        more = (f" ({suppressed} more refused since the last line of this kind, not logged)"
                if suppressed else "")
        log.warning("PROXY protocol: closing the connection from %s: %s%s",
                    _show(peer), why, more)
    if loop is not None:
        _flush_later(loop)


def flush_warnings():
    """Log the counts of refusals not logged whose interval is over."""
    with _warnings_lock:
        found = _warnings.due(time.monotonic())
    for kind, count, age, last in found:
        log.warning("PROXY protocol: %d more connections refused (%s) since the last line "
                    "%.1fs ago; the last from %s", count, kind, age, last)


def flush_delay():
    """Seconds until ``flush_warnings`` has something to log, or None."""
    with _warnings_lock:
        at = _warnings.next_due()
    return None if at is None else max(0.0, at - time.monotonic())


def _flush_later(loop):
    delay = flush_delay()
    if delay is None or id(loop) in _flush_timers:
        return

    def fire():
        _flush_timers.pop(id(loop), None)
        flush_warnings()
        _flush_later(loop)

    _flush_timers[id(loop)] = loop.call_later(delay, fire)


def _show(peer):
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unknown peer")


class ProxiedSocket:
    """The transport's socket as the app sees it: ``getpeername()`` is the client
    the header named, everything else is the real socket's (asyncio's
    ``TransportSocket`` or uvloop's pseudo-socket).

    uvicorn asks ``get_extra_info("socket").getpeername()`` before
    ``peername`` (``uvicorn.protocols.utils.get_remote_addr``), and from
    that builds ASGI's ``client``, WSGI's ``REMOTE_ADDR`` and its access log;
    overriding ``peername`` alone left all of them naming the balancer.
    """

    __slots__ = ("_sock", "_peername")

    def __init__(self, sock, peername):
        self._sock = sock
        self._peername = peername

    def getpeername(self):
        return self._peername

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def __repr__(self):
        return f"<ProxiedSocket peer={self._peername!r} of {self._sock!r}>"


class ProxiedTransport(asyncio.Transport):
    """The app's view of a transport: the client the header named is its
    ``peername`` and its socket's ``getpeername()``."""

    def __init__(self, transport, peername):
        super().__init__()
        self._transport = transport
        self._peername = peername

    def get_extra_info(self, name, default=None):
        if name == "peername":
            return self._peername
        if name == "socket":
            sock = self._transport.get_extra_info("socket")
            return default if sock is None else ProxiedSocket(sock, self._peername)
        return self._transport.get_extra_info(name, default)

    # Everything else is the real transport's.
    def is_closing(self): return self._transport.is_closing()
    def close(self): self._transport.close()
    def set_protocol(self, protocol): self._transport.set_protocol(protocol)
    def get_protocol(self): return self._transport.get_protocol()
    def is_reading(self): return self._transport.is_reading()
    def pause_reading(self): self._transport.pause_reading()
    def resume_reading(self): self._transport.resume_reading()
    def write(self, data): self._transport.write(data)
    def writelines(self, data): self._transport.writelines(data)
    def write_eof(self): self._transport.write_eof()
    def can_write_eof(self): return self._transport.can_write_eof()
    def abort(self): self._transport.abort()
    def get_write_buffer_size(self): return self._transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high=None, low=None):
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self):
        return self._transport.get_write_buffer_limits()
