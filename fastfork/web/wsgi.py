"""A WSGI app as an ASGI one: a2wsgi's WSGIMiddleware, run in a sized thread pool.

Each request runs the WSGI callable on one of ``threads`` threads of this
worker (a2wsgi's ``workers``), streaming its body back to uvicorn's protocol
on the event loop; the pool is made in the worker, after the fork, and shut
down when the server stops.
"""

from .deps import require

DEFAULT_THREADS = 10      # a2wsgi's own default


def wrap(app, threads=DEFAULT_THREADS):
    """``(asgi_app, close)``: the ASGI adapter and a callable that stops its pool."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive integer (WSGI calls run on that many "
                         f"threads per worker), got {threads!r}")
    a2wsgi = require("a2wsgi", "run a WSGI app (its WSGIMiddleware adapts it to ASGI)")
    # Only `workers`: a2wsgi's other knobs (send_queue_size) came after 1.10.0.
    middleware = a2wsgi.WSGIMiddleware(_terminated(app), workers=threads)

    def close():
        # wait=False: a WSGI call stuck past the graceful timeout must not
        # hold the worker's exit; the process is going away anyway.
        middleware.executor.shutdown(wait=False)

    return middleware, close


def _terminated(app):
    """``app`` with ``wsgi.input_terminated`` set in every environ.

    a2wsgi's ``wsgi.input`` ends where the request body ends, chunked or not,
    but does not say so; without the flag Werkzeug (Flask) reads a chunked
    body, which has no CONTENT_LENGTH, as empty.
    """
    def with_terminated_input(environ, start_response):
        environ.setdefault("wsgi.input_terminated", True)
        return app(environ, start_response)

    with_terminated_input.__wrapped__ = app
    return with_terminated_input
