"""The app the operations tests serve with ``python -m fastfork run``.

A line protocol, one request per connection:

    whoami        -> "<worker id> <pid> <index> <VERSION>"
    peer          -> "<host> <port>" of the client, as the transport says
    sockpeer      -> the same from the transport's socket (getpeername(), as uvicorn asks)
    slow S        -> answers after S seconds (awaits: the loop stays alive)
    block S       -> blocks the event loop for S seconds (a hung worker)
    grow MB       -> keeps MB more MiB of memory, answers the RSS in bytes
    fill N        -> a thread sends N messages of 60 KB to the primary (a stopped
                     primary's control channel is full after a few); answers "filling"
    anything else -> echoed back

``VERSION`` lets a reload test see new code being picked up.
"""

import asyncio
import os
import sys
import threading
import time

import fastfork

VERSION = "1"
_hoard = []


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def handle(reader, writer):
    line = (await reader.readline()).decode().strip()
    cmd, _, arg = line.partition(" ")
    if cmd == "whoami":
        reply = f"{fastfork.worker_id} {os.getpid()} {fastfork.worker_index} {VERSION}"
    elif cmd == "peer":
        host, port = writer.get_extra_info("peername")[:2]
        reply = f"{host} {port}"
    elif cmd == "sockpeer":
        host, port = writer.get_extra_info("socket").getpeername()[:2]
        reply = f"{host} {port}"
    elif cmd == "slow":
        await asyncio.sleep(float(arg))
        reply = f"{fastfork.worker_id} slept"
    elif cmd == "block":
        time.sleep(float(arg))          # deliberately blocks the event loop
        reply = f"{fastfork.worker_id} unblocked"
    elif cmd == "grow":
        block = bytearray(int(arg) * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1                # touch every page so it counts in RSS
        _hoard.append(block)
        reply = str(_rss())
    elif cmd == "fill":
        threading.Thread(target=_fill, args=(int(arg),), daemon=True).start()
        reply = "filling"
    else:
        reply = line
    writer.write((reply + "\n").encode())
    await writer.drain()
    writer.close()


def _fill(count):
    for _ in range(count):
        fastfork.send("x" * 60_000)       # blocks while the primary reads nothing


class EchoProtocol(asyncio.Protocol):
    """For --app-type protocol: echoes each chunk prefixed with the worker's pid."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(f"{os.getpid()} ".encode() + data)
        self.transport.close()


def crash(addresses):
    """For --app-type main: a worker that dies right after starting (a crash loop)."""
    sys.exit(3)


def serve_when_ready(addresses):
    """For --app-type main with --wait-ready: listens at once, says ready later."""
    delay = float(os.environ.get("OPS_READY_DELAY", "0"))

    async def started(servers):
        await asyncio.sleep(delay)
        print(f"OPS ready {os.getpid()}", flush=True)
        fastfork.ready()

    fastfork.serve(handle, *addresses, on_started=started)


NOT_CALLABLE = 42
