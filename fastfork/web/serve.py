"""The entry point a worker calls: ``fastfork.web.serve(app, *addresses, **options)``.

Everything that can be wrong (not an app, a missing package of the ``web``
extra, a bad option) is raised before anything is served.  Then the app is
served with uvicorn's protocols on the shared addresses until the primary
asks this worker to stop, drained, and its lifespan shut down.
"""

import asyncio
from typing import Any, Callable, Optional, cast

import fastfork

from . import access, choice, deps, header_map as _header_map
from .. import loops
from ..addresses import Address
from ..worker import runtime as _runtime
from .asgi import AsgiServer, head_timeouts, requests_served
from .detect import classify
from .wsgi import DEFAULT_BODY_BUFFER, DEFAULT_THREADS, wrap

KINDS = ("auto", "asgi", "wsgi")
LOOPS = loops.LOOPS


def prepare(app: object, *addresses: Address, kind: str = "auto", threads: int = DEFAULT_THREADS,
            body_buffer: int = DEFAULT_BODY_BUFFER, sched_batch: bool = False,
            header_map: str = _header_map.DEFAULT, access_log_format: Optional[str] = None,
            access_log_file: Optional[str] = None, **options: Any) -> AsgiServer:
    """Check and build the worker's ``AsgiServer`` (not started); see ``serve``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    _header_map.check(header_map)
    detected, interface = classify(app)
    if kind == "auto":
        kind = detected
    elif kind == "asgi" and detected == "wsgi":
        interface = "asgi3"     # the caller knows better: an ASGI app that looks like WSGI
    deps.check(kind, options.get("http", "auto"), options.get("ws", "auto"))
    on_loop = kind == "wsgi" and threads == 0
    by_engine = False
    if kind == "wsgi":
        http, gap = choice.resolve(options.get("http", "auto"),
                                   choice.asks_tls(options.get("ssl"), options))
        by_engine = http == "engine"
        if on_loop and not by_engine:
            raise ValueError(choice.needs_engine(
                "threads=0 (a WSGI app called on the loop thread)", http, gap))
    if not fastfork.is_worker:
        raise RuntimeError("fastfork.web serves from a fastfork worker: call it from the target "
                           "of fastfork.run()/Cluster(), or in the worker branch of the Node form")
    if kind == "wsgi":
        if by_engine:
            # The engine calls the app itself, on the loop thread or on its
            # own pool; the adapter below serves what the pool does not take
            # (a body too large to read first), and is what uvicorn's config
            # is built with (its pool starts only if it is used).
            options["wsgi_app"] = app
            options["wsgi_threads"] = threads
            options["wsgi_sched_batch"] = sched_batch
            options["wsgi_body_limit"] = body_buffer
            options["wsgi_header_map"] = header_map
        app, close = wrap(app, max(threads, 1), body_buffer, header_map)
        # WSGI has no lifespan and no WebSockets: do not offer either.
        options.setdefault("lifespan", "off")
        options["ws"] = "none"
        options.setdefault("on_close", close)
        interface = "asgi3"
    if access_log_format is not None or access_log_file is not None:
        # gunicorn's access log instead of uvicorn's (see access).
        if interface == "asgi2":
            from uvicorn.middleware.asgi2 import ASGI2Middleware
            app, interface = ASGI2Middleware(cast(Any, app)), "asgi3"
        app = access.AccessLog(app, access_log_format, access.logger(access_log_file))
        options["access_log"] = False
    options.setdefault("interface", interface or "auto")
    return AsgiServer(app, addresses, **options)


async def serve_async(app: object, *addresses: Address, kind: str = "auto",
                      threads: int = DEFAULT_THREADS,
                      on_started: Optional[Callable[[AsgiServer], object]] = None,
                      body_buffer: int = DEFAULT_BODY_BUFFER, **options: Any) -> AsgiServer:
    """The async twin of ``serve``, for a worker that runs its own loop; returns the
    ``AsgiServer`` once it has stopped.  ``on_started(server)`` (plain or async) is
    called once every address is served."""
    server = prepare(app, *addresses, kind=kind, threads=threads, body_buffer=body_buffer,
                     **options)
    await _serve_prepared(server, on_started)
    return server


async def _serve_prepared(server: AsgiServer,
                          on_started: Optional[Callable[[AsgiServer], object]]) -> None:
    # Heartbeats report requests, so status and max-requests count them.
    _runtime.runtime().request_counter = requests_served
    _runtime.runtime().head_timeout_counter = head_timeouts
    await server.start()
    try:
        if on_started is not None:
            result = on_started(server)
            if asyncio.iscoroutine(result):
                await result
        await fastfork.wait_stopping()
    finally:
        await server.stop()


def serve(app: object, *addresses: Address, kind: str = "auto", loop: str = "auto",
          threads: int = DEFAULT_THREADS,
          on_started: Optional[Callable[[AsgiServer], object]] = None,
          body_buffer: int = DEFAULT_BODY_BUFFER, **options: Any) -> AsgiServer:
    """In a worker: serve ``app`` on ``addresses`` until the primary says stop (blocking).

    ``kind``: ``"auto"`` (detect), ``"asgi"`` or ``"wsgi"``.  ``loop``:
    ``"uvloop"`` (required), ``"auto"`` (uvloop when installed) or ``"asyncio"``.
    ``threads``: WSGI calls run on that many threads per worker (0: on the
    loop thread, by the engine: for apps that do not block);
    ``body_buffer``: a WSGI request body is read on the loop up to that many
    bytes before a thread is taken (0: off; on the loop thread: the largest
    body, past which a 413); ``sched_batch``: a worker whose WSGI calls run
    on the engine's pool runs under ``SCHED_BATCH`` (see the pool's notes in
    ``docs/deployment/asgi-wsgi.md``); ``header_map``: what a WSGI app's
    environ does with a request header whose name has an underscore:
    ``"drop"`` it (the default), ``"refuse"`` the request (400), or map it
    as any other (``"dangerous"``: ``X_Forwarded_For`` joins
    ``X-Forwarded-For``), as gunicorn's setting of that name (see
    ``fastfork.web.header_map``).  Other options go to ``AsgiServer``
    (uvicorn's: ``http``, ``ws``, ``lifespan``,
    ``timeout_keep_alive``, ``root_path``, ``proxy_headers``,
    ``forwarded_allow_ips``, ``limit_concurrency``,
    ``h11_max_incomplete_event_size``, ``access_log``, ``log_level``,
    ``log_config``, any other ``uvicorn.Config`` keyword; and
    ``graceful_timeout``, ``backlog``, ``timeout_request_head``).
    ``access_log_format``/``access_log_file``: an access log in gunicorn's
    format instead of uvicorn's (see ``access``; None: gunicorn's default
    format, stdout).

    Raises ``NotAnAppError`` (a ValueError) or ``MissingExtraError`` (an
    ImportError naming ``pip install 'fastfork[web]'``, or ``'fastfork[uvloop]'``
    for ``loop="uvloop"``) before serving; exits
    the worker with code 3 (``StartupFailed``) if the lifespan startup fails.
    """
    if not addresses:
        raise ValueError("fastfork.web.serve() needs at least one address")
    loops.check(loop)
    deps.check(None)
    # Checked here, not in the loop, so that a bad app fails before any loop runs.
    server = prepare(app, *addresses, kind=kind, threads=threads, body_buffer=body_buffer,
                     **options)

    loops.run(_serve_prepared(server, on_started), loop)
    return server

