"""The apps benchmarks/web_compare.py serves: the same tiny answer from Starlette and
Flask, and from a bare ASGI and a bare WSGI callable (no framework)."""

from flask import Flask
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

BODY = "hello from a web worker\n"


async def _hello(request):
    return PlainTextResponse(BODY)


starlette_app = Starlette(routes=[Route("/", _hello)])

flask_app = Flask(__name__)


@flask_app.get("/")
def _flask_hello():
    return BODY, 200, {"Content-Type": "text/plain; charset=utf-8"}


_BODY = BODY.encode()
_HEADERS = [(b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(_BODY)).encode())]
_WSGI_HEADERS = [(name.decode(), value.decode()) for name, value in _HEADERS]


async def bare_asgi(scope, receive, send):
    if scope["type"] != "http":
        return                    # lifespan: nothing to set up
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


def bare_wsgi(environ, start_response):
    start_response("200 OK", _WSGI_HEADERS)
    return [_BODY]
