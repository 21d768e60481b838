"""The primary's HTTP endpoint for load balancers, Kubernetes and Prometheus.

``GET /livez``: 200 while the primary's loop runs (it is the loop that
answers).  ``GET /readyz``: 200 while at least one worker serves and no
graceful stop has begun; 503, with the reason, from the moment a SIGTERM
arrives (during ``--shutdown-delay`` too), so that a load balancer stops
sending before the listeners close.  ``GET /metrics`` (``--metrics`` only):
the Prometheus exposition of ``metrics``.

Served from the primary's own loop like the status socket (``oneshot``): one
request per connection, answered with ``Connection: close``.
"""

from ..addresses import bind_listener, describe, parse_address
from .oneshot import BACKLOG, MAX_REQUEST, OneShotServer

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def _answer(code, body, content_type="text/plain; charset=utf-8", head=False):
    head_lines = (f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                  f"Connection: close\r\n\r\n").encode()
    return head_lines if head else head_lines + body


class Endpoint(OneShotServer):
    """``/livez``, ``/readyz`` and, with ``metrics``, ``/metrics`` on ``address``.

    ``readiness()`` returns ``(ready, reason)``; ``registry`` is a
    prometheus_client registry, or None for health only.  Binding fails with
    an OSError naming the address (a port in use, say).
    """

    def __init__(self, address, readiness, registry, watch, unwatch):
        family, sockaddr = parse_address(address)
        sock = bind_listener(family, sockaddr, BACKLOG)
        bound = sock.getsockname()
        self.address = describe(family, bound if isinstance(bound, str) else bound[:2])
        self._readiness = readiness
        self._registry = registry
        self.paths = ["/livez", "/readyz"] + (["/metrics"] if registry is not None else [])
        super().__init__(sock, watch, unwatch)

    def complete(self, buffer):
        return b"\r\n\r\n" in buffer or b"\n\n" in buffer

    def too_large(self):
        return _answer(431, f"a request's line and headers are at most {MAX_REQUEST} "
                            f"bytes\n".encode())

    def failure(self, exc):
        return _answer(500, f"the primary failed to answer: {exc!r}\n".encode())

    def respond(self, request):
        if not self.complete(request):
            return _answer(400, b"the client closed before the end of its request\n")
        line = request.split(b"\n", 1)[0].strip()
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _answer(400, b"a request is one HTTP/1.x request line and headers\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _answer(405, b"only GET and HEAD\n")
        head = method == b"HEAD"
        if target == b"/livez":
            return _answer(200, b"ok\n", head=head)
        if target == b"/readyz":
            ready, reason = self._readiness()
            return _answer(200 if ready else 503, f"{reason}\n".encode(), head=head)
        if target == b"/metrics" and self._registry is not None:
            from .metrics import render
            body, content_type = render(self._registry)
            return _answer(200, body, content_type, head=head)
        return _answer(404, f"no such path; paths: {', '.join(self.paths)}\n".encode(),
                       head=head)
