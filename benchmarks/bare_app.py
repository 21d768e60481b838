"""The bare app of ``benchmarks/cpu_per_conn.py``: a raw asyncio.Protocol, no HTTP library.

    python benchmarks/bare_app.py --port 8000 --workers 2 --policy rr --loop uvloop \\
        --pid-dir /tmp/pids

A fastfork cluster (the function form: ``fastfork.Cluster(worker_main, ...)``)
whose workers serve ``Bare`` with ``fastfork.serve_async(..., protocol=True)``
on the event loop named by ``--loop``.  Every request head (up to
``\\r\\n\\r\\n``) gets ``HTTP/1.1 200 OK``, ``Content-Length: 2``, ``ok``; a
request carrying ``Connection: close`` gets ``Connection: close`` in the
answer too and the connection is closed after writing.  ``benchmarks/floor.c``
writes the same bytes under the same rule, so the two are compared like for
like.

The primary prints one JSON line (``{"primary", "policy", "loop",
"implementation"}``); each worker, once it serves, writes
``PID_DIR/<pid>`` with the name of its running loop's class, so the driver
knows every worker's pid and that it really runs the loop it asked for.
SIGTERM to the primary stops the cluster (the workers drain and exit); the
primary also dies with its parent (``PR_SET_PDEATHSIG``).
"""

import argparse
import asyncio
import ctypes
import json
import os
import signal
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RESPONSE_KEEP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
RESPONSE_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
LOOPS = ("asyncio", "uvloop")


class Bare(asyncio.Protocol):
    """Answer each request head; close after one that asked for ``Connection: close``."""

    # No __slots__: fastfork's connection tracker wraps connection_made and
    # connection_lost on each instance.

    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        buf = self.buffer + data if self.buffer else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            buf = buf[end + 4:]
            # The same test as benchmarks/floor.c (wrk sends "Connection: close").
            if b"onnection: close" in head or b"onnection: Close" in head:
                self.transport.write(RESPONSE_CLOSE)
                self.transport.close()
                return
            self.transport.write(RESPONSE_KEEP)
        self.buffer = buf


def run_loop(coro, loop):
    """Run ``coro`` to completion on a fresh event loop of kind ``loop``."""
    if loop == "asyncio":
        return asyncio.run(coro)
    import uvloop
    if hasattr(asyncio, "Runner"):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    uvloop.install()
    return asyncio.run(coro)


def _die_with_parent():
    # If the benchmark driver is killed, its servers must not outlive it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)      # PR_SET_PDEATHSIG


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--policy", choices=("rr", "none", "reuseport"), default="rr")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio",
                        help="the workers' event loop")
    parser.add_argument("--pid-dir", required=True,
                        help="each serving worker writes PID_DIR/<pid> (its loop's class)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.pid_dir):
        parser.error(f"--pid-dir {args.pid_dir}: no such directory")
    if args.loop == "uvloop":
        import uvloop  # noqa: F401  (fail here, in the primary, when it is missing)
    _die_with_parent()

    import fastfork

    def announce(servers):
        pid = os.getpid()
        tmp = os.path.join(args.pid_dir, f".{pid}.tmp")
        with open(tmp, "w") as f:
            f.write(type(asyncio.get_running_loop()).__module__ + "."
                    + type(asyncio.get_running_loop()).__name__)
        os.replace(tmp, os.path.join(args.pid_dir, str(pid)))

    def worker_main():
        run_loop(fastfork.serve_async(Bare, ("127.0.0.1", args.port), protocol=True,
                                      on_started=announce), args.loop)

    cluster = fastfork.Cluster(worker_main, args.workers, policy=args.policy,
                               graceful_timeout=5.0)
    print(json.dumps({"primary": os.getpid(), "policy": args.policy, "loop": args.loop,
                      "implementation": cluster.implementation}), flush=True)
    return cluster.run()


if __name__ == "__main__":
    sys.exit(main())
