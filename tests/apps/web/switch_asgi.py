"""A FastAPI app for test_switch.py: what a worker sees of `fastfork run`'s options.

    GET /env/NAME   {"value": the environment variable NAME, or null}
    GET /scope      {"root_path", "client": [host, port]}: the ASGI scope as the app sees it
    GET /config     what uvicorn's Config of this worker says, and the uvicorn.error level
    GET /whoami     {"pid"}

``make_app`` is the same app from a factory (``--factory``).
"""

import logging
import os

from fastapi import FastAPI, Request

import fastfork.web


def make_app():
    app = FastAPI()

    @app.get("/env/{name}")
    async def env(name: str):
        return {"value": os.environ.get(name)}

    @app.get("/scope")
    async def scope(request: Request):
        return {"root_path": request.scope.get("root_path"),
                "client": list(request.scope["client"])}

    @app.get("/config")
    async def config():
        c = fastfork.web.servers()[0].config
        return {"limit_concurrency": c.limit_concurrency, "backlog": c.backlog,
                "timeout_keep_alive": c.timeout_keep_alive,
                "h11_max_incomplete_event_size": c.h11_max_incomplete_event_size,
                "ws_max_size": c.ws_max_size, "ws_max_queue": c.ws_max_queue,
                "ws_ping_interval": c.ws_ping_interval, "ws_ping_timeout": c.ws_ping_timeout,
                "ws_per_message_deflate": c.ws_per_message_deflate,
                "http": c.http_protocol_class.__name__,
                "error_level": logging.getLogger("uvicorn.error").level}

    @app.get("/whoami")
    async def whoami():
        return {"pid": os.getpid()}

    return app


app = make_app()
