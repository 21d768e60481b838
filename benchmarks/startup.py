"""Seconds from the command's start to the first 200, for `fastfork run` and
`uvicorn --workers` on one app whose import takes a while (issue 26).

    python benchmarks/startup.py [--import-seconds 3] [--runs 5] [--workers 2]

Each run starts the server on a free port, sends GET / until one answers 200
(a refused connection is retried every 10 ms), then stops the server's whole
process group.  Prints each run and the medians.
"""

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = os.path.join(ROOT, "tests", "apps")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_response(command, port, env, deadline=60.0):
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, cwd=APPS, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.monotonic() - started < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline)
            try:
                conn.request("GET", "/")
                if conn.getresponse().status == 200:
                    return time.monotonic() - started
            except OSError:
                time.sleep(0.01)              # not bound yet (uvicorn binds in its main)
            finally:
                conn.close()
        raise SystemExit(f"no answer within {deadline}s: {command}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import-seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env = dict(os.environ, SLEEPY_IMPORT_SECONDS=str(args.import_seconds))
    servers = {
        "fastfork run": lambda port: [sys.executable, "-m", "fastfork", "run", "sleepy_app:app",
                                      "--workers", str(args.workers), "--port", str(port),
                                      "--control-socket", f"/tmp/ff-startup-{port}.sock"],
        "uvicorn --workers": lambda port: [sys.executable, "-m", "uvicorn", "sleepy_app:app",
                                           "--workers", str(args.workers), "--port", str(port)],
    }
    times = {name: [] for name in servers}
    for run in range(args.runs):
        for name, command in servers.items():          # interleaved: same load for both
            port = free_port()
            times[name].append(first_response(command(port), port, env))
            print(f"run {run + 1}: {name}: {times[name][-1]:.2f}s", flush=True)
    for name, values in times.items():
        print(f"{name} {args.workers}, import {args.import_seconds:g}s: median "
              f"{statistics.median(values):.2f}s (runs: "
              f"{', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
