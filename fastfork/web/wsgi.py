"""A WSGI app as an ASGI one: a2wsgi's environ and input, run in a sized thread pool.

Each request runs the WSGI callable on one of ``threads`` threads of this
worker; the pool is a2wsgi's (made in the worker, after the fork, and shut
down when the server stops), and so are the two parts of the adapter that
PEP 3333 is about: ``build_environ`` and the ``wsgi.input`` stream.

The response side is ours.  a2wsgi's responder hands each response message
(the start, every body part, the final empty part) to the loop with
``run_coroutine_threadsafe`` and waits for it: three loop round trips and a
Task per request even for a one-part body, which cost a Flask worker more
than the request itself.  Here the thread queues messages and wakes the loop
without waiting (coalesced: one wake-up however many messages are queued
before the loop gets there), and waits only when a streamed body gets ahead
of the client by more than ``HIGH_WATER`` bytes.  A one-part response is one
wake-up each way, like gunicorn's gthread worker.  Headers go out with the
first non-empty body part, as PEP 3333 asks, so ``start_response`` can still
be called again with ``exc_info`` until then.

The request body is read on the loop first, up to ``body_buffer`` bytes,
before the call takes a thread (nginx's request buffering, in small): a
client uploading a byte a second then holds a coroutine, not one of the
``threads``, so that a few slow uploaders cannot starve every other request.
A body larger than that is read by the app as it arrives, as before
(``wsgi_input``: the request body side, and the watch for a client that left).

A header whose name has an underscore is dropped, refused or mapped as
``header_map`` says (``fastfork.web.header_map``), before anything else.
"""

import asyncio
import collections
import contextvars
import re
import threading

from . import header_map as _header_map
from .deps import require
from .wsgi_input import Input, read_ahead

DEFAULT_THREADS = 10      # a2wsgi's own default
DEFAULT_BODY_BUFFER = 1 << 20   # per request: most form posts and JSON bodies fit whole
HIGH_WATER = 1 << 16      # bytes queued for the loop before a streaming thread waits
# uvicorn's checks of a response header (HEADER_RE, HEADER_VALUE_RE), made when
# the app calls start_response, as PEP 3333 asks, so that a bad header is the
# app's error (a 500): uvicorn makes them once the response has begun, and
# drops the connection without an answer.
_BAD_NAME = re.compile(rb'[\x00-\x20\x7f()<>@,;:\[\]={}\\"]')
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def wrap(app, threads=DEFAULT_THREADS, body_buffer=DEFAULT_BODY_BUFFER,
         header_map=_header_map.DEFAULT):
    """``(asgi_app, close)``: the ASGI adapter and a callable that stops its pool."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer (WSGI calls run on that many "
                         f"threads per worker), got {threads!r}")
    if not isinstance(body_buffer, int) or isinstance(body_buffer, bool) or body_buffer < 0:
        raise ValueError(f"body_buffer must be a number of bytes >= 0 (0: off), "
                         f"got {body_buffer!r}")
    header_map = _header_map.check(header_map)
    require("a2wsgi", "run a WSGI app (its WSGIMiddleware adapts it to ASGI)")
    import a2wsgi.wsgi

    class Middleware(a2wsgi.WSGIMiddleware):
        """a2wsgi's middleware (pool, lifespan, WebSocket refusal) with our responder."""

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await super().__call__(scope, receive, send)
            headers = _header_map.apply(scope["headers"], header_map)
            if headers is None:
                return await _refuse(send)
            if headers is not scope["headers"]:
                scope = dict(scope, headers=headers)
            if body_buffer and _has_body(scope["headers"]):
                receive = await read_ahead(receive, body_buffer)
                if receive is None:
                    return          # the client left before its body came: nobody to answer
            exchange = _Exchange()
            receive = Input(receive, not _has_body(scope["headers"]))
            environ = a2wsgi.wsgi.build_environ(scope, a2wsgi.wsgi.Body(exchange.loop, receive))
            environ.setdefault("wsgi.input_terminated", True)
            context = contextvars.copy_context()
            self.executor.submit(context.run, exchange.call, self.app, environ)
            await exchange.pump(send, receive)

    # Only `workers`: a2wsgi's other knobs (send_queue_size) came after 1.10.0.
    middleware = Middleware(app, workers=threads)

    def close():
        # wait=False: a WSGI call stuck past the graceful timeout must not
        # hold the worker's exit; the process is going away anyway.
        middleware.executor.shutdown(wait=False)

    return middleware, close


async def _refuse(send):
    """The 400 of ``header_map="refuse"``; the body is not read (the
    ``connection: close`` lets the protocol drop it)."""
    body = _header_map.REFUSED.encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", b"%d" % len(body)), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _has_body(headers):
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


class _ClientGone(ConnectionError):
    """The client left while its response was streamed: the thread stops there."""


_END = object()


class _Exchange:
    """One request: the WSGI call on a pool thread, its response messages to the loop.

    ``call`` runs on the thread, ``pump`` on the loop.  ``wsgi.input_terminated``
    is set because a2wsgi's input ends where the request body ends, chunked or
    not; without it Werkzeug (Flask) reads a chunked body, which has no
    CONTENT_LENGTH, as empty.
    """

    __slots__ = ("loop", "_messages", "_woken", "_wakeup", "_lock", "_queued", "_room",
                 "_failed", "_error", "_start", "_started", "_unsent", "_complete")

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self._messages = collections.deque()
        self._woken = False             # a wake-up is on its way to the loop
        self._wakeup = self.loop.create_future()
        self._lock = threading.Lock()
        self._queued = 0                # body bytes queued and not yet sent
        self._room = threading.Event()  # set by the loop when _queued falls under HIGH_WATER
        self._failed = None             # the loop's send raised this: the thread stops
        self._error = None              # the WSGI call raised this
        self._start = None              # the response start, until headers go out
        self._started = False
        self._unsent = None             # body bytes the Content-Length still promises
        self._complete = False          # the loop sent the last part

    # -- the pool thread ---------------------------------------------------------------

    def call(self, app, environ):
        try:
            iterable = app(environ, self._start_response)
            try:
                for chunk in iterable:
                    if chunk:
                        self._body(chunk)
                if self._start is None and not self._started:
                    raise RuntimeError("the WSGI app returned without calling start_response")
                self._flush_start()
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # every failure goes back to the loop
            self._error = exc
        self._queue(_END)

    def _start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self._started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._start is not None:
            raise RuntimeError("start_response was called twice without exc_info")
        code = int(status.split(" ", 1)[0])
        encoded = [(name.strip().encode("latin1").lower(), value.strip().encode("latin1"))
                   for name, value in headers]
        self._unsent = None
        for name, value in encoded:
            if not name or _BAD_NAME.search(name):
                raise RuntimeError(f"invalid HTTP header name: {name!r}")
            if _BAD_VALUE.search(value):
                raise RuntimeError(f"invalid HTTP header value for {name!r}")
            if name == b"content-length" and value.isdigit():
                self._unsent = int(value)
        self._start = {"type": "http.response.start", "status": code, "headers": encoded}
        return self._write

    def _write(self, chunk):
        """PEP 3333's ``write()``: the data goes out before the call returns to the app."""
        if self._start is None and not self._started:
            raise RuntimeError("write() was called before start_response")
        if chunk:
            self._body(chunk)

    def _flush_start(self):
        if not self._started:
            self._started = True
            self._push(self._start, 0)
            self._start = None

    def _body(self, chunk):
        self._flush_start()
        self._push({"type": "http.response.body", "body": bytes(chunk), "more_body": True},
                   len(chunk))
        if self._queued > HIGH_WATER:
            self._wait_for_room()

    def _push(self, message, size):
        self._raise_if_failed()
        if size:
            with self._lock:
                self._queued += size
        self._queue(message)

    def _queue(self, message):
        self._messages.append(message)
        if not self._woken:
            self._woken = True
            self.loop.call_soon_threadsafe(self._wake)

    def _wait_for_room(self):
        with self._lock:
            if self._queued <= HIGH_WATER:
                return
            self._room.clear()
        self._room.wait()
        self._raise_if_failed()

    def _raise_if_failed(self):
        if self._failed is not None:
            raise ConnectionError("the response could not be sent") from self._failed

    # -- the loop ----------------------------------------------------------------------

    def _wake(self):
        if not self._wakeup.done():
            self._wakeup.set_result(None)

    async def pump(self, send, receive=None):
        """Send what the thread queues until it ends; re-raise what the call raised.

        ``receive`` (a ``wsgi_input.Input``): once the response is streaming, a task
        waits on it for the client to leave, and then stops the thread at its
        next part."""
        messages = self._messages
        watch = None
        try:
            while True:
                await self._wakeup
                self._wakeup = self.loop.create_future()
                self._woken = False     # before looking: a message queued after this wakes us
                while messages:
                    message = messages.popleft()
                    if message is _END:
                        return await self._end(send)
                    if (messages and messages[0] is _END and self._error is None
                            and message["type"] == "http.response.body"):
                        # The last part: say so on it instead of sending an empty one
                        # after (not when the call failed: then the response must not
                        # look complete).
                        message["more_body"] = False
                    await self._send(send, message)
                    if (watch is None and receive is not None
                            and message.get("more_body") and not self._complete):
                        watch = self.loop.create_task(self._watch(receive))
        finally:
            if watch is not None:
                watch.cancel()

    async def _watch(self, receive):
        await receive.watch()
        if not self._complete:
            self._failed = _ClientGone("the client left")
            self._room.set()

    async def _send(self, send, message):
        size = len(message.get("body", b""))
        if size and self._unsent is not None:
            # The part that completes the Content-Length is the last: say so on
            # it.  Else the empty part after it may find the client gone (it has
            # every byte it was promised), and uvicorn would not count the
            # response as answered.
            self._unsent -= size
            if self._unsent <= 0:
                message["more_body"] = False
        if not message.get("more_body", True) and message["type"] == "http.response.body":
            self._complete = True
        try:
            await send(message)
        except BaseException as exc:
            self._failed = exc
            self._room.set()
            raise
        if size:
            with self._lock:
                self._queued -= size
                if self._queued <= HIGH_WATER:
                    self._room.set()

    async def _end(self, send):
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error.__cause__, _ClientGone):
                return      # nobody to answer: not the app's failure
            raise error
        if not self._complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
