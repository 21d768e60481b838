"""The benchmark's HTTP app: the same tiny server in every configuration.

    python benchmarks/app.py --server fastfork --policy rr --impl c --workers 2 \\
        --port 8000 --stats-dir /tmp/stats
    python benchmarks/app.py --server single --port 8000 --stats-dir /tmp/stats

Every request gets the same 13-byte body; ``Connection: close`` in a request
makes the answer carry it too and the server close after writing.
``GET /stall?s=2`` blocks the serving process's event loop for 2 s before
answering (the stall test); ``GET /await?s=0.01`` answers 10 ms later while
the loop runs on (an app awaiting I/O); ``GET /burn?ms=20`` burns 20 ms of CPU in the
loop before answering (``benchmarks/uneven.py``).  ``benchmarks/node_cluster.js``
answers with the same bytes under the same rules (it has no ``/burn``).

Each serving process counts its connections and requests and, every 50 ms,
replaces ``STATS_DIR/<pid>.json`` with ``{"pid", "conns", "reqs", "t"}``
(``t``: wall-clock time of the write), so the driver can read per-worker
counts at any moment without talking to the server.

The app deliberately uses its own small protocol rather than
``fastfork.demo.http``: it must stay byte-for-byte equivalent to the Node app, and
the stall path is a benchmark-only feature.
"""

import argparse
import asyncio
import ctypes
import json
import os
import signal
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BODY = b"Hello, world!"
_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
         + str(len(BODY)).encode() + b"\r\n")
RESPONSE_KEEP = _HEAD + b"\r\n" + BODY
RESPONSE_CLOSE = _HEAD + b"Connection: close\r\n\r\n" + BODY
STATS_INTERVAL = 0.05


class Stats:
    """This process's counters, published to ``STATS_DIR/<pid>.json``."""

    def __init__(self, directory):
        self.conns = 0
        self.reqs = 0
        self.pid = os.getpid()
        self._path = os.path.join(directory, f"{self.pid}.json")
        self._tmp = os.path.join(directory, f".{self.pid}.tmp")

    def write(self):
        with open(self._tmp, "w") as f:
            json.dump({"pid": self.pid, "conns": self.conns, "reqs": self.reqs,
                       "t": time.time()}, f)
        os.replace(self._tmp, self._path)     # readers never see a half-written file

    def start(self, loop):
        def tick():
            self.write()
            loop.call_later(STATS_INTERVAL, tick)
        tick()


STATS = None


def _burn_seconds(head):
    # "GET /burn?ms=20 HTTP/1.1..." -> 0.02
    target = head.split(b" ", 2)[1]
    _, _, value = target.partition(b"ms=")
    try:
        return min(max(float(value or b"20"), 0.0), 1000.0) / 1000.0
    except ValueError:
        return 0.02


def burn(seconds):
    """Spend ``seconds`` of this thread's CPU time (not wall time: on a busy
    machine a burn must cost the same work, however long it takes)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _stall_seconds(head):
    # "GET /stall?s=2 HTTP/1.1..." -> 2.0
    target = head.split(b" ", 2)[1]
    _, _, value = target.partition(b"s=")
    try:
        return min(max(float(value or b"2"), 0.0), 30.0)
    except ValueError:
        return 2.0


class HTTP(asyncio.Protocol):
    """Minimal HTTP/1.1: GET requests without bodies, pipelining allowed."""

    # No __slots__: fastfork's connection tracker wraps connection_made and
    # connection_lost on each instance.

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
        STATS.conns += 1

    def data_received(self, data):
        buf = self.buffer + data if self.buffer else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            buf = buf[end + 4:]
            STATS.reqs += 1
            if head.startswith(b"GET /await"):
                # Awaits I/O: the answer comes later, the loop runs meanwhile.
                asyncio.get_running_loop().call_later(_stall_seconds(head), self._answer,
                                                      b"connection: close" in head.lower())
                self.buffer = buf
                return
            if head.startswith(b"GET /stall"):
                time.sleep(_stall_seconds(head))      # blocks this process's event loop
            elif head.startswith(b"GET /burn"):
                burn(_burn_seconds(head))             # and this keeps it busy
            if b"connection: close" in head.lower():
                self.transport.write(RESPONSE_CLOSE)
                self.transport.close()
                self.buffer = b""
                return
            self.transport.write(RESPONSE_KEEP)
        self.buffer = buf

    def _answer(self, close):
        if self.transport is None:
            return                                    # the client left meanwhile
        if close:
            self.transport.write(RESPONSE_CLOSE)
            self.transport.close()
        else:
            self.transport.write(RESPONSE_KEEP)

    def connection_lost(self, exc):
        self.transport = None


def _die_with_parent():
    # If the benchmark driver is killed, its servers must not outlive it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)      # PR_SET_PDEATHSIG


def serve_single(port, stats_dir):
    global STATS
    STATS = Stats(stats_dir)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(HTTP, "127.0.0.1", port, backlog=2048,
                                          reuse_address=True)
        STATS.start(loop)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def serve_fastfork(port, stats_dir, workers, policy, impl, window=None, worker_connections=0,
                   stall_ms=None, defer_accept=True):
    import fastfork

    def worker_main():
        global STATS
        STATS = Stats(stats_dir)
        fastfork.serve(HTTP, ("127.0.0.1", port), protocol=True,
                       on_started=lambda servers: STATS.start(asyncio.get_running_loop()))

    pure = None if impl == "auto" else impl == "py"
    options = {} if window is None else {"window": window}
    if worker_connections:
        options["worker_connections"] = worker_connections
    if stall_ms is not None:
        options["stall_ms"] = stall_ms
    cluster = fastfork.Cluster(worker_main, workers, policy=policy, pure=pure,
                               graceful_timeout=5.0, defer_accept=defer_accept, **options)
    print(json.dumps({"primary": os.getpid(), "policy": policy,
                      "implementation": cluster.implementation}), flush=True)
    return cluster.run()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("fastfork", "single"), required=True)
    parser.add_argument("--policy", choices=("rr", "least", "none", "reuseport"), default="rr")
    parser.add_argument("--impl", choices=("c", "py", "auto"), default="auto",
                        help="fastfork dispatcher: Cython, pure Python, or the default choice")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=int, default=None,
                        help="credit window of the rr/least policies (default: fastfork's)")
    parser.add_argument("--worker-connections", type=int, default=0,
                        help="least policy: cap on a worker's open connections (0: none)")
    parser.add_argument("--stall-ms", type=int, default=None,
                        help="rr/least: stall detection threshold, 0: off (default: fastfork's)")
    parser.add_argument("--no-defer-accept", dest="defer_accept", action="store_false",
                        help="accept connections before their request arrives (the "
                             "library's default; fastfork run defers, as this app does)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats-dir", required=True)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.stats_dir):
        parser.error(f"--stats-dir {args.stats_dir}: no such directory")
    _die_with_parent()
    if args.server == "single":
        serve_single(args.port, args.stats_dir)
        return 0
    return serve_fastfork(args.port, args.stats_dir, args.workers, args.policy, args.impl,
                          args.window, args.worker_connections, args.stall_ms,
                          args.defer_accept)


if __name__ == "__main__":
    sys.exit(main())
