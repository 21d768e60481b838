"""Serve an ASGI app with uvicorn's own HTTP and WebSocket protocols, on fastfork's connections.

This mirrors ``uvicorn.Server`` (``startup``, ``main_loop``'s once-a-second
tick, ``shutdown``) without its listening, signals or process model, which are
fastfork's: the protocol factory goes to ``fastfork.create_server``, so it
serves whatever the policy hands this worker (rr: sockets passed by the
primary; none/reuseport: the worker's own listening socket), and the loop that
runs it beats fastfork's heartbeats.

Life of one worker's server::

    AsgiServer(app, addresses, **options)  # builds and loads the uvicorn.Config
    await server.start()     # lifespan startup (exits 3 if it fails), then listen
    await fastfork.wait_stopping()
    await server.stop()      # graceful drain, then lifespan shutdown

``server.requests`` counts HTTP requests answered by this worker (uvicorn's
``ServerState.total_requests``, counted as each response completes);
``fastfork.web.requests_served()`` sums them over every server in the process.
``server.head_timeouts`` counts connections closed because a request head
did not arrive within ``timeout_request_head`` (see ``deadline``);
``head_timeouts()`` sums those.

``http="engine"`` (and ``"auto"`` wherever the engine can serve, see
``choice``): HTTP/1.1 is served by ``fastfork.engine`` (C, from the passed fd
to the app) instead of uvicorn's protocol; a WebSocket upgrade is handed to
uvicorn's httptools protocol on the same fd.  What the engine does not cover
(TLS) makes auto pick uvicorn's protocol, and is refused up front with
``http="engine"``.

Just over 400 lines: ``AsgiServer`` is one object (as ``uvicorn.Server`` is)
whose start, tick, drain and stop share its uvicorn state and its servers.
"""

import asyncio
import copy
import logging
import os
import ssl as _ssl
import time
import weakref
from email.utils import formatdate
from typing import Any, Callable, List, Optional, Sequence, Union

import fastfork

from .. import jsonlog
from ..addresses import Address
from ..engine import EngineFactory, hand_over, load as load_engine
from ..extras import require
from ..worker.aio import Server
from . import choice
from .deadline import with_head_deadline
from .proxy_headers import scope_filter

HTTP_CHOICES = choice.CHOICES

# A connection the primary handed over after the stop began (rr sends what it
# accepted before it stopped) may take this long to send its request before
# it is closed; one already sending is answered first, with Connection: close.
IDLE_GRACE = 1.0
STARTUP_FAILURE = 3     # uvicorn's exit code for the same failure
# nginx's client_header_timeout: long enough for any real client on a slow
# link, short enough that a connection sending nothing does not stay for ever.
DEFAULT_HEAD_TIMEOUT = 60.0

log = logging.getLogger("fastfork.web")
_servers: List["AsgiServer"] = []     # live AsgiServers of this process, for requests_served()


class StartupFailed(SystemExit):
    """The app's lifespan startup failed: the worker exits with code 3 (uvicorn's
    STARTUP_FAILURE); the app's traceback was logged by uvicorn just before."""


def requests_served() -> int:
    """HTTP requests answered so far by every AsgiServer in this process."""
    return sum(server.requests for server in _servers)


def head_timeouts() -> int:
    """Connections closed at the request-head deadline by every AsgiServer in this process."""
    return sum(server.head_timeouts for server in _servers)


def servers() -> List["AsgiServer"]:
    """The AsgiServers serving in this process now (one per ``serve`` call)."""
    return list(_servers)


def log_config(access_format: Optional[str] = None) -> "dict[str, Any]":
    """uvicorn's logging config with each line naming this worker (id, index, pid);
    with ``fastfork.jsonlog`` enabled, each line a JSON object naming it."""
    uvicorn_config = require("uvicorn.config", "configure its logging")
    config = copy.deepcopy(uvicorn_config.LOGGING_CONFIG)
    if jsonlog.enabled():
        for name in config["formatters"]:
            config["formatters"][name] = {"()": jsonlog.JsonFormatter}
        return config
    who = f"worker {fastfork.worker_id} (index {fastfork.worker_index}, pid {os.getpid()})"
    formatters = config["formatters"]
    formatters["default"]["fmt"] = f"%(levelprefix)s {who}: %(message)s"
    formatters["access"]["fmt"] = access_format or (
        f'%(levelprefix)s {who}: %(client_addr)s - "%(request_line)s" %(status_code)s')
    return config


class AsgiServer:
    """One worker's server for one ASGI app on one or more shared addresses.

    Options named here are uvicorn's (see ``uvicorn.Config``), with uvicorn's
    defaults; any other ``uvicorn.Config`` keyword (``ws_max_size``,
    ``headers``, ``server_header``...) passes through ``config_options``.
    ``graceful_timeout`` bounds ``stop()``; None: the primary's graceful
    timeout (it kills the worker after it anyway).  ``timeout_request_head``:
    seconds a request head may take to arrive (0: no deadline; see ``deadline``).
    ``wsgi_app`` (with the engine): a WSGI app the engine calls instead of
    ``app``, its request bodies read whole first, up to ``wsgi_body_limit``
    bytes, on the loop thread (``wsgi_threads=0``) or on a pool of
    ``wsgi_threads`` threads fed by the engine (``app``, the WSGI adapter,
    then serves a body past the limit).
    ``ssl``: a server-side ``ssl.SSLContext`` (or uvicorn's ``ssl_certfile``,
    ``ssl_keyfile``... keywords, passed to ``uvicorn.Config``): HTTPS.
    """

    addresses: List[Address]
    backlog: int
    graceful_timeout: Optional[float]
    config: Any                   # uvicorn.Config
    ssl: Optional[_ssl.SSLContext]  # TLS terminated here, or None
    state: Any                    # uvicorn.server.ServerState
    lifespan: Any                 # the lifespan protocol, once started
    servers: List[Server]
    loop: Any                     # the running loop, set by start()
    stopping: bool
    engine: Any                   # fastfork.engine's Engine with http="engine", else None
    http: str                     # what serves HTTP/1.1: "engine", "httptools" or "h11"
    engine_passed_over: Optional[str]  # why http="auto" did not pick the engine
    _ticker: "Optional[asyncio.Task[None]]"
    _late: "set[asyncio.TimerHandle]"

    def __init__(self, app: object, addresses: Sequence[Address], *, interface: str = "auto",
                 http: str = "auto", ws: str = "auto", lifespan: str = "auto",
                 timeout_keep_alive: float = 5, root_path: str = "", proxy_headers: bool = True,
                 forwarded_allow_ips: Optional[Union[str, List[str]]] = None,
                 limit_concurrency: Optional[int] = None,
                 h11_max_incomplete_event_size: Optional[int] = None, access_log: bool = True,
                 log_level: Optional[Union[str, int]] = None,
                 log_config: Union["dict[str, Any]", str, None,
                                   Callable[[], "dict[str, Any]"]] = log_config,
                 graceful_timeout: Optional[float] = None, backlog: int = 2048,
                 on_close: Optional[Callable[[], object]] = None,
                 timeout_request_head: float = DEFAULT_HEAD_TIMEOUT,
                 wsgi_app: Optional[object] = None, wsgi_threads: int = 0,
                 wsgi_body_limit: int = 1 << 20, wsgi_sched_batch: bool = False,
                 wsgi_header_map: str = "drop",
                 ssl: Optional[_ssl.SSLContext] = None,
                 **config_options: Any) -> None:
        # The engine does not do TLS: auto then picks uvicorn's protocol, and
        # http="engine" is refused.
        tls = choice.asks_tls(ssl, config_options)
        http, self.engine_passed_over = choice.resolve(http, tls)
        self.http = http
        self._use_engine = http == "engine"
        self._wsgi_app = wsgi_app
        self._wsgi_threads = wsgi_threads
        self._wsgi_sched_batch = wsgi_sched_batch
        self._wsgi_body_limit = wsgi_body_limit
        self._wsgi_header_map = wsgi_header_map
        self._limit_concurrency = limit_concurrency
        if wsgi_app is not None and not self._use_engine:
            raise ValueError(choice.needs_engine("wsgi_app (a WSGI app the engine calls)",
                                                 http, self.engine_passed_over))
        if self._use_engine:
            if tls:
                raise ValueError("http='engine' does not support TLS: use http='httptools'")
            load_engine()         # a missing build or httptools fails here, before serving
            http = "httptools"    # uvicorn's protocol: what an upgrade is handed to
        uvicorn = require("uvicorn", "speak HTTP")
        server_module = require("uvicorn.server", "keep its per-server state")
        if not addresses:
            raise ValueError("fastfork.web needs at least one address to serve")
        if (isinstance(timeout_request_head, bool)
                or not isinstance(timeout_request_head, (int, float))
                or not timeout_request_head >= 0):
            raise ValueError(f"timeout_request_head must be zero (no deadline) or more seconds, "
                             f"got {timeout_request_head!r}")
        self.addresses = list(addresses)
        self.backlog = backlog
        self.graceful_timeout = graceful_timeout
        self._on_close = on_close
        if callable(log_config):
            log_config = log_config()
        # Built in the worker (after the fork): it configures logging and loads
        # the protocol classes once per worker, as uvicorn does once per process.
        self.config = uvicorn.Config(
            app, interface=interface, http=http, ws=ws, lifespan=lifespan,
            timeout_keep_alive=timeout_keep_alive, root_path=root_path,
            proxy_headers=proxy_headers, forwarded_allow_ips=forwarded_allow_ips,
            limit_concurrency=limit_concurrency,
            h11_max_incomplete_event_size=h11_max_incomplete_event_size,
            access_log=access_log, log_level=log_level, log_config=log_config,
            backlog=backlog, **config_options)
        self.config.load()
        self._head_timeouts = 0
        self._head_timeout = timeout_request_head
        self.engine = None
        # TLS in this worker: a context given, or the one uvicorn built from its
        # own ssl_certfile/ssl_keyfile... options (Config.load above).
        self.ssl = ssl if ssl is not None else getattr(self.config, "ssl", None)
        self._protocol_class = self.config.http_protocol_class
        if timeout_request_head:
            self._protocol_class = with_head_deadline(
                self._protocol_class, timeout_request_head, self._head_timed_out)
        self.state = server_module.ServerState()
        self.lifespan = None
        self.servers = []
        self.loop = None
        self.stopping = False
        self._ticker = None
        self._late = set()

    @property
    def requests(self) -> int:
        """HTTP requests this server answered: uvicorn counts each response as it
        completes (``ServerState.total_requests``), so no wrapper around the
        app's ``send`` is needed (a coroutine layer per message, ~4% of a
        keep-alive request)."""
        engine = 0 if self.engine is None else self.engine.requests
        return self.state.total_requests + engine

    @property
    def head_timeouts(self) -> int:
        """Connections closed at the request-head deadline."""
        engine = 0 if self.engine is None else self.engine.head_timeouts
        return self._head_timeouts + engine

    @property
    def connections(self) -> int:
        """Open HTTP and WebSocket connections (uvicorn's own set, the engine's)."""
        engine = 0 if self.engine is None else self.engine.open
        return len(self.state.connections) + engine

    # -- start -------------------------------------------------------------------
    async def start(self) -> None:
        """Lifespan startup, then serve every address; raises StartupFailed."""
        self.loop = asyncio.get_running_loop()
        self._refresh_headers()
        self.lifespan = self.config.lifespan_class(self.config)
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            log.error("worker %s (pid %d): the app's lifespan startup failed (see above); "
                      "exiting with code %d", fastfork.worker_id, os.getpid(), STARTUP_FAILURE)
            raise StartupFailed(STARTUP_FAILURE)
        factory: Any = self._make_protocol
        if self._use_engine:
            factory = EngineFactory(self._start_engine(), self._make_protocol)
        for address in self.addresses:
            self.servers.append(await fastfork.create_server(
                factory, address, backlog=self.backlog, ssl=self.ssl))
        self._ticker = self.loop.create_task(self._tick())
        _servers.append(self)
        log.info("worker %s (pid %d): HTTP/1.1 served by %s", fastfork.worker_id, os.getpid(),
                 self.describe_http())

    def describe_http(self) -> str:
        """What serves HTTP/1.1 here, and why auto passed the engine over if it did."""
        if self._use_engine:
            return "fastfork's engine"
        named = f"uvicorn's {self.http} protocol"
        if self.engine_passed_over:
            return f"{named} (not the engine: {self.engine_passed_over})"
        return named

    def _start_engine(self):
        access = logging.getLogger("uvicorn.access")
        self.engine = load_engine().Engine(
            self.loop, self.config.loaded_app, self.lifespan.state,
            keep_alive=self.config.timeout_keep_alive, head_timeout=self._head_timeout,
            root_path=self.config.root_path, logger=logging.getLogger("uvicorn.error"),
            # As uvicorn: no access log without a handler to write it.
            access_logger=access if self.config.access_log and access.hasHandlers() else None,
            on_upgrade=None if self.config.ws_protocol_class is None else hand_over,
            wsgi_app=self._wsgi_app, body_limit=self._wsgi_body_limit,
            limit_concurrency=self._limit_concurrency or 0,
            scope_filter=None if self._wsgi_app is None else scope_filter(self.config),
            wsgi_threads=self._wsgi_threads, wsgi_sched_batch=self._wsgi_sched_batch,
            header_map=self._wsgi_header_map)
        self.engine.set_default_headers(self.state.default_headers)
        return self.engine

    def _refresh_headers(self):
        # uvicorn.Server.on_tick does this once a second: every response
        # takes its Date (and Server) headers from here.
        headers = []
        if getattr(self.config, "date_header", True):
            headers.append((b"date", formatdate(time.time(), usegmt=True).encode()))
        self.state.default_headers = headers + self.config.encoded_headers
        if self.engine is not None:
            self.engine.set_default_headers(self.state.default_headers)

    async def _tick(self):
        while True:
            await asyncio.sleep(1.0 - time.time() % 1.0)
            self._refresh_headers()

    def _head_timed_out(self):
        self._head_timeouts += 1

    def _make_protocol(self):
        protocol = self._protocol_class(
            config=self.config, server_state=self.state,
            app_state=self.lifespan.state, _loop=self.loop)
        if self.config.ws_protocol_class is not None:
            protocol.ws_protocol_class = self._upgrade_factory(protocol)
        if self.stopping:
            self._arrived_while_stopping(protocol)
        return protocol

    def _upgrade_factory(self, http_protocol):
        """The WebSocket class the HTTP protocol builds on an upgrade, with one fix.

        fastfork.create_server counts a connection open from the protocol it
        made until that protocol's connection_lost.  An upgrade swaps the
        transport over to a new WebSocket protocol (transport.set_protocol),
        so only the new one hears of the close: pass it on, or a drain would
        wait for a WebSocket connection that is long gone.
        """
        ws_class = self.config.ws_protocol_class
        # A weak reference: this factory is stored on the HTTP protocol, and a
        # strong one would make every connection a reference cycle, left for
        # the garbage collector with its transport and request cycle (uvicorn
        # alone leaves none).
        http_ref = weakref.ref(http_protocol)

        def make(**kwargs):
            ws_protocol = ws_class(**kwargs)
            lost = ws_protocol.connection_lost
            http = http_ref()       # alive: it is upgrading right now

            def connection_lost(exc):
                try:
                    lost(exc)
                finally:
                    # The HTTP protocol's own connection_lost only forgets a
                    # connection it already forgot at the upgrade; fastfork's
                    # wrapper around it is what must run.
                    http.connection_lost(exc)

            ws_protocol.connection_lost = connection_lost
            if self.stopping:
                # An upgrade that came after stop() shut the WebSockets down
                # (on a connection idle then, in its grace): nothing would
                # close this one, and the drain would wait for it until the
                # worker is killed, its lifespan shutdown never run.  Shut
                # down as uvicorn does one mid-handshake: a 500, or 1012 once
                # accepted (after connection_made, which follows this).
                self.loop.call_soon(ws_protocol.shutdown)
            return ws_protocol
        return make

    # -- stop --------------------------------------------------------------------
    def _arrived_while_stopping(self, protocol):
        received = protocol.data_received

        def data_received(data):
            received(data)
            # A request has begun: answer it, then close (keep_alive off).
            if protocol.cycle is not None and protocol in self.state.connections:
                protocol.shutdown()

        protocol.data_received = data_received
        self._late.add(self.loop.call_later(IDLE_GRACE, self._shutdown_if_open, protocol))

    def _shutdown_if_open(self, protocol):
        # Not in connections: closed already, or upgraded to a WebSocket (then
        # the WebSocket protocol is in there and was shut down itself).
        if protocol in self.state.connections:
            protocol.shutdown()

    async def stop(self) -> None:
        """Graceful drain, as uvicorn.Server.shutdown, then lifespan shutdown.

        Busy connections close after their current response (uvicorn's
        ``protocol.shutdown()``).  Idle keep-alive connections, and those the
        primary had already sent (taken by ``fastfork.drain``), get
        ``IDLE_GRACE`` to send one more request, answered with
        ``Connection: close``: uvicorn closes idle ones at once, and a client
        whose next request is already on its way then sees its reused
        connection reset.  Background tasks still running when
        ``graceful_timeout`` is spent are cancelled.
        """
        if self.stopping:
            return
        self.stopping = True
        deadline = None if self.graceful_timeout is None else \
            self.loop.time() + self.graceful_timeout
        for connection in list(self.state.connections):
            cycle = getattr(connection, "cycle", None)      # None on a WebSocket
            if hasattr(connection, "cycle") and (cycle is None or cycle.response_complete):
                self._arrived_while_stopping(connection)
            else:
                connection.shutdown()
        if self.engine is not None:
            self.engine.shutdown(IDLE_GRACE)
        await fastfork.drain(self.servers, self.graceful_timeout)
        for server in self.servers:
            server.close()
        tasks = set(self.state.tasks)
        if self.engine is not None:
            tasks |= self.engine.tasks
        if tasks:
            remaining = None if deadline is None else max(0.0, deadline - self.loop.time())
            _, pending = await asyncio.wait(tasks, timeout=remaining)
            if pending:
                log.error("worker %s: cancelling %d request task(s) still running after the "
                          "graceful timeout", fastfork.worker_id, len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        for connection in list(self.state.connections):
            # Past the timeout: uvicorn.Server leaves these to the process exit;
            # closing them here lets lifespan shutdown run on a quiet server.
            connection.transport.close()
        if self.engine is not None:
            self.engine.close()
        for handle in self._late:
            handle.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        await self.lifespan.shutdown()
        if self in _servers:
            _servers.remove(self)
        if self._on_close is not None:
            self._on_close()

    async def serve(self) -> None:
        """start(), serve until the primary says stop, then stop()."""
        await self.start()
        try:
            await fastfork.wait_stopping()
        finally:
            await self.stop()

