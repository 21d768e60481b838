"""A FastAPI app (ASGI) with a WebSocket echo route and a lifespan counted per worker."""

import asyncio
import contextlib

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse

import common
import fastfork.web


@contextlib.asynccontextmanager
async def lifespan(app):
    common.record_lifespan("startup")
    yield
    common.record_lifespan("shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/whoami")
async def whoami():
    return common.whoami("fastapi")


@app.get("/nodelay")
async def nodelay():
    return common.nodelay()


@app.get("/client")
async def client(request: Request):
    host, port = request.scope["client"]
    return {"host": host, "port": port}


@app.post("/echo")
async def echo(request: Request):
    digest = common.Digest()
    async for chunk in request.stream():
        digest.update(chunk)
    return digest.result()


@app.get("/stream")
async def stream(n: int = 5):
    async def body():
        for piece in common.chunks(n):
            yield piece
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="text/plain")


@app.get("/on-stop")
async def on_stop():
    """From now on, this worker tells the primary when it is asked to stop."""
    fastfork.on_stop(lambda: common.announce(stopping=True))
    return {"ok": True}


@app.get("/big")
async def big(mb: int = 1):
    """``mb`` MiB of b"x" in one body message."""
    return Response(b"x" * (mb << 20), media_type="application/octet-stream")


@app.get("/slow")
async def slow(s: float):
    common.announce(slow="started")
    await asyncio.sleep(s)
    return {"slept": s, "id": common.whoami("fastapi")["id"]}


@app.get("/block")
async def block(s: float):
    common.block_loop(s)
    return common.whoami("fastapi")


@app.get("/requests")
async def requests():
    return common.requests_served()


@app.get("/runtime")
async def runtime():
    """Which loop and which uvicorn protocols serve this worker."""
    server = fastfork.web.servers()[0]
    ws_class = server.config.ws_protocol_class
    return {"loop": type(asyncio.get_running_loop()).__module__.partition(".")[0],
            "http": server.config.http_protocol_class.__name__,
            "ws": ws_class.__name__ if ws_class else None}


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_text(f"hello from worker {common.whoami('fastapi')['id']}")
    try:
        while True:
            await websocket.send_text("echo: " + await websocket.receive_text())
    except WebSocketDisconnect:
        pass
