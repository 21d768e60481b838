"""fastfork.web: serve ASGI and WSGI apps from fastfork workers, under every policy.

In each worker (the function form's target, or the Node form's worker branch)::

    import fastfork.web
    fastfork.web.serve(app, "127.0.0.1:8000")          # blocks until told to stop

The app may be ASGI (FastAPI, Starlette, ``async def app(scope, receive,
send)``) or WSGI (Flask, Django); ``detect(app)`` says which.  Requests are
parsed and answered by uvicorn's own protocols (httptools or h11; WebSockets
with websockets or wsproto); WSGI apps run in a thread pool, their environ and
input built by a2wsgi, their responses handed to the loop by ``wsgi``.  This
package imports none of them until asked: ``pip install 'fastfork[web]'``.
"""

from .asgi import (STARTUP_FAILURE, AsgiServer, StartupFailed, head_timeouts, log_config,
                   requests_served, servers)
from .detect import ASGI, WSGI, classify, describe, detect
from .errors import EXTRA_HINT, MissingExtraError, NotAnAppError
from .serve import KINDS, LOOPS, prepare, serve, serve_async

__all__ = [
    "serve", "serve_async", "prepare", "detect", "classify", "describe", "AsgiServer",
    "requests_served", "head_timeouts", "servers", "log_config", "NotAnAppError",
    "MissingExtraError", "StartupFailed", "STARTUP_FAILURE", "EXTRA_HINT", "ASGI", "WSGI",
    "KINDS", "LOOPS",
]
