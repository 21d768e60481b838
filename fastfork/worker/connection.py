"""One connection in a worker, from the fd the primary passed to the app's
protocol, and how a worker's open connections are counted.

``Connection`` is one connection the primary passed, counted from its attach
to its close: the last step of the worker's data path (channel ->
``Receiver.receive`` -> ``WorkerRuntime.pump`` -> ``Listener.deliver`` ->
``Server.attach`` -> ``Connection.protocol`` -> the app).  ``Tracker`` counts
one event loop's open connections, so that a graceful stop can wait for
them; ``CloseReporter`` tells the primary, batched, which of them closed
(policy least), so that it can count them.
"""

import asyncio

from .listener import AcceptedFd

# A close report the data channel's buffer refused is tried again this much later.
_REPORT_RETRY = 0.01


def _nothing():
    pass


class Tracker:
    """Counts open connections so a graceful stop can wait for them, and says
    when the loop may be running an app (``running()``, for its ``Ticker``)."""

    def __init__(self):
        self.active = 0
        self.total = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.engines = []          # the engines serving on this loop (watch())
        # What an engine calls as its first app call begins and its last
        # ends: the loop's Ticker's started() and quiet(), once it has one.
        self.app_started = self.app_ended = _nothing

    def watch(self, engine):
        """Count ``engine``'s connections as the engine says: running an app
        only while one of its app calls is (``engine.running``), not for as
        long as they are open; it calls ``app_started()``/``app_ended()``."""
        if engine not in self.engines:
            self.engines.append(engine)
            engine.watch(self)

    def running(self):
        """May an app be running on this loop now?  An engine's connection
        only while its app is called; any other (a protocol of uvicorn's, a
        WebSocket handed over, the user's own) whenever it is open."""
        others = self.active
        for engine in self.engines:
            if engine.running:
                return True
            others -= engine.open
        return others > 0

    def wrap(self, protocol_factory):
        """``protocol_factory`` whose protocols are counted from connection_made
        (for asyncio's own server, under none/reuseport)."""
        def factory():
            protocol = protocol_factory()
            counted = _Counted(self, protocol)
            try:
                protocol.connection_made = counted.connection_made
                protocol.connection_lost = counted.connection_lost
            except AttributeError:
                # A protocol with __slots__ cannot be instrumented: it is
                # served all the same, but a graceful stop cannot wait for it.
                pass
            return protocol
        return factory

    def opened(self):
        if not self.active:
            self._idle.clear()
        self.active += 1
        self.total += 1

    def release(self):
        self.active -= 1
        if not self.active:
            self._idle.set()

    async def wait_idle(self):
        await self._idle.wait()


class _Counted:
    """The hooks ``Tracker.wrap`` puts on one protocol.

    They hold the protocol's own methods, and the protocol holds them: each
    reference is dropped once used, so a closed connection is no reference
    cycle (closures would leave one per connection, the protocol and its
    transport with it, for the garbage collector).
    """

    __slots__ = ("_tracker", "_made", "_lost")

    def __init__(self, tracker, protocol):
        self._tracker = tracker
        self._made = protocol.connection_made
        self._lost = protocol.connection_lost

    def connection_made(self, transport):
        made, self._made = self._made, None
        self._tracker.opened()
        made(transport)

    def connection_lost(self, exc):
        lost, self._lost = self._lost, None
        try:
            lost(exc)
        finally:
            self._tracker.release()


class CloseReporter:
    """Reports closed dispatched connections to the primary (policy least):
    one MSG_CLOSED per event-loop iteration, however many closed in it."""

    def __init__(self, loop, receiver):
        self._loop = loop
        self._receiver = receiver
        self._count = 0
        self._scheduled = False

    def closed(self):
        self._count += 1
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self):
        self._scheduled = False
        count, self._count = self._count, 0
        try:
            left = self._receiver.report_closed(count)
        except (OSError, ValueError):
            return        # the channel is closed: nobody counts any more
        if left:
            # The primary is behind reading its end; a report must not be lost.
            self._count += left
            self._scheduled = True
            self._loop.call_later(_REPORT_RETRY, self._flush)


class GateOwner:
    """What counts the connections an engine's gate takes for one server
    (``fastfork.engine``'s ``Gate``): one object for all of them, where a
    ``Connection`` is one per connection.  ``opened()`` as each is taken,
    ``finish()`` once each closes; ``refused()`` for one that came after the
    server closed, never opened here but, under least, counted open by the
    primary."""

    __slots__ = ("opened", "_release", "_closed")

    def __init__(self, tracker, closed=None):
        self.opened = tracker.opened
        self._release = tracker.release
        self._closed = closed

    def finish(self):
        self._release()
        if self._closed is not None:
            self._closed()

    def refused(self):
        if self._closed is not None:
            self._closed()


class Connection:
    """One dispatched connection, counted open from the moment it is attached
    until its protocol's connection_lost (or the attach fails), its close
    reported once under least whichever of those paths sees it.

    Counted from the attach, not from connection_made: the END that makes a
    stopping worker drain can arrive in the same read as this connection, and
    the drain must not find the worker idle before its transport exists.
    """

    __slots__ = ("_factory", "_tracker", "_closed", "_on_error", "_lost", "_open", "_coro",
                 "_sock")

    def __init__(self, sock, protocol_factory, tracker, closed=None, on_error=None,
                 counted=False):
        """``sock`` (a socket or an ``AcceptedFd``) is served by a protocol of
        ``protocol_factory``; ``tracker`` counts it open until it closes
        (``counted``: it does already, a gate's connection handed back);
        ``closed()`` (under least) reports its close; ``on_error(exc)`` is told
        of an attach that failed for another reason than the client leaving."""
        self._factory = protocol_factory
        self._tracker = tracker
        self._closed = closed
        self._on_error = on_error
        self._sock = sock
        self._lost = None
        self._coro = None
        self._open = True
        if not counted:
            tracker.opened()

    def protocol(self):
        """The app's protocol, its connection_lost hooked to ``finish``."""
        protocol = self._factory()
        try:
            self._lost = protocol.connection_lost
            protocol.connection_lost = self._connection_lost
        except AttributeError:
            # __slots__: served all the same, but a graceful stop cannot wait
            # for it, and least counts it closed once attached (better than
            # counting it open for ever).
            self._lost = None
        return protocol

    def _connection_lost(self, exc):
        lost, self._lost = self._lost, None     # and the protocol <-> hook cycle is broken
        try:
            lost(exc)
        finally:
            self.finish()

    def attached(self):
        self._sock = None
        if self._lost is None:
            self.finish()     # nothing will tell us it closed

    def handed(self):
        """An fd-taking server has the fd now: it calls ``finish()`` once it closes it."""
        self._sock = None

    def reopen(self, sock):
        """The fd came back from that server as ``sock``, to be attached again."""
        self._sock = sock

    def finish(self):
        if self._open:
            self._open = False
            self._tracker.release()
            if self._closed is not None:
                self._closed()

    def fail(self, exc):
        """The attach failed: the socket is closed and the connection counted closed."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.finish()
        if not isinstance(exc, OSError) and self._on_error is not None:
            self._on_error(exc)                   # OSError: the client went away first

    def drive(self, coro):
        """Run ``coro`` (uvloop's connect_accepted_socket) without a Task: up to
        its ``await waiter``, then on from the waiter's done-callback."""
        self._coro = coro
        self._step()

    def _step(self, _waiter=None):
        coro = self._coro
        try:
            waiter = coro.send(None)
            if _waiter is None and type(self._sock) is AcceptedFd:
                self._sock.detach()       # the transport owns the fd now (see AcceptedFd)
            waiter.add_done_callback(self._step)
        except StopIteration:
            self._coro = None
            self.attached()
        except Exception as exc:
            self._coro = None
            # Dropping a suspended coroutine would close the transport from its
            # GeneratorExit handler at some later collection: close it now.
            coro.close()
            self.fail(exc)
