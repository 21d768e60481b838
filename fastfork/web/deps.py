"""What the web layer will import, asked for up front, so a missing package is
named before serving (``fastfork.extras`` says which extra brings it)."""

from ..engine import load as load_engine
from ..extras import available, require
from .. import loops


def check(kind, http="auto", ws="auto", loop="auto"):
    """Everything ``serve(kind=..., http=..., ws=..., loop=...)`` will import."""
    require("uvicorn", "speak HTTP (its protocols serve every request)")
    if kind == "wsgi":
        require("a2wsgi", "run a WSGI app (its WSGIMiddleware adapts it to ASGI)")
    if http == "engine":
        load_engine()         # its build, and an httptools it runs on
    elif http == "httptools":
        require("httptools", f"parse HTTP with http={http!r}")
    elif http == "h11":
        require("h11", "parse HTTP with http='h11'")
    elif http == "auto" and not available("httptools"):
        require("h11", "parse HTTP (httptools is not installed either)")
    if ws in ("websockets", "websockets-sansio"):
        require("websockets", f"serve WebSockets with ws={ws!r}")
    elif ws == "wsproto":
        require("wsproto", "serve WebSockets with ws='wsproto'")
    loops.check(loop)
