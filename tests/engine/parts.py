"""What the engine's in-process tests share: the worker's side of a connection
as the engine sees it, and an ASGI app's reading of a whole request body."""


class Owner:
    """The worker's Connection, as the engine sees it: told once when closed."""

    def __init__(self):
        self.finished = 0

    def finish(self):
        self.finished += 1


async def read_body(receive):
    """The request body, every ``http.request`` message of it."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body
