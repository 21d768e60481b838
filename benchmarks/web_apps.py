"""The apps benchmarks/web_compare.py serves: the same tiny answer from Starlette and Flask."""

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
