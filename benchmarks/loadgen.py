"""The built-in HTTP load generator: closed loops (when ``wrk`` is missing) and
the open-loop stall test.

    python benchmarks/loadgen.py --port 8000 --mode close --duration 2 --connections 16
    python benchmarks/loadgen.py --port 8000 --mode open --rate 1000 --duration 4

Prints one JSON line: requests completed, errors, and every request's
latency in microseconds.

``close`` / ``keepalive`` (closed loop): ``--connections`` concurrent request
loops on one asyncio event loop for ``--duration`` seconds; ``compare.py``
starts several of these processes and merges them.  Latency is measured like
wrk's: from writing the request to reading the whole answer (for ``close``,
after the connection is established, so time in the server's accept queue
counts).  Requests still in flight at the deadline are not counted, as in wrk.

``--slow-share S --slow-path P`` (closed and open loops): each request asks
for ``P`` with probability ``S`` instead of ``/`` (``benchmarks/uneven.py``'s
uneven work); ``slow_latencies_us`` then lists those requests' latencies
apart, and ``latencies_us`` still lists every request's.

``open`` (open loop): a new connection and request every ``1/--rate``
seconds, whatever happened to the earlier ones, and latency measured from
the moment the request was due.  This is what the stall test needs: a closed
loop stops sending while its connections are stuck on a blocked worker (so
it undercounts the users a stall hurts), and wrk corrects for that by adding
synthetic samples, which counts requests nobody sent.  Every request due in
``--duration`` is sent and waited for (up to ``--timeout``), so the share of
slow requests is a share of real ones.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time

REQUEST_KEEP = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


class Counters:
    def __init__(self):
        self.latencies = []
        self.slow_latencies = []
        self.errors = 0
        self.bad_status = 0

    def record(self, latency_us, slow):
        self.latencies.append(latency_us)
        if slow:
            self.slow_latencies.append(latency_us)


class Requests:
    """Which request to send next: ``/``, or the slow path with probability ``share``."""

    def __init__(self, share=0.0, slow_path="/burn?ms=20", seed=None):
        self.share = share
        self.slow = (f"GET {slow_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Connection: close\r\n\r\n").encode()
        self._random = random.Random(seed)

    def next(self):
        """``(request bytes, is_slow)`` for one new-connection request."""
        if self.share and self._random.random() < self.share:
            return self.slow, True
        return REQUEST_CLOSE, False


def _content_length(head):
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def close_loop(host, port, counters, requests):
    """New connection per request (Connection: close), read to EOF."""
    while True:
        request, slow = requests.next()
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            counters.errors += 1
            continue
        try:
            start = time.perf_counter()
            writer.write(request)
            data = await reader.read()
            elapsed = time.perf_counter() - start
        except OSError:
            counters.errors += 1
            continue
        finally:
            writer.close()
        if data.startswith(b"HTTP/1.1 200"):
            counters.record(int(elapsed * 1e6), slow)
        else:
            counters.bad_status += 1


async def keepalive_loop(host, port, counters, requests):
    """One connection, requests one after another."""
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            counters.errors += 1
            continue
        try:
            while True:
                start = time.perf_counter()
                writer.write(REQUEST_KEEP)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
                elapsed = time.perf_counter() - start
                if head.startswith(b"HTTP/1.1 200"):
                    counters.latencies.append(int(elapsed * 1e6))
                else:
                    counters.bad_status += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            counters.errors += 1
        finally:
            writer.close()


async def open_loop(host, port, rate, duration, timeout, requests):
    """Requests due at a fixed rate, each on its own connection."""
    loop = asyncio.get_running_loop()
    counters = Counters()

    async def one(due):
        request, slow = requests.next()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError):
            counters.errors += 1
            return
        try:
            writer.write(request)
            data = await asyncio.wait_for(reader.read(), max(0.001, due + timeout - loop.time()))
        except (OSError, asyncio.TimeoutError):
            counters.errors += 1
            return
        finally:
            writer.close()
        if data.startswith(b"HTTP/1.1 200"):
            counters.record(int((loop.time() - due) * 1e6), slow)
        else:
            counters.bad_status += 1

    start = loop.time()
    total = max(1, int(rate * duration))
    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)    # the arrival schedule, not a wait for readiness
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    return {"requests": len(counters.latencies), "sent": total, "errors": counters.errors,
            "bad_status": counters.bad_status, "duration_s": total / rate,
            "latencies_us": counters.latencies, "slow_latencies_us": counters.slow_latencies}


async def run(host, port, mode, duration, connections, requests):
    counters = Counters()
    loop_fn = close_loop if mode == "close" else keepalive_loop
    tasks = [asyncio.create_task(loop_fn(host, port, counters, requests))
             for _ in range(connections)]
    started = time.perf_counter()
    await asyncio.sleep(duration)       # the run's length, not a wait for readiness
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"requests": len(counters.latencies), "errors": counters.errors,
            "bad_status": counters.bad_status, "duration_s": elapsed,
            "latencies_us": counters.latencies, "slow_latencies_us": counters.slow_latencies}


# -- for the benchmark scripts that run this file as their client ----------------------------

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port, path="/", timeout=10.0):
    """One ``Connection: close`` request; returns the whole answer (bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def split(total, parts):
    """``total`` connections over ``parts`` processes, as evenly as they go."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def spawn(port, mode, duration, **options):
    """Start this file as a client process (``options`` are its flags, ``slow_share=0.1``
    for ``--slow-share 0.1``); returns the Popen, whose stdout is the JSON line."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "--port", str(port),
           "--mode", mode, "--duration", str(duration)]
    for name, value in options.items():
        cmd += ["--" + name.replace("_", "-"), str(value)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)


def gather(procs, timeout):
    """Wait for ``spawn``ed processes; their results in order.  Any still running
    when one fails (or the wait runs out) is killed."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"loadgen failed (exit {proc.returncode}): {err.strip()}")
            results.append(json.loads(out))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("close", "keepalive", "open"), required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--connections", type=int, default=16, help="closed loops")
    parser.add_argument("--rate", type=float, default=1000.0, help="open loop: requests/s")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="open loop: seconds a request may take before it is an error")
    parser.add_argument("--slow-share", type=float, default=0.0,
                        help="share of requests that ask for --slow-path (close, open)")
    parser.add_argument("--slow-path", default="/burn?ms=20")
    parser.add_argument("--seed", type=int, default=None, help="for the slow requests' draw")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1 or args.rate <= 0 or args.timeout <= 0:
        parser.error("--duration, --rate and --timeout must be > 0 and --connections >= 1")
    if not 0.0 <= args.slow_share <= 1.0:
        parser.error("--slow-share must be between 0 and 1")
    if args.slow_share and args.mode == "keepalive":
        parser.error("--slow-share needs --mode close or open (a new connection per request)")
    requests = Requests(args.slow_share, args.slow_path, args.seed)
    if args.mode == "open":
        result = asyncio.run(open_loop(args.host, args.port, args.rate, args.duration,
                                       args.timeout, requests))
    else:
        result = asyncio.run(run(args.host, args.port, args.mode, args.duration,
                                 args.connections, requests))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
