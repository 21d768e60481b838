"""What each demo worker runs: an HTTP server whose answer names the worker."""

import asyncio
import os

import fastfork

from . import http

# The primary's port reservation, set while the demo runs: a forked worker
# closes its copy.
probe = None


def worker_main(address, report):
    """A worker: serve HTTP on ``address``; with ``report``, tell the primary
    about every request (the demo's global total)."""
    if probe is not None:
        probe.close()      # fork copied the primary's port reservation: drop it
    asyncio.run(_serve(address, report))


async def _serve(address, report):
    body = f"hello from worker {fastfork.worker_id} (pid {os.getpid()})\n".encode()
    # Sent before the answer is written: by the time a client reads the answer,
    # the primary's channel already holds the report.
    on_request = (lambda: fastfork.send({"served": 1})) if report else None
    app = http.HelloApp(body, on_request)

    def on_message(data):
        if data == "count?":
            fastfork.send({"count": app.requests})

    fastfork.on_message(on_message)
    fastfork.on_stop(app.close_idle)
    try:
        server = await fastfork.create_server(app.protocol_factory, address)
    except OSError as exc:
        fastfork.send({"listen_error": str(exc)})
        await fastfork.wait_stopping()
        return
    await fastfork.wait_stopping()
    await fastfork.drain([server])
