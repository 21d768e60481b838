"""A tiny HTTP/1.1 server protocol: the demo's server and the benchmarks' reference one.

Every request gets the same small plain-text body (the demo's
``hello from worker 2 (pid 1234)``), so the answer bytes are built once (and
again when the ``Date`` second changes) and a request costs one header scan
and one ``transport.write``.

Rules it keeps:

* HTTP/1.1 connections stay open unless the request says ``Connection:
  close``; HTTP/1.0 ones close unless it says ``Connection: keep-alive``.
* Pipelined requests are answered in order; a request body announced with
  ``Content-Length`` is read and discarded, possibly across several reads.
* Once the worker is stopping (``fastfork.is_stopping()``), every answer
  carries ``Connection: close``, idle keep-alive connections are closed at
  once (``HelloApp.close_idle``, wired to ``fastfork.on_stop``) and a
  connection handed over during the stop gets ``IDLE_GRACE`` seconds to send
  its request.  Without that, one idle client would hold a draining worker
  until the primary's graceful timeout.
* Malformed requests get ``400``, a head over ``MAX_HEAD`` bytes ``431``,
  chunked request bodies ``501``; each of those closes the connection.
"""

import asyncio
import time
from email.utils import formatdate

import fastfork
from fastfork.worker import runtime as _runtime

MAX_HEAD = 64 * 1024
IDLE_GRACE = 1.0       # seconds a connection accepted while stopping may stay silent

_REASONS = {200: "OK", 400: "Bad Request", 431: "Request Header Fields Too Large",
            501: "Not Implemented"}


class HelloApp:
    """What one worker answers, and the connections it has open.

    ``body`` (bytes) is sent for every request; ``on_request()``, if given, is
    called once per request before the answer is written.
    """

    def __init__(self, body, on_request=None, server_name="fastfork"):
        self.body = bytes(body)
        self.on_request = on_request
        self.server_name = server_name
        self.connections = set()
        # fastfork.is_stopping() costs a few calls per request; the worker's
        # stop event answers the same question with one.
        self.stopping = (_runtime.runtime().stopping.is_set if fastfork.is_worker
                         else fastfork.is_stopping)
        self.requests = 0
        self._second = None
        self._answers = None

    def answers(self):
        """Answer bytes for now, indexed by ``3 * head_only + mode`` where mode is
        0 (keep-alive, HTTP/1.1's default), 1 (close) or 2 (an explicit
        ``Connection: keep-alive``, which HTTP/1.0 clients need to see)."""
        second = int(time.time())
        if second != self._second:
            self._second = second
            base = (f"HTTP/1.1 200 OK\r\nServer: {self.server_name}\r\n"
                    f"Date: {formatdate(second, usegmt=True)}\r\n"
                    f"Content-Type: text/plain; charset=utf-8\r\n"
                    f"Content-Length: {len(self.body)}\r\n").encode()
            heads = (base + b"\r\n", base + b"Connection: close\r\n\r\n",
                     base + b"Connection: keep-alive\r\n\r\n")
            self._answers = tuple(h + self.body for h in heads) + heads
        return self._answers

    def protocol_factory(self):
        return HTTPProtocol(self)

    def close_idle(self):
        """Close every connection that is between requests (call when stopping)."""
        for protocol in list(self.connections):
            protocol.close_if_idle()


class HTTPProtocol(asyncio.Protocol):
    """One client connection (see the module docstring for the rules)."""

    # No __slots__: fastfork.create_server wraps connection_made/lost per instance.

    def __init__(self, app):
        self.app = app
        self.transport = None
        self._buffer = b""
        self._discard = 0          # request-body bytes still to skip
        self._closing = False
        self._paused = False

    def connection_made(self, transport):
        self.transport = transport
        self.app.connections.add(self)
        if self.app.stopping():
            asyncio.get_running_loop().call_later(IDLE_GRACE, self.close_if_idle)

    def connection_lost(self, exc):
        self.app.connections.discard(self)
        self.transport = None

    def close_if_idle(self):
        if self.transport is not None and not self._buffer and not self._discard:
            self._closing = True
            self.transport.close()

    # Flow control: a client that pipelines without reading its answers is
    # not read from until the answers already queued have gone out.
    def pause_writing(self):
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_writing(self):
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def data_received(self, data):
        if self._closing:
            return
        if self._discard:
            if len(data) <= self._discard:
                self._discard -= len(data)
                return
            data = data[self._discard:]
            self._discard = 0
        buffer = self._buffer + data if self._buffer else data
        out = []
        while buffer:
            if buffer[:2] == b"\r\n":
                # Empty lines before a request line are allowed (RFC 9112, 2.2):
                # some clients send one after a request body.
                buffer = buffer.lstrip(b"\r\n")
                continue
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._fail(out, 431)
                    return
                break
            verdict = self._request(buffer[:end])
            if verdict < 0:
                self._fail(out, -verdict)
                return
            mode, head_only, length = verdict & 3, verdict & 4, verdict >> 3
            buffer = buffer[end + 4:]
            if length:
                if len(buffer) < length:
                    self._discard = length - len(buffer)
                    buffer = b""
                else:
                    buffer = buffer[length:]
            if self.app.on_request is not None:
                self.app.on_request()
            self.app.requests += 1
            if self.app.stopping():
                mode = 1
            out.append(self.app.answers()[(3 if head_only else 0) + mode])
            if mode == 1:
                self._closing = True
                self.transport.write(b"".join(out))
                self.transport.close()
                self._buffer = b""
                return
        self._buffer = buffer
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _request(self, head):
        """Check one request head; returns ``-status`` for an error, else an int
        packing the answer mode (bits 0-1, see ``HelloApp.answers``), HEAD
        (bit 2) and the body length (bits 3+)."""
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            return -400
        version = parts[2]
        if version == b"HTTP/1.1":
            mode = 0
        elif version == b"HTTP/1.0":
            mode = 1
        else:
            return -400
        length = 0
        if line_end >= 0:
            for line in head[line_end + 2:].split(b"\r\n"):
                name, sep, value = line.partition(b":")
                if not sep or not name or name[-1:] in (b" ", b"\t"):
                    return -400
                name = name.lower()
                if name == b"connection":
                    tokens = {t.strip() for t in value.lower().split(b",")}
                    if b"close" in tokens:
                        mode = 1
                    elif b"keep-alive" in tokens and version == b"HTTP/1.0":
                        mode = 2
                elif name == b"content-length":
                    value = value.strip()
                    if not value.isdigit():
                        return -400
                    length = int(value)
                elif name == b"transfer-encoding":
                    return -501
        return (length << 3) | (4 if parts[0] == b"HEAD" else 0) | mode

    def _fail(self, out, status):
        reason = _REASONS[status]
        body = f"{status} {reason}\n".encode()
        out.append(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        self._closing = True
        self._buffer = b""
        self.transport.write(b"".join(out))
        self.transport.close()
