"""An access log in gunicorn's format (``--access-logformat``, ``--access-logfile``).

uvicorn's own access log has one fixed line; gunicorn's is a format of atoms
that people parse, so an app moved from gunicorn keeps its log lines.  This
is an ASGI middleware around the app (a WSGI app is already ASGI here), one
line per HTTP request when its response is done, on the logger
``fastfork.access``.  The atoms are gunicorn's:

    h remote address    l  '-'              u  user ('-': no auth here)
    t [date]            r  request line     m  method     U  path    q  query
    H protocol          s  status           B  body bytes b  body bytes or '-'
    f referer           a  user agent       T  seconds    M  milliseconds
    D  microseconds     L  seconds, decimal p  <pid>
    {name}i  a request header   {name}o  a response header   {name}e  an env variable
"""

import logging
import os
import sys
import time
from typing import Any, Optional

from .. import jsonlog

DEFAULT_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
LOGGER = "fastfork.access"


class _Atoms(dict):
    """The atoms of one request; ``{name}i``/``o``/``e`` looked up when the format asks."""

    def __init__(self, atoms, request_headers, response_headers):
        super().__init__(atoms)
        self._request = request_headers
        self._response = response_headers

    def __missing__(self, key):
        if len(key) > 3 and key[0] == "{" and key[-2] == "}":
            name, where = key[1:-2].lower(), key[-1]
            if where == "i":
                return self._request.get(name, "-")
            if where == "o":
                return self._response.get(name, "-")
            if where == "e":
                return os.environ.get(key[1:-2], "-")
        return "-"


def _headers(pairs):
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in pairs}


def atoms(scope, status, response_headers, length, seconds):
    """gunicorn's atoms for one finished request."""
    request = _headers(scope.get("headers", ()))
    path = scope.get("raw_path") or scope.get("path", "").encode()
    path = path.decode("latin-1") if isinstance(path, bytes) else path
    query = scope.get("query_string", b"").decode("latin-1")
    protocol = f"HTTP/{scope.get('http_version', '1.1')}"
    client = scope.get("client")
    values = {
        "h": client[0] if client else "-", "l": "-", "u": "-",
        "t": time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
        "r": f"{scope.get('method', '-')} {path}{'?' + query if query else ''} {protocol}",
        "m": scope.get("method", "-"), "U": path, "q": query, "H": protocol,
        "s": status if status is not None else "-", "B": length, "b": length or "-",
        "f": request.get("referer", "-"), "a": request.get("user-agent", "-"),
        "T": int(seconds), "M": int(seconds * 1000), "D": int(seconds * 1_000_000),
        "L": f"{seconds:.6f}", "p": f"<{os.getpid()}>",
    }
    return _Atoms(values, request, _headers(response_headers))


class AccessLog:
    """ASGI middleware: one line per HTTP request, in ``fmt``, on ``logger``."""

    def __init__(self, app: Any, fmt: Optional[str] = None,
                 logger: Optional[logging.Logger] = None) -> None:
        self.app = app
        self.format = fmt or DEFAULT_FORMAT
        self.logger = logger or logging.getLogger(LOGGER)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        response = {"status": None, "headers": (), "length": 0}

        async def send_and_count(message):
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["headers"] = message.get("headers", ())
            elif message["type"] == "http.response.body":
                response["length"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            self.write(scope, response, time.perf_counter() - started)

    def write(self, scope, response, seconds):
        try:
            line = self.format % atoms(scope, response["status"] or 500, response["headers"],
                                       response["length"], seconds)
        except (TypeError, ValueError, KeyError) as exc:
            line = f"bad --access-logformat {self.format!r}: {exc}"
        self.logger.info(line)


def logger(path: Optional[str]) -> logging.Logger:
    """The ``fastfork.access`` logger writing to ``path`` (None or ``-``: stdout)."""
    log = logging.getLogger(LOGGER)
    handler = (logging.StreamHandler(sys.stdout) if path in (None, "-")
               else logging.FileHandler(path))
    handler.setFormatter(jsonlog.formatter("%(message)s"))   # the line, or a JSON object
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def check_format(fmt):
    """ValueError naming the problem if ``fmt`` is not a %-format of the atoms."""
    try:
        fmt % atoms({"type": "http", "method": "GET", "path": "/"}, 200, (), 0, 0.0)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"access log format {fmt!r}: {exc}") from None
