"""asyncio integration: serve the shared port from a worker's event loop.

``start_server`` has the shape of ``asyncio.start_server`` (a client callback
with a reader and a writer); ``create_server`` takes a protocol factory like
``loop.create_server``.  Under the ``rr`` and ``least`` policies connections
come from the primary and are attached to the loop as they arrive, without a
Task per connection (``Server.attach``: asyncio's transport made directly,
uvloop's ``connect_accepted_socket`` driven by hand); under
``none``/``reuseport`` the worker's own listening socket is served by the
loop.  How connections are counted, and under ``least`` reported closed to
the primary, is in ``connection``.

A protocol factory with an ``attach_fd(fd, conn, server, client)`` method
(``fastfork.engine.EngineFactory``) takes the bare fd instead: no transport
is made, the factory's server reads and writes the fd itself and calls
``conn.finish()`` when it closes it; ``Server.reattach`` gives such an fd
back to an ordinary protocol of the factory (a WebSocket upgrade).  With a
``gate(server, owner, sockname)`` method too, the factory takes an address
whole: the passed fds go to the gate bare, or under none/reuseport it
accepts on the listening socket itself, and one ``GateOwner`` counts the
connections, no object of ours made per connection.

Just over 400 lines: ``Server`` is one object whose ways in (its own accept,
the channel's fds, the engine's gate, the PROXY header read first, the
hand-back of an upgrade) share its listener, counts and loop; the functions
after it are the asyncio face over it.
"""

import asyncio
import errno
import socket
import ssl as _ssl
from typing import Any, Awaitable, Callable, Iterable, List, Optional, Union

from ..addresses import DEFAULT_BACKLOG, Address
from .. import loops
from . import proxy_protocol
from .listener import AcceptedFd, Listener
from .runtime import runtime as _get_runtime
from .connection import CloseReporter, Connection, GateOwner
from .loopstate import ensure_data_reader, ensure_heartbeat, state_of

_STREAM_LIMIT = 2 ** 16
ACCEPT_BATCH = 64          # accepts per readiness, so one busy listener cannot starve the loop
ACCEPT_RETRY = 1.0         # seconds without accepting after running out of fds (asyncio's)
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Server:
    """A worker's server on a shared address (returned by start_server/create_server)."""

    listener: Listener
    address: str
    ssl: Optional[_ssl.SSLContext]

    def __init__(self, listener, loop, protocol_factory, tracker, reporter=None, ssl=None):
        self.listener = listener
        self.ssl = ssl               # an ssl.SSLContext: TLS is terminated here
        self.address = listener.address
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._factory = tracker.wrap(protocol_factory)
        self._tracker = tracker
        self._reporter = reporter     # a CloseReporter under least, else None
        self._report = None if reporter is None else reporter.closed
        self._asyncio_server = None
        self._closed = False
        self._takes_fd = hasattr(protocol_factory, "attach_fd")
        if self._takes_fd and hasattr(protocol_factory, "gate"):
            # fastfork.engine's EngineFactory (not any factory that happens
            # to have an "engine"): its connections tick only while its app runs.
            tracker.watch(protocol_factory.engine)
        self._attach_old = self._pick_attach(loop)
        self._attach_now = self._attach_old
        if self._takes_fd and self.listener.proxy_allow is None:
            self._attach_now = self._attach_fd
        # The engine's way in (fastfork.engine's Gate): the passed fds go to it
        # bare, or it accepts on the listening socket itself; no object of
        # ours per connection.  A PROXY header is read here first, and TLS is
        # uvicorn's: both keep the per-connection path.
        self._gate = None
        if (self._takes_fd and self.listener.proxy_allow is None and ssl is None
                and hasattr(protocol_factory, "gate")):
            self._gate = protocol_factory.gate(self, GateOwner(tracker, self._report),
                                               listener.local_address())

    def _pick_attach(self, loop):
        if self.listener.proxy_allow is not None:
            return self._attach_task     # the PROXY header is awaited first
        if self.ssl is not None:
            return self._attach_task     # the transport is TLS's, made after its handshake
        if (isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
                and hasattr(loop, "_make_socket_transport")):
            return self._attach_selector
        if type(loop).__module__.partition(".")[0] == "uvloop":
            return self._attach_driven
        return self._attach_task

    async def _start(self, backlog):
        sock = self.listener.sock
        if sock is None:
            if self._gate is not None:
                self.listener.on_fd(self._gate.take)
            else:
                bare = self._attach_now in (self._attach_driven, self._attach_fd)
                self.listener.on_connection(self.attach, bare=bare)
            ensure_data_reader(self._loop)
        elif self._gate is not None:
            sock.setblocking(False)
            self._gate.listen(sock.fileno())
        elif self.listener.proxy_allow is None and not self._takes_fd:
            self._asyncio_server = await self._loop.create_server(
                self._factory, sock=sock, backlog=backlog, ssl=self.ssl)
        else:
            # A PROXY header must be read before the app's protocol exists,
            # and an fd-taking factory wants no transport, neither of which
            # asyncio's own server can do: accept here instead.
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._accept_ready)

    def _accept_ready(self):
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accept(exc)
                return        # the client left first: the next readiness retries
            self.attach(conn)

    def _pause_accept(self, exc):
        # The backlog keeps the listener readable: retried at once, accept
        # would fail again at once, the loop spinning.  As asyncio does (and
        # the engine's gate), take nothing for a while; under none the other
        # workers take the address's connections meanwhile.
        fd = self.listener.sock.fileno()
        self._loop.remove_reader(fd)
        self._loop.call_exception_handler({
            "message": f"accepting on {self.address}: {exc.strerror}; accepting again "
                       f"in {ACCEPT_RETRY:.0f} s"})

        def resume():
            if not self._closed:
                self._loop.add_reader(fd, self._accept_ready)
        self._loop.call_later(ACCEPT_RETRY, resume)

    def attach(self, sock: Union[socket.socket, AcceptedFd]) -> None:
        """Serve ``sock`` (a connection the listener took) with this server's
        protocol: the step after ``Listener.deliver``."""
        if self._closed:
            sock.close()
            if self._report is not None:
                self._report()    # never attached: still one less open for least
            return
        conn = Connection(sock, self._protocol_factory, self._tracker, self._report,
                          self._failed)
        try:
            self._attach_now(sock, conn)
        except Exception as exc:
            conn.fail(exc)

    # Three ways to attach, the first two without a Task or a coroutine frame
    # of ours per connection; each ends in conn.attached() or conn.fail().
    # ``factory``: the protocol factory, when not conn.protocol (reattach).
    def _attach_selector(self, sock, conn, factory=None):
        # What asyncio's connect_accepted_socket does, less its Task and
        # waiter: _make_socket_transport is private, but stable since 3.4.
        if sock.gettimeout() != 0.0:
            sock.setblocking(False)       # not one of ours (deliver makes them non-blocking)
        self._loop._make_socket_transport(sock, (factory or conn.protocol)())
        conn.attached()

    def _attach_driven(self, sock, conn, factory=None):
        # uvloop has no synchronous way in; its coroutine creates the transport
        # before its first await, and must be run to its end (see drive).
        conn.drive(self._loop.connect_accepted_socket(factory or conn.protocol, sock))

    def _attach_task(self, sock, conn, factory=None):
        self._loop.create_task(self._connect(sock, conn, factory))

    def _attach_fd(self, sock, conn):
        # The fd-taking factory's server reads and writes the fd itself.
        if type(sock) is not AcceptedFd and sock.gettimeout() != 0.0:
            sock.setblocking(False)       # accepted here (none/reuseport): blocking
        conn.handed()
        self._protocol_factory.attach_fd(sock.detach(), conn, self)

    def reattach(self, fd: int, conn: Union[Connection, GateOwner], data: bytes) -> None:
        """Serve ``fd``, which an fd-taking factory's server had, with the factory's
        protocol from here on, ``data`` (what was read of it) fed first."""
        sock = socket.socket(fileno=fd)
        if isinstance(conn, GateOwner):
            # Counted open by the gate already; from here on it is one of ours.
            conn = Connection(sock, self._protocol_factory, self._tracker, self._report,
                              self._failed, counted=True)
        conn.reopen(sock)
        base = conn.protocol

        def factory():
            protocol = base()
            protocol.connection_made = _Prefed(protocol, data).connection_made
            return protocol

        try:
            self._attach_old(sock, conn, factory)
        except Exception as exc:
            conn.fail(exc)

    async def _connect(self, sock, conn, factory=None):
        try:
            factory = factory or conn.protocol
            if self.listener.proxy_allow is not None:
                if self._takes_fd:
                    refused, source = await self._proxy_source(sock)
                    if refused:
                        conn.finish()
                    else:
                        sock.setblocking(False)
                        conn.handed()
                        self._protocol_factory.attach_fd(sock.detach(), conn, self, source)
                    return
                factory = await self._proxied_factory(sock, factory)
                if factory is None:
                    conn.finish()     # refused: under least, the primary counts it closed
                    return
            await self._loop.connect_accepted_socket(factory, sock, ssl=self.ssl)
        except Exception as exc:
            conn.fail(exc)
        else:
            conn.attached()

    def _failed(self, exc):
        self._loop.call_exception_handler({
            "message": f"attaching a connection on {self.address} failed",
            "exception": exc})

    async def _proxy_source(self, sock):
        """Read the PROXY header: ``(refused, source)``; source None: the real peer."""
        try:
            peer = sock.getpeername()
        except OSError:
            peer = None
        if not proxy_protocol.allowed(peer, self.listener.proxy_allow):
            proxy_protocol.refuse(sock, peer, proxy_protocol.UNTRUSTED,
                                  proxy_protocol.UNTRUSTED, self._loop)
            return True, None
        try:
            return False, await proxy_protocol.read_header(self._loop, sock)
        except proxy_protocol.ProxyHeaderError as exc:
            proxy_protocol.refuse(sock, peer, exc, proxy_protocol.BAD_HEADER, self._loop)
            return True, None

    async def _proxied_factory(self, sock, base):
        """Read the PROXY header; the factory whose protocols see its client, or None."""
        refused, source = await self._proxy_source(sock)
        if refused:
            return None
        if source is None:
            return base            # LOCAL / UNKNOWN: the real peer stands

        def factory():
            protocol = base()
            made = protocol.connection_made

            def connection_made(transport):
                made(proxy_protocol.ProxiedTransport(transport, source))

            try:
                protocol.connection_made = connection_made
            except AttributeError:
                # __slots__: served all the same, with the balancer's address.
                pass
            return protocol
        return factory

    @property
    def connections(self) -> int:
        """Connections open right now on this worker's servers."""
        return self._tracker.active

    def close(self) -> None:
        """Stop taking new connections on this address."""
        if not self._closed and self._gate is not None:
            self._gate.close()
        elif not self._closed and self.listener.sock is not None and self._asyncio_server is None:
            self._loop.remove_reader(self.listener.sock.fileno())
        if not self._closed and self.listener.sock is None:
            self.listener.close()     # and the primary sends nothing more for it
        self._closed = True
        if self._asyncio_server is not None:
            self._asyncio_server.close()

    async def wait_closed(self) -> None:
        if self._asyncio_server is not None:
            await self._asyncio_server.wait_closed()


class _Prefed:
    """A protocol's connection_made, then its data_received with the bytes read
    before it had the connection; references dropped once used (no cycle)."""

    __slots__ = ("_made", "_received", "_data")

    def __init__(self, protocol, data):
        self._made = protocol.connection_made
        self._received = protocol.data_received
        self._data = data

    def connection_made(self, transport):
        made, received, data = self._made, self._received, self._data
        self._made = self._received = self._data = None
        made(transport)
        if data:
            received(data)


async def create_server(protocol_factory: Callable[[], asyncio.BaseProtocol], address: Address,
                        *, backlog: int = DEFAULT_BACKLOG,
                        ssl: Optional[_ssl.SSLContext] = None) -> Server:
    """Serve ``address`` (shared with the other workers) with ``protocol_factory``;
    with ``ssl`` (a server-side context), over TLS, as ``loop.create_server`` does."""
    loop = asyncio.get_running_loop()
    runtime = _get_runtime()
    reply, fds = await asyncio.wrap_future(runtime.request_listen(address, backlog))
    listener = runtime.make_listener(address, reply, fds)
    state = state_of(loop)
    if runtime.policy == "least" and state.reporter is None:
        state.reporter = CloseReporter(loop, runtime.receiver)
    server = Server(listener, loop, protocol_factory, state.tracker, state.reporter, ssl)
    await server._start(backlog)
    ensure_heartbeat(loop)
    return server


async def start_server(client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                     Optional[Awaitable[None]]],
                       address: Address, *, limit: int = _STREAM_LIMIT,
                       backlog: int = DEFAULT_BACKLOG,
                       ssl: Optional[_ssl.SSLContext] = None) -> Server:
    """Like ``asyncio.start_server``: ``client_connected_cb(reader, writer)`` per connection."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, address, backlog=backlog, ssl=ssl)


async def wait_stopping() -> None:
    """Return when the primary asks this worker to stop (shutdown, reload, scale-down)."""
    stopping = asyncio.Event()
    _get_runtime().on_stop(stopping.set)
    await stopping.wait()


async def drain(servers: Iterable[Server], timeout: Optional[float] = None) -> None:
    """After a stop request: take what the primary already sent, then wait for
    open connections to finish (at most ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    runtime = _get_runtime()
    if timeout is None:
        timeout = runtime.stop_timeout

    state = state_of(loop)

    async def finish():
        if state.data_ended is not None:
            await state.data_ended.wait()
        for server in servers:
            server.close()
        await state.tracker.wait_idle()

    try:
        await asyncio.wait_for(finish(), timeout)
    except asyncio.TimeoutError:
        pass


async def serve_async(handler: Callable[..., Any], *addresses: Address, protocol: bool = False,
                      backlog: int = DEFAULT_BACKLOG,
                      on_started: Optional[Callable[[List[Server]], object]] = None,
                      ssl: Optional[_ssl.SSLContext] = None) -> None:
    """Serve ``addresses`` until the primary says stop, then drain and return."""
    make = create_server if protocol else start_server
    servers = [await make(handler, address, backlog=backlog, ssl=ssl) for address in addresses]
    if on_started is not None:
        result = on_started(servers)
        if asyncio.iscoroutine(result):
            await result
    await wait_stopping()
    await drain(servers)


def serve(handler: Callable[..., Any], *addresses: Address, protocol: bool = False,
          backlog: int = DEFAULT_BACKLOG,
          on_started: Optional[Callable[[List[Server]], object]] = None,
          loop: str = "auto", ssl: Optional[_ssl.SSLContext] = None) -> None:
    """Blocking: run an event loop serving ``addresses`` until told to stop.

    ``handler`` is a ``(reader, writer)`` callback (coroutine or plain), or a
    protocol factory with ``protocol=True``.  ``loop``: ``"auto"`` (uvloop
    when installed, else asyncio's), ``"uvloop"`` (required: a missing one
    raises ``fastfork.web.MissingExtraError``, an ImportError naming
    ``pip install 'fastfork[uvloop]'``, before serving) or ``"asyncio"``.
    ``ssl``: a server-side ``ssl.SSLContext``: every connection is TLS, its
    handshake done in this worker.
    """
    if not addresses:
        raise ValueError("serve() needs at least one address")
    loops.check(loop)
    loops.run(serve_async(handler, *addresses, protocol=protocol, backlog=backlog,
                          on_started=on_started, ssl=ssl), loop)
