"""An ASGI app whose import takes $SLEEPY_IMPORT_SECONDS (for start-up timings), then
raises $SLEEPY_IMPORT_FAIL when set (an import error only a worker finds).  Each
import appends "PID primary|worker" to the file $SLEEPY_IMPORT_LOG when set."""

import os
import time

import fastfork

if os.environ.get("SLEEPY_IMPORT_LOG"):
    with open(os.environ["SLEEPY_IMPORT_LOG"], "a") as f:
        f.write(f"{os.getpid()} {'worker' if fastfork.is_worker else 'primary'}\n")
time.sleep(float(os.environ.get("SLEEPY_IMPORT_SECONDS", "0")))
if os.environ.get("SLEEPY_IMPORT_FAIL"):
    raise RuntimeError(os.environ["SLEEPY_IMPORT_FAIL"])


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
