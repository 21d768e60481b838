"""The request body side of the WSGI adapter (``fastfork.web.wsgi``): what the app
reads from ``wsgi.input``, and how the adapter learns that the client left.

``read_ahead`` reads a body on the loop first, up to ``--wsgi-body-buffer``,
before the call takes a thread.  ``Input`` is then the one reader of the
request's ``receive``: the app's input through a2wsgi's ``Body``, and the
watch for the client leaving while a response streams.  A body cut short by
the client leaving raises ``ClientDisconnected`` in the app's input.
"""

import asyncio
import collections

# Body bytes the watch keeps for an app that has not read them, past the
# first part it reads (which may be all that read_ahead read).
KEEP_UNREAD = 1 << 16


async def read_ahead(receive, limit):
    """Read the body on the loop until it ends or ``limit`` bytes came; returns a
    ``receive`` that gives what was read as one message, then the rest, or None
    if the client disconnected.  One message: a2wsgi's input crosses to the
    loop once per message it asks for."""
    parts, size, more = [], 0, True
    while more and size < limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body = message.get("body", b"")
        parts.append(body)
        size += len(body)
        more = message.get("more_body", False)
    first = {"type": "http.request", "body": b"".join(parts), "more_body": more}

    async def replay():
        nonlocal first
        if first is None:
            return await receive()
        message, first = first, None
        return message
    return replay


class ClientDisconnected(OSError):
    """What a WSGI app's ``wsgi.input`` raises when the client left before its
    request body ended (gunicorn raises its ``NoMoreData``, an IOError, there):
    a body cut short must not read as a whole one."""


class Input:
    """The one reader of a request's ``receive``: for the app's input (a2wsgi's
    ``Body``, which the thread has call it on the loop) and for ``watch``.

    ``done``: the body has all been received.  ``watch()``, once the
    response is streamed, waits for the client to leave (``http.disconnect``),
    which is how ``pump`` learns that a streamed response has nobody to go to:
    uvicorn's ``send`` and the engine's then return as if they had sent.  It
    watches whether or not the app has read its body: a body part it reads
    meanwhile is kept for the app (one part, and more up to KEEP_UNREAD bytes:
    the first may be what was read ahead), and past that the rest of the
    body is read and dropped (an app that streams its answer without reading
    its input), after which the app's input raises.  The two never wait on
    ``receive`` at once (the servers' ``receive`` takes one caller at a
    time): one waits for the other's message (``_busy``)."""

    __slots__ = ("_receive", "done", "_stash", "_stashed", "_busy", "_gone", "_dropped")

    def __init__(self, receive, done):
        self._receive = receive
        self.done = done
        self._stash = collections.deque()   # body parts watch read for the app
        self._stashed = 0
        self._busy = None       # a future done when the receive() in progress returns
        self._gone = False      # the client left
        self._dropped = False   # body parts were dropped

    async def _next(self):
        """The next message from the server; None if another caller's receive()
        was in progress (it has returned: look at the stash again)."""
        if self._busy is not None:
            await asyncio.shield(self._busy)
            return None
        self._busy = asyncio.get_running_loop().create_future()
        try:
            message = await self._receive()
        finally:
            self._busy.set_result(None)
            self._busy = None
        if message["type"] == "http.disconnect":
            self._gone = True
        elif not message.get("more_body", False):
            self.done = True
        return message

    async def __call__(self):
        """The app's read."""
        while True:
            if self._stash:
                message = self._stash.popleft()
                self._stashed -= len(message.get("body", b""))
                return message
            if self._dropped:
                raise ClientDisconnected("the request body was dropped: the response was "
                                         f"streamed while more than {KEEP_UNREAD} bytes of it "
                                         "were left unread")
            if self._gone:
                if self.done:
                    return {"type": "http.disconnect"}
                raise ClientDisconnected("the client left before its request body ended")
            message = await self._next()
            if message is not None and message["type"] != "http.disconnect":
                return message

    async def watch(self):
        """Return once the client has left."""
        while not self._gone:
            message = await self._next()
            if message is None or message["type"] == "http.disconnect":
                continue
            body = message.get("body", b"")
            if self._dropped or (self._stash and self._stashed + len(body) > KEEP_UNREAD):
                self._dropped = True
                self._stash.clear()
                self._stashed = 0
                continue
            self._stash.append(message)
            self._stashed += len(body)
