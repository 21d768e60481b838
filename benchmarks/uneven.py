"""Uneven work: does ``least`` keep a slow request from delaying the connections behind it?

    python benchmarks/uneven.py                 # every row, 10 s each
    python benchmarks/uneven.py --duration 5 --rows least,rr

Most requests are answered at once; a share (``--share``, default 0.5%) burn
``--burn-ms`` (20) ms of CPU in the serving worker's event loop
(``GET /burn``, ``benchmarks/app.py``).  Each request is a new connection
(``Connection: close``), so each is a dispatch decision.  Under ``rr`` a
connection may be dealt to the worker that is burning while the other
idles; ``least`` sends it to the worker with fewer open connections; under
``none``/``reuseport`` the kernel decides.

Each row starts the server, warms it up for 1 s, runs ``wrk`` (closed loop:
``--connections`` clients, ``benchmarks/uneven.lua`` picks each request) for
``--duration`` seconds and stops the server.  Rows: fastfork ``least``,
``rr``, ``none``, ``reuseport`` with ``--workers`` workers, ``uvicorn --workers``
when uvicorn is installed, and ``least``/``rr`` again with even work
(``--share 0``) for the cost of counting closes.  Prints a markdown table and
the ratios the issue sets as targets.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APP = os.path.join(HERE, "app.py")
LUA = os.path.join(HERE, "uneven.lua")
ALL_ROWS = ("least", "least-cap", "rr", "none", "reuseport", "uvicorn", "least-even",
            "rr-even")
READY_TIMEOUT = 20.0


# -- the uvicorn row's app: the same bytes and the same burn, as ASGI ------------------------
async def asgi_app(scope, receive, send):
    from benchmarks.app import BODY, burn
    if scope["type"] != "http":
        return
    if scope["path"] == "/burn":
        ms = scope["query_string"].partition(b"ms=")[2] or b"20"
        burn(float(ms) / 1000.0)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port, proc):
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before serving")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the server on port {port} did not answer within {READY_TIMEOUT}s")


def start_server(row, port, workers, stats_dir, cap):
    policy = row.split("-")[0]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if policy == "uvicorn":
        argv = [sys.executable, "-m", "uvicorn", "benchmarks.uneven:asgi_app", "--port",
                str(port), "--workers", str(workers), "--log-level", "warning",
                "--lifespan", "off", "--app-dir", ROOT]
        name = f"uvicorn {uvicorn_version()} --workers {workers}"
    else:
        argv = [sys.executable, APP, "--server", "fastfork", "--policy", policy,
                "--workers", str(workers), "--port", str(port), "--stats-dir", stats_dir]
        name = f"fastfork {policy}"
        if row == "least-cap":
            argv += ["--worker-connections", str(cap)]
            name += f" --worker-connections {cap}"
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, name


def stop_server(proc):
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)      # any worker left behind
    except ProcessLookupError:
        pass


def uvicorn_version():
    try:
        import uvicorn
    except ImportError:
        return None
    return uvicorn.__version__


def wrk(port, seconds, args, share):
    env = dict(os.environ, BURN_SHARE=str(share), BURN_MS=str(args.burn_ms))
    out = subprocess.run(["wrk", "-t", str(args.threads), "-c", str(args.connections),
                          "-d", f"{seconds}s", "--timeout", "10s", "-s", LUA,
                          f"http://127.0.0.1:{port}/"], env=env, capture_output=True,
                         text=True, timeout=seconds + 30)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


def run_row(row, args):
    share = 0.0 if row.endswith("-even") else args.share
    port = free_port()
    stats_dir = tempfile.mkdtemp(prefix="uneven")
    proc, name = start_server(row, port, args.workers, stats_dir, args.cap)
    try:
        wait_ready(port, proc)
        wrk(port, 1, args, share)                    # warm-up, not counted
        result = wrk(port, args.duration, args, share)
    finally:
        stop_server(proc)
        shutil.rmtree(stats_dir, ignore_errors=True)
    result["name"] = name
    result["share"] = share
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors_total"] = sum(result["errors"].values())
    return result


def table(results):
    lines = ["| server | burning share | req/s | p50 ms | p99 ms | max ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['share'] * 100:.1f}% | {r['rps']:,.0f} | "
                     f"{r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | "
                     f"{r['max_us'] / 1000:.1f} | {r['errors_total']} |")
    return lines


def targets(by_row):
    lines = []
    least, kernel = by_row.get("least"), [by_row[r] for r in ("none", "reuseport") if r in by_row]
    if least and kernel:
        best_p99 = min(r["p99_us"] for r in kernel)
        best_rps = max(r["rps"] for r in kernel)
        lines.append(f"- uneven: least p99 / best of none, reuseport = "
                     f"{least['p99_us'] / best_p99:.2f} (target <= 0.5)")
        lines.append(f"- uneven: least req/s / best of none, reuseport = "
                     f"{least['rps'] / best_rps:.3f} (target >= 0.97)")
    if "least-even" in by_row and "rr-even" in by_row:
        lines.append(f"- even: least req/s / rr req/s = "
                     f"{by_row['least-even']['rps'] / by_row['rr-even']['rps']:.3f} "
                     "(target within 3%)")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ALL_ROWS),
                        help=f"comma-separated, from {', '.join(ALL_ROWS)}")
    parser.add_argument("--duration", type=int, default=10, help="seconds per row (default 10)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--share", type=float, default=0.005,
                        help="share of requests that burn CPU (default 0.005)")
    parser.add_argument("--burn-ms", type=float, default=20.0)
    parser.add_argument("--cap", type=int, default=2,
                        help="--worker-connections of the least-cap row (default 2)")
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; rows are {', '.join(ALL_ROWS)}")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install -y wrk)")
    if "uvicorn" in rows and uvicorn_version() is None:
        print("uvicorn is not installed: its row is skipped", file=sys.stderr)
        rows.remove("uvicorn")
    results, by_row = [], {}
    for row in rows:
        print(f"running {row} ...", file=sys.stderr, flush=True)
        by_row[row] = run_row(row, args)
        results.append(by_row[row])
    print(f"{args.workers} workers, wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration}s, one request per connection, {args.share * 100:g}% of "
          f"requests burn {args.burn_ms:g} ms of CPU; {os.cpu_count()} CPUs\n")
    print("\n".join(table(results)))
    extra = targets(by_row)
    if extra:
        print()
        print("\n".join(extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
