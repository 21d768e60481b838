"""fastfork.engine: the worker's HTTP/1.1 server in C, from the passed fd to the ASGI app.

The hand-off delivers each connection's fd; ``aio.Server`` gives it to the
engine (``attach_fd``) instead of building a Python socket and an event-loop
transport.  From there the engine (``_c/http.pyx``) reads, parses (llhttp,
through httptools), runs the app as a Task on the worker's loop and writes
the response, with keep-alive, pipelining in order, ``Expect:
100-continue``, chunked bodies both ways, backpressure both ways, gunicorn's
request limits, the idle keep-alive and request-head deadlines, and a
graceful drain.  What it does not speak (a WebSocket upgrade) it hands, fd
and bytes read, to uvicorn's protocols through ``aio.Server.reattach``.

``fastfork.web`` uses it for ``http="engine"``; ``EngineFactory`` is the
object ``create_server`` gets there: a protocol factory (uvicorn's protocol,
for the hand-offs) that also takes bare fds.
"""

from typing import Any, Callable, Optional, Tuple

from ..extras import require
from ..handoff.backend import forced_pure

# The oldest httptools whose llhttp refuses what the engine's fuzz finds two
# readings of (an obs-folded " Transfer-Encoding: chunked", a header name with
# a space): 0.6.0 to 0.6.2 let them through.  uvicorn's own protocol on those
# versions has the same exposure; the engine refuses to run on them.
MIN_HTTPTOOLS = (0, 6, 3)


def httptools_version() -> Optional[Tuple[int, ...]]:
    """The installed httptools' version, or None if it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version
        text = version("httptools")
    except PackageNotFoundError:
        return None
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def load() -> Any:
    """The compiled engine module (``fastfork.engine._c.http``); ImportError if it
    was not built or httptools is missing."""
    require("httptools", "parse HTTP in the engine (http='engine')")
    found = httptools_version()
    if found is not None and found < MIN_HTTPTOOLS:
        wanted = ".".join(map(str, MIN_HTTPTOOLS))
        raise ImportError(f"http='engine' needs httptools >= {wanted} (its parser refuses "
                          f"requests that read two ways); this is "
                          f"{'.'.join(map(str, found))}: pip install -U 'httptools>={wanted}'",
                          name="httptools")
    from ._c import http
    return http


def unavailable() -> Optional[str]:
    """Why ``http="auto"`` may not use the engine here, or None: the compiled
    parts are switched off (``FASTFORK_NO_EXTENSIONS``), or ``load()`` fails
    (not built, httptools missing or too old; its error says which)."""
    if forced_pure():
        return "FASTFORK_NO_EXTENSIONS is set"
    try:
        load()
    except ImportError as exc:
        return str(exc)
    return None


class EngineFactory:
    """What ``fastfork.create_server`` is given to serve with the engine.

    ``attach_fd(fd, conn, server, client)``: the engine takes the fd
    (``conn.finish()`` once closed).  Called as a factory, it makes
    ``protocol_factory()``'s protocol: the one a WebSocket upgrade is handed to.
    """

    __slots__ = ("engine", "_protocol_factory")

    def __init__(self, engine: Any, protocol_factory: Callable[[], Any]) -> None:
        self.engine = engine
        self._protocol_factory = protocol_factory

    def __call__(self) -> Any:
        return self._protocol_factory()

    def attach_fd(self, fd: int, conn: Any, server: Any, client: Optional[Any] = None) -> None:
        self.engine.attach(fd, conn, server, client)

    def gate(self, server: Any, owner: Any, sockname: Optional[Tuple[str, int]] = None) -> Any:
        """The engine's way in for one address (``_c/gate.pxi``): ``take(fd)``
        for each fd passed, or ``listen(fd)`` to accept on a listening socket."""
        return load().Gate(self.engine, server, owner, sockname)


def hand_over(fd: int, data: bytes, conn: Any, server: Any) -> None:
    """The engine's ``on_upgrade``: serve ``fd`` with the server's protocol from
    here on, ``data`` (what the engine read of it) first."""
    server.reattach(fd, conn, data)
