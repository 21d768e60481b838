"""fastfork.web against the usual ways to serve ASGI and WSGI apps, side by side.

    python benchmarks/web_compare.py                       # the documented run
    python benchmarks/web_compare.py --duration 1          # a quick look

The same answer from a Starlette app (ASGI), a Flask app and a Django app (WSGI),
``benchmarks/web_apps.py`` and ``benchmarks/web_django.py``, and from a bare
ASGI and a bare WSGI callable (no framework: the server's own cost per request),
served with ``--workers`` workers on loopback by each configuration below,
one at a time, loaded by ``wrk -t1 -c32 -dNs`` twice: a new connection per
request (``-H 'Connection: close'``) and keep-alive.  Each server gets a 1 s
wrk warm-up after it answers its first request, so every worker is up.  Writes
``benchmarks/results/web_compare.md`` and prints the table: req/s and the
ratio to fastfork rr for the same app, and the CPU the server's processes
(utime + stime from ``/proc``) spent per request, on new connections (the
primary's or master's share in brackets) and on keep-alive, and below it
what each app costs alone, called in a loop without a server (``--cost``).
``--repeat N`` runs the rows alternately N times and reports medians.

    fastfork rr / none      fastfork.web.serve, defaults (http "auto": fastfork's
                            engine, C; loop "auto": uvloop when installed)
    ..., --primary-sched other  the primary as SCHED_OTHER always (auto: SCHED_BATCH when behind)
    fastfork rr httptools   the same on uvicorn's httptools protocol
    ..., WSGI on the loop   and threads=0: the engine calls the WSGI app itself
    uvicorn --workers N     uvicorn's own process manager
    gunicorn + uvicorn      gunicorn -k uvicorn_worker.UvicornWorker
    gunicorn gthread        gunicorn -k gthread --threads T (WSGI)
    granian                 granian --interface asgi|wsgi (when installed)
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if __package__ in (None, ""):
    sys.path.insert(0, ROOT)

from benchmarks.cpu_per_conn import CLK_TCK, proc_stat  # noqa: E402
from benchmarks.loadgen import free_port  # noqa: E402

WRK_SCRIPT = os.path.join(HERE, "wrk_report.lua")
READY_TIMEOUT = 30.0
# app -> (its import path, its interface); the servers import it by that path.
APPS = {
    "starlette": ("benchmarks.web_apps:starlette_app", "asgi"),
    "flask": ("benchmarks.web_apps:flask_app", "wsgi"),
    "django": ("benchmarks.web_django:django_app", "wsgi"),
    # No framework: what a row costs here is the server's own (and the kernel's).
    "asgi-bare": ("benchmarks.web_apps:bare_asgi", "asgi"),
    "wsgi-bare": ("benchmarks.web_apps:bare_wsgi", "wsgi"),
}
# What must be importable for an app's rows (a bare app needs nothing).
FRAMEWORK = {"starlette": "starlette", "flask": "flask", "django": "django"}
COST_CALLS = 4000           # calls a round when timing an app's own cost (after 2,000 unmeasured)
COST_ROUNDS = 5             # rounds timed; the fastest is reported


def configurations(args):
    py, w, t = sys.executable, str(args.workers), str(args.threads)
    me = os.path.abspath(__file__)
    rows = []
    for app, (target, kind) in APPS.items():
        if app in FRAMEWORK and not _importable(FRAMEWORK[app]):
            print(f"{app} is not installed: its rows are left out", file=sys.stderr)
            continue
        for policy in ("rr", "none"):
            rows.append((app, f"fastfork {policy}",
                         [py, me, "--serve", policy, "--app", app, "--port", "{port}",
                          "--workers", w, "--threads", t]
                         + ([] if args.window is None else ["--window", str(args.window)])))
        rows.append((app, "fastfork rr, --primary-sched other",
                     [py, me, "--serve", "rr", "--app", app, "--port", "{port}", "--workers", w,
                      "--threads", t, "--primary-sched", "other"]
                     + ([] if args.window is None else ["--window", str(args.window)])))
        rows.append((app, "fastfork rr httptools",
                     [py, me, "--serve", "rr", "--app", app, "--port", "{port}", "--workers", w,
                      "--threads", t, "--http", "httptools"]
                     + ([] if args.window is None else ["--window", str(args.window)])))
        if kind == "wsgi":
            rows.append((app, "fastfork rr, WSGI on the loop",
                         [py, me, "--serve", "rr", "--app", app, "--port", "{port}",
                          "--workers", w, "--threads", "0", "--http", "engine"]
                         + ([] if args.window is None else ["--window", str(args.window)])))
        if kind == "asgi":
            rows.append((app, f"uvicorn --workers {w}",
                         [py, "-m", "uvicorn", target, "--port", "{port}", "--workers", w,
                          "--no-access-log", "--log-level", "warning"]))
            worker_class = "uvicorn_worker.UvicornWorker"
            try:
                import uvicorn_worker  # noqa: F401
            except ImportError:
                worker_class = "uvicorn.workers.UvicornWorker"
            rows.append((app, "gunicorn + uvicorn",
                         [py, "-m", "gunicorn", target, "-k", worker_class, "-w", w,
                          "-b", "127.0.0.1:{port}", "--log-level", "warning"]))
        else:
            rows.append((app, f"gunicorn gthread ({t} threads)",
                         [py, "-m", "gunicorn", target, "-k", "gthread", "-w", w,
                          "--threads", t, "-b", "127.0.0.1:{port}", "--log-level", "warning"]))
        if shutil.which("granian") or _importable("granian"):
            rows.append((app, "granian",
                         [py, "-m", "granian", "--interface", kind, target, "--host", "127.0.0.1",
                          "--port", "{port}", "--workers", w, "--log-level", "warning"]))
    return rows


def _importable(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def wait_ready(proc, port):
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)      # polling a port that is not open yet
    raise RuntimeError(f"no answer on port {port} within {READY_TIMEOUT}s")


def process_tree(pid):
    """``pid`` and its descendants (a primary or master and its workers)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(entry)
            if stat is not None:
                children.setdefault(stat[1], []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def cpu_ticks(pids):
    """utime + stime of each pid, in clock ticks (pids gone are left out)."""
    ticks = {}
    for pid in pids:
        stat = proc_stat(pid)
        if stat is not None:
            ticks[pid] = stat[2] + stat[3]
    return ticks


def wrk(port, duration, connections, close, pids=()):
    """wrk's figures; with ``pids``, also the CPU they spent per request
    (``cpu_us``: all of them; ``top_cpu_us``: the first, the primary or master)."""
    before = cpu_ticks(pids)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", WRK_SCRIPT]
    if close:
        command += ["-H", "Connection: close"]
    out = subprocess.run(command + [f"http://127.0.0.1:{port}/"], capture_output=True,
                         text=True, timeout=duration + 30).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line[9:])
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    data["error_count"] = sum(data["errors"].values())
    if pids and data["requests"]:
        after = cpu_ticks(pids)
        spent = {pid: after[pid] - before[pid] for pid in after if pid in before}
        per = 1e6 / CLK_TCK / data["requests"]
        data["cpu_us"] = sum(spent.values()) * per
        data["top_cpu_us"] = spent.get(pids[0], 0) * per
    return data


@contextlib.contextmanager
def serving(command, connections):
    """``(port, pids)`` of a server started by ``command`` (``{port}`` filled
    in), answering and warmed up (a 1 s wrk run: every worker up); its whole
    process group is stopped afterwards."""
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in command]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    try:
        wait_ready(proc, port)
        wrk(port, 1, connections, close=False)
        yield port, process_tree(proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass


def measure(command, args):
    with serving(command, args.connections) as (port, pids):
        return {mode: wrk(port, args.duration, args.connections, close=(mode == "close"),
                          pids=pids)
                for mode in ("close", "keepalive")}


def run_alternately(rows, repeat, measure_one):
    """``(app, label) -> [measure_one(command), ...]`` for ``rows`` of ``(app,
    label, command)``, the rows taking turns ``repeat`` times; a row that
    failed once is ``"failed: ..."`` instead, and is not tried again."""
    runs = {}
    for rep in range(repeat):
        for app, label, command in rows:
            print(f"{app:9} {label} (run {rep + 1}/{repeat}) ...", file=sys.stderr, flush=True)
            if isinstance(runs.get((app, label)), str):
                continue
            try:
                runs.setdefault((app, label), []).append(measure_one(command))
            except (RuntimeError, OSError, subprocess.SubprocessError, StopIteration) as exc:
                runs[(app, label)] = f"failed: {exc}"
    return runs


def _median(measured):
    """The run with the median req/s, per mode, of repeated ``measure`` results."""
    return {mode: sorted((run[mode] for run in measured), key=lambda d: d["rps"])[
                len(measured) // 2]
            for mode in ("close", "keepalive")}


def render(results, args, costs=None):
    lines = [f"Served by {args.workers} workers on loopback; wrk -t1 -c{args.connections} "
             f"-d{args.duration}s; medians of {args.repeat} alternating run(s); "
             "ratios to fastfork rr for the same app.", "",
             "| app | server | new connection per request, req/s | keep-alive, req/s "
             "| CPU µs/request, new connection (primary or master) "
             "| CPU µs/request, keep-alive | errors |",
             "|---|---|---|---|---|---|---|"]
    for app in APPS:
        reference = results.get((app, "fastfork rr"))
        for (row_app, label), data in results.items():
            if row_app != app:
                continue
            cells = []
            for mode in ("close", "keepalive"):
                if isinstance(data, str):
                    cells.append("failed")
                    continue
                rps = data[mode]["rps"]
                ref = None if not isinstance(reference, dict) else reference[mode]["rps"]
                cells.append(f"{rps:,.0f} ({rps / ref:.2f}x)" if ref else f"{rps:,.0f}")
            errors = data if isinstance(data, str) else \
                sum(data[m]["error_count"] for m in ("close", "keepalive"))
            cpu = "" if isinstance(data, str) or "cpu_us" not in data["close"] else \
                f"{data['close']['cpu_us']:.0f} ({data['close']['top_cpu_us']:.0f})"
            cpu_kept = "" if isinstance(data, str) or "cpu_us" not in data["keepalive"] else \
                f"{data['keepalive']['cpu_us']:.0f}"
            lines.append(f"| {app} | {label} | {cells[0]} | {cells[1]} | {cpu} | {cpu_kept} "
                         f"| {errors} |")
    if costs:
        lines += ["", "The apps alone, called in a loop in one process without I/O "
                  "(`--cost APP`; the fastest of 5 rounds), CPU µs/request: "
                  + ", ".join(f"{app} {cost:.0f}" for app, cost in costs.items()) + "."]
    return "\n".join(lines) + "\n"


def _load(target):
    module, _, name = target.partition(":")
    return getattr(__import__(module, fromlist=[name]), name)


def app_cost(app):
    """``--cost APP``: the CPU µs one call of the app takes, with no server around
    it: a WSGI call with a minimal environ and its iterable read and closed, or an
    ASGI call awaited on an event loop with a no-op send."""
    import asyncio
    import io
    target, kind = APPS[app]
    application = _load(target)
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "wsgi.input_terminated": True, "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "wrk"}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": "/", "raw_path": b"/",
             "root_path": "", "query_string": b"", "headers": [(b"host", b"127.0.0.1:8000")],
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "state": {}}

    def start_response(status, headers, exc_info=None):
        return None

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        return None

    def call_wsgi(calls):
        for _ in range(calls):
            iterable = application(dict(environ, **{"wsgi.input": io.BytesIO()}),
                                   start_response)
            for _part in iterable:
                pass
            close = getattr(iterable, "close", None)
            if close is not None:
                close()

    async def call_asgi(calls):
        for _ in range(calls):
            await application(dict(scope), receive, send)

    def run(calls):
        if kind == "wsgi":
            call_wsgi(calls)
        else:
            asyncio.run(call_asgi(calls))

    run(2000)
    rounds = []
    for _ in range(COST_ROUNDS):
        started = time.process_time()
        run(COST_CALLS)
        rounds.append((time.process_time() - started) / COST_CALLS * 1e6)
    return min(rounds)        # the noise of a shared machine only ever adds


def measure_cost(app):
    """``app_cost`` in a process of its own (each app's imports and settings apart)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--cost", app], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr else "failed")
    return float(out.stdout.strip())


def serve_fastfork(args):
    """``--serve POLICY``: the fastfork row itself (a primary and its workers)."""
    import fastfork
    import fastfork.web
    app = _load(APPS[args.app][0])

    def worker():
        fastfork.web.serve(app, f"127.0.0.1:{args.port}", access_log=False,
                           log_level="warning", threads=args.threads, http=args.http)

    # TCP_DEFER_ACCEPT as `fastfork run` sets it by default (the library's
    # Cluster leaves it off, for protocols in which the server speaks first).
    options = {"defer_accept": True}
    if args.window is not None:
        options["window"] = args.window
    if args.stall_ms is not None:
        options["stall_ms"] = args.stall_ms
    if args.primary_sched is not None:
        options["primary_sched"] = args.primary_sched
    return fastfork.Cluster(worker, args.workers, policy=args.serve, **options).run()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=10, help="WSGI threads per worker")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the rows alternately this many times; medians (default 1)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only rows whose 'app server' contains TEXT (repeatable)")
    parser.add_argument("--window", type=int, default=None,
                        help="fastfork's credit window (default: fastfork's own)")
    parser.add_argument("--serve", choices=("rr", "none", "reuseport"), help=argparse.SUPPRESS)
    parser.add_argument("--app", default="starlette", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--http", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--stall-ms", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--primary-sched", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cost", choices=tuple(APPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_fastfork(args)
    if args.cost:
        print(f"{app_cost(args.cost):.2f}")
        return 0
    if not shutil.which("wrk"):
        sys.exit("web_compare: wrk is not installed (apt-get install wrk)")
    rows = [row for row in configurations(args)
            if not args.only or any(text in f"{row[0]} {row[1]}" for text in args.only)]
    runs = run_alternately(rows, args.repeat, lambda command: measure(command, args))
    results = {key: data if isinstance(data, str) else _median(data)
               for key, data in runs.items()}
    costs = {}
    for app in dict.fromkeys(app for app, _, _ in rows):
        try:
            costs[app] = measure_cost(app)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"{app}: its own cost was not measured: {exc}", file=sys.stderr)
    table = render(results, args, costs)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "web_compare.md"), "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
