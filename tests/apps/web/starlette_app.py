"""A Starlette JSON app (ASGI), with a lifespan that records startup and shutdown."""

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import common


async def whoami(request):
    return JSONResponse(common.whoami("starlette"))


async def echo(request):
    digest = common.Digest()
    async for chunk in request.stream():
        digest.update(chunk)
    return JSONResponse(digest.result())


async def stream(request):
    pieces = common.chunks(int(request.query_params.get("n", "5")))

    async def body():
        for piece in pieces:
            yield piece
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="text/plain")


async def slow(request):
    seconds = float(request.query_params["s"])
    common.announce(slow="started")
    await asyncio.sleep(seconds)
    return JSONResponse({"slept": seconds, "id": common.whoami("starlette")["id"]})


async def block(request):
    common.block_loop(float(request.query_params["s"]))
    return JSONResponse(common.whoami("starlette"))


async def client(request):
    host, port = request.scope["client"]
    return JSONResponse({"host": host, "port": port})


async def server(request):
    host, port = request.scope["server"]
    return JSONResponse({"host": host, "port": port})


async def nodelay(request):
    return JSONResponse(common.nodelay())


async def disconnect(request):
    # Reads the body, then waits for the client to leave: http.disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    common.announce(disconnected=request.url.path)
    return JSONResponse({})


_release = asyncio.Event()


async def late_body(request):
    # The response starts (StreamingResponse sends its head before iterating)
    # and its first body part waits for /release-body.
    _release.clear()

    async def body():
        try:
            await asyncio.wait_for(_release.wait(), 10)
            yield b"released"
        except asyncio.TimeoutError:
            yield b"never released"

    return StreamingResponse(body(), media_type="text/plain")


async def release_body(request):
    _release.set()
    return JSONResponse({"released": True})
async def scheme(request):
    return JSONResponse({"scheme": request.url.scheme, "id": common.whoami("starlette")["id"]})


async def requests(request):
    return JSONResponse(common.requests_served())


@contextlib.asynccontextmanager
async def lifespan(app):
    common.record_lifespan("startup")
    yield
    common.record_lifespan("shutdown")


app = Starlette(routes=[
    Route("/whoami", whoami), Route("/echo", echo, methods=["POST"]), Route("/stream", stream),
    Route("/slow", slow), Route("/requests", requests), Route("/block", block),
    Route("/client", client), Route("/disconnect", disconnect), Route("/late-body", late_body),
    Route("/release-body", release_body), Route("/scheme", scheme),
    Route("/nodelay", nodelay), Route("/server", server),
], lifespan=lifespan)


@contextlib.asynccontextmanager
async def failing_lifespan(app):
    raise RuntimeError("database unreachable at startup")
    yield  # pragma: no cover


broken = Starlette(routes=[Route("/whoami", whoami)], lifespan=failing_lifespan)
