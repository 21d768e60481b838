"""What every web test app shares: who answered, lifespan records, test signals.

Every app serves the same routes so one test can drive any of them:

    GET  /whoami        {"id", "index", "pid", "kind"}: the worker that answered
    POST /echo          {"length", "sha256"} of the request body, read as it arrives
    GET  /stream?n=N    N chunks "chunk i\\n" streamed (chunked transfer encoding)
    GET  /slow?s=S      sends {"slow": "started", "id"} to the primary, waits S seconds,
                        then answers {"slept": S, "id"}
    GET  /requests      {"requests": fastfork.web.requests_served()} of this worker
    GET  /block?s=S     sends {"blocking": "loop", "id"} to the primary, blocks this
                        worker's event loop S seconds (it accepts nothing meanwhile),
                        then answers /whoami's JSON
    GET  /client        {"host", "port"}: the client as the app sees it (ASGI's
                        scope["client"], WSGI's REMOTE_ADDR and REMOTE_PORT); not
                        in the Django app
    GET  /server        {"host", "port"}: the local address as the app sees it (ASGI's
                        scope["server"], WSGI's SERVER_NAME and SERVER_PORT); Starlette
                        and Flask apps only
    GET  /scheme        {"scheme", "id"}: http or https, as the app sees it (Starlette
                        and Flask apps only)
    GET  /nodelay       {"nodelay", "connections"}: whether every TCP connection this
                        worker holds now has TCP_NODELAY set, and how many it holds
"""

import asyncio
import hashlib
import json
import os
import socket
import threading
import time

import fastfork
import fastfork.web


def whoami(kind):
    return {"id": fastfork.worker_id, "index": fastfork.worker_index, "pid": os.getpid(),
            "kind": kind}


def announce(**data):
    """Tell the primary (which prints it as an EVENT line) what this worker is doing."""
    fastfork.send(dict(data, id=fastfork.worker_id))


class Digest:
    def __init__(self):
        self.hash = hashlib.sha256()
        self.length = 0

    def update(self, chunk):
        self.hash.update(chunk)
        self.length += len(chunk)

    def result(self):
        return {"length": self.length, "sha256": self.hash.hexdigest()}


def chunks(n):
    return [f"chunk {i}\n".encode() for i in range(n)]


def block_loop(seconds):
    """Block this worker's event loop (from the loop, or from a WSGI thread); the
    primary hears of it once the loop is blocked, not before."""
    def block():
        announce(blocking="loop")
        time.sleep(seconds)          # deliberately blocks the loop it runs on

    loop = fastfork.web.servers()[0].loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        block()
    else:
        done = threading.Event()
        loop.call_soon_threadsafe(lambda: (block(), done.set()))
        done.wait()


def nodelay():
    """Whether every connected TCP socket of this process has TCP_NODELAY (the
    one this request came on among them), read from the fds themselves."""
    flags = []
    for name in os.listdir("/proc/self/fd"):
        try:
            fd = os.dup(int(name))
        except OSError:
            continue                  # gone already
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)              # not a socket
            continue
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in (
                    socket.AF_INET, socket.AF_INET6):
                continue
            sock.getpeername()        # connected: not a listener
            flags.append(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
        except OSError:
            continue
        finally:
            sock.close()
    return {"nodelay": bool(flags) and all(flags), "connections": len(flags)}


def requests_served():
    return {"requests": fastfork.web.requests_served()}


def record_lifespan(phase):
    """Append ``phase`` to this worker's file under $WEB_LIFESPAN_DIR (one file per
    pid: the test counts startups and shutdowns per worker after the cluster exits)."""
    directory = os.environ.get("WEB_LIFESPAN_DIR")
    if directory:
        with open(os.path.join(directory, str(os.getpid())), "a") as f:
            f.write(json.dumps({"phase": phase, "id": fastfork.worker_id}) + "\n")
