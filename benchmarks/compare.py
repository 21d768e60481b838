"""fastfork against the alternatives, end to end, on this machine.

    python -m benchmarks.compare                  # the documented run (< 5 min on 2 cores)
    python benchmarks/compare.py --duration 0.5 --repeat 1 --client builtin   # a smoke run

Every configuration serves the same tiny HTTP app (``benchmarks/app.py``;
``benchmarks/node_cluster.js`` for Node) with ``--workers`` workers on
loopback, under three workloads driven by ``wrk`` (or the built-in client):

* ``close``: a new connection per request (``Connection: close``);
* ``keepalive``: ``--connections`` persistent connections;
* ``stall``: like ``close``, while one worker's event loop blocks for
  ``--stall`` seconds in the middle of the run (a ``GET /stall`` request sent
  by this script); the share of requests that waited longer than half the
  stall (1 s by default) says how many users one stuck worker hurts.

Configurations run alternately (all of them, then all again, ``--repeat``
times) and the tables show medians, each figure with its ratio to the
``reuseport`` row.  The primary's CPU per connection comes from
``/proc/<primary>/stat`` (utime, stime) over the load run, divided by the
connections the workers counted in that run.  Then the dispatcher alone is
measured (``benchmarks/dispatch_sweep.py``).

Writes ``results.md`` and ``results.json`` to ``--out`` and prints the Markdown.
"""

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import loadgen
from benchmarks.loadgen import free_port, http_get

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APP = os.path.join(HERE, "app.py")
NODE_APP = os.path.join(HERE, "node_cluster.js")
WRK_SCRIPT = os.path.join(HERE, "wrk_report.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 30.0
STATS_TIMEOUT = 15.0


class Row:
    def __init__(self, key, label, kind, policy=None, impl=None):
        self.key, self.label, self.kind, self.policy, self.impl = key, label, kind, policy, impl


ROWS = (
    Row("fastfork-rr-c", "fastfork rr (Cython)", "fastfork", "rr", "c"),
    Row("fastfork-rr-py", "fastfork rr (pure Python)", "fastfork", "rr", "py"),
    Row("fastfork-none", "fastfork none", "fastfork", "none", "auto"),
    Row("fastfork-reuseport", "fastfork reuseport", "fastfork", "reuseport", "auto"),
    Row("single", "single process", "single"),
    Row("node-rr", "Node cluster rr", "node", "rr"),
    Row("node-none", "Node cluster none", "node", "none"),
)
ROW_KEYS = tuple(row.key for row in ROWS)
WORKLOADS = ("close", "keepalive", "stall")
REFERENCE = "fastfork-reuseport"
SWEEP_WINDOWS = "1,8,64"


# -- the servers ------------------------------------------------------------------

class Server:
    """One configuration's server, started in its own session and killed whole."""

    def __init__(self, row, workers, workdir):
        self.row = row
        self.port = free_port()
        self.stats_dir = tempfile.mkdtemp(prefix=f"{row.key}-", dir=workdir)
        self.expected = 1 if row.kind == "single" else workers
        env = dict(os.environ)
        env.pop("FASTFORK_CHANNELS", None)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        if row.kind == "node":
            cmd = ["node", NODE_APP]
            env.update(NODE_CLUSTER_SCHED_POLICY=row.policy, BENCH_PORT=str(self.port),
                       BENCH_WORKERS=str(workers), BENCH_STATS_DIR=self.stats_dir)
        else:
            cmd = [sys.executable, APP, "--server", row.kind, "--port", str(self.port),
                   "--stats-dir", self.stats_dir]
            if row.kind == "fastfork":
                cmd += ["--policy", row.policy, "--impl", row.impl, "--workers", str(workers)]
                if row.impl == "py":
                    env["FASTFORK_NO_EXTENSIONS"] = "1"
                elif row.impl == "c":
                    # A silent fallback would measure the twin under the C label.
                    env["PYTHONWARNINGS"] = "error::RuntimeWarning"
        self.log_path = os.path.join(workdir, f"{row.key}-{self.port}.log")
        self._log = open(self.log_path, "w+")
        # stdin: a pipe that closes if this script dies, which stops the Node
        # primary (the Python app uses PR_SET_PDEATHSIG instead).
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.PIPE, start_new_session=True)
        self.pid = self.proc.pid

    def log_tail(self, lines=15):
        self._log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.row.label} exited with code {self.proc.returncode}:\n"
                               f"{self.log_tail()}")

    def wait_ready(self):
        """Every worker published its stats (it listens) and a request is answered."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self._check_alive()
            if len(self.read_stats()) >= self.expected:
                try:
                    if http_get(self.port, timeout=2.0).startswith(b"HTTP/1.1 200"):
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.row.label} not ready within {READY_TIMEOUT}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.02)

    def read_stats(self):
        stats = {}
        for name in os.listdir(self.stats_dir):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(self.stats_dir, name)) as f:
                        entry = json.load(f)
                except (OSError, ValueError):
                    continue
                stats[entry["pid"]] = entry
        return stats

    def snapshot(self, after):
        """Per-worker ``{pid: (conns, reqs)}`` as published at or after wall time ``after``."""
        deadline = time.monotonic() + STATS_TIMEOUT
        while True:
            self._check_alive()
            stats = self.read_stats()
            if len(stats) >= self.expected and all(s["t"] >= after for s in stats.values()):
                return {pid: (s["conns"], s["reqs"]) for pid, s in stats.items()}
            if time.monotonic() > deadline:
                stale = sorted(pid for pid, s in stats.items() if s["t"] < after)
                raise RuntimeError(f"{self.row.label}: workers {stale} stopped publishing "
                                   f"stats ({len(stats)} of {self.expected} present)")
            time.sleep(0.02)

    def primary_cpu(self):
        """``(user, system)`` CPU seconds of the primary process so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

    def stop(self):
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        finally:
            self.proc.stdin.close()
            self._log.close()


# -- the load generators --------------------------------------------------------------

class WrkClient:
    name = "wrk"

    def __init__(self, connections, threads, timeout):
        self.connections, self.threads, self.timeout = connections, threads, timeout
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        self.version = (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0].strip()

    def describe(self):
        return (f"{self.version}, -t{self.threads} -c{self.connections}; durations are "
                "rounded up to whole seconds (wrk's unit)")

    def run(self, port, mode, duration, slow_s):
        seconds = max(1, math.ceil(duration))
        cmd = ["wrk", f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds}s",
               f"--timeout={self.timeout}s", "-s", WRK_SCRIPT]
        if mode == "close":
            cmd += ["-H", "Connection: close"]
        cmd.append(f"http://127.0.0.1:{port}/")
        env = dict(os.environ, WRK_SLOW_US=str(int(slow_s * 1e6)))
        out = subprocess.run(cmd, capture_output=True, text=True, env=env,
                             timeout=seconds + self.timeout + 30)
        for line in out.stdout.splitlines():
            if line.startswith("WRK_JSON "):
                data = json.loads(line[len("WRK_JSON "):])
                break
        else:
            raise RuntimeError(f"wrk printed no result (exit {out.returncode}):\n"
                               f"{out.stdout}{out.stderr}")
        errors = data["errors"]
        return {"requests": data["requests"], "duration_s": data["duration_us"] / 1e6,
                "errors": sum(errors.values()), "error_detail": errors,
                "p50_ms": data["p50_us"] / 1e3, "p99_ms": data["p99_us"] / 1e3,
                "slow_share": data["slow_share"]}


def _collect(procs, timeout, slow_s):
    """Wait for loadgen processes and merge their JSON into one result."""
    results = loadgen.gather(procs, timeout)
    latencies = sorted(x for r in results for x in r["latencies_us"])
    requests = len(latencies)
    errors = sum(r["errors"] for r in results)
    bad = sum(r["bad_status"] for r in results)

    def pct(p):
        return latencies[min(requests - 1, int(p / 100 * requests))] / 1e3 if requests else None

    slow = sum(1 for x in latencies if x > slow_s * 1e6)
    sent = sum(r.get("sent", 0) for r in results)
    return {"requests": requests, "duration_s": max(r["duration_s"] for r in results),
            "errors": errors + bad, "error_detail": {"socket": errors, "status": bad},
            "p50_ms": pct(50), "p99_ms": pct(99),
            "max_ms": latencies[-1] / 1e3 if latencies else None,
            # Open loop: failed requests count as hurt too.
            "slow_share": (slow + errors + bad) / sent if sent else
                          (slow / requests if requests else 0.0)}


class BuiltinClient:
    name = "builtin"

    def __init__(self, connections, procs):
        self.connections, self.procs = connections, procs

    def describe(self):
        return (f"built-in asyncio client (benchmarks/loadgen.py), {self.procs} processes, "
                f"{self.connections} connections in all")

    def run(self, port, mode, duration, slow_s):
        procs = [loadgen.spawn(port, mode, duration, connections=n)
                 for n in loadgen.split(self.connections, self.procs) if n]
        return _collect(procs, duration + 60, slow_s)


class OpenLoopClient:
    """The stall test's client: requests due at a fixed rate (see loadgen.py)."""

    name = "open-loop"

    def __init__(self, rate, timeout):
        self.rate, self.timeout = rate, timeout

    def describe(self):
        return (f"built-in open-loop client (benchmarks/loadgen.py --mode open), "
                f"{self.rate:g} new connections/s, latency from each request's due time")

    def run(self, port, mode, duration, slow_s):
        proc = loadgen.spawn(port, "open", duration, rate=self.rate, timeout=self.timeout)
        return _collect([proc], duration + self.timeout + 60, slow_s)


# -- one run ------------------------------------------------------------------------------

class Staller(threading.Thread):
    """After ``delay`` s, block the loop of whichever worker takes one request."""

    def __init__(self, port, delay, seconds):
        super().__init__(daemon=True)
        self.port, self.delay, self.seconds = port, delay, seconds
        self.cancelled = threading.Event()
        self.result = None

    def run(self):
        if self.cancelled.wait(self.delay):
            return
        start = time.monotonic()
        try:
            ok = http_get(self.port, f"/stall?s={self.seconds}",
                          timeout=self.seconds + 30).startswith(b"HTTP/1.1 200")
            self.result = {"ok": ok, "latency_s": time.monotonic() - start}
        except OSError as exc:
            self.result = {"ok": False, "error": str(exc)}


def run_workload(server, client, workload, args):
    """Drive one workload against a ready server; returns its metrics."""
    mode = "keepalive" if workload == "keepalive" else "close"
    duration = args.stall_duration if workload == "stall" else args.duration
    slow_s = args.stall / 2
    before = server.snapshot(after=time.time())
    staller = None
    if workload == "stall":
        # Block a worker a quarter into the run, so the run sees before, during and after.
        staller = Staller(server.port, duration / 4, args.stall)
        staller.start()
    cpu0, wall0 = server.primary_cpu(), time.monotonic()
    try:
        if workload == "stall":
            load = args.stall_client.run(server.port, mode, duration, slow_s)
        else:
            load = client.run(server.port, mode, duration, slow_s)
    finally:
        if staller is not None:
            staller.cancelled.set()
    cpu1, wall1 = server.primary_cpu(), time.monotonic()
    ended = time.time()
    if staller is not None:
        staller.join(args.stall + 30)
        if not (staller.result and staller.result["ok"]):
            raise RuntimeError(f"the stall request failed: {staller.result}")
    after = server.snapshot(after=ended)
    conns = {pid: after[pid][0] - before.get(pid, (0, 0))[0] for pid in after}
    reqs = {pid: after[pid][1] - before.get(pid, (0, 0))[1] for pid in after}
    total_conns = sum(conns.values())
    metrics = dict(load)
    metrics["rps"] = load["requests"] / load["duration_s"] if load["duration_s"] else 0.0
    metrics["connections"] = total_conns
    metrics["per_worker_conns"] = sorted(conns.values())
    metrics["per_worker_reqs"] = sorted(reqs.values())
    if workload == "stall":
        metrics["stall_request_s"] = staller.result["latency_s"]
    if len(conns) > 1:
        low, high = min(conns.values()), max(conns.values())
        metrics["fairness"] = high / low if low else math.inf
    if server.row.kind != "single":
        user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        metrics["primary_cpu_pct"] = 100.0 * (user + system) / (wall1 - wall0)
        if total_conns:
            metrics["primary_user_us_per_conn"] = user * 1e6 / total_conns
            metrics["primary_sys_us_per_conn"] = system * 1e6 / total_conns
    return metrics


# -- the whole comparison ---------------------------------------------------------------------

def cython_available():
    from fastfork.handoff import backend
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            backend.load(pure=False)
        except RuntimeWarning as exc:
            return str(exc)
    return None


def median_metrics(runs):
    """Median of every numeric metric over the repeats."""
    keys = {k for run in runs for k, v in run.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out = {}
    for key in sorted(keys):
        values = [run[key] for run in runs if isinstance(run.get(key), (int, float))]
        if values:
            out[key] = statistics.median(values)
    return out


def run_sweep(args):
    """Each (implementation, window) point ``--repeat`` times, alternating; medians."""
    impls = ["py"] if args.skipped.get("fastfork-rr-c") else ["c", "py"]
    points = [(impl, window) for impl in impls for window in args.sweep_windows]
    samples = {point: [] for point in points}
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for _ in range(args.repeat):
        for impl, window in points:
            cmd = [sys.executable, os.path.join(HERE, "dispatch_sweep.py"), "--impl", impl,
                   "--window", str(window), "--workers", str(args.workers),
                   "--duration", str(args.sweep_duration)]
            point_env = dict(env)
            if impl == "c":
                point_env["PYTHONWARNINGS"] = "error::RuntimeWarning"
            out = subprocess.run(cmd, capture_output=True, text=True, env=point_env,
                                 timeout=args.sweep_duration + 60)
            if out.returncode != 0:
                raise RuntimeError(f"dispatch_sweep failed: {out.stderr.strip()}")
            samples[(impl, window)].append(json.loads(out.stdout))
    results = []
    for impl, window in points:
        runs = samples[(impl, window)]
        point = dict(runs[0], **median_metrics(runs))
        point["runs"] = runs
        results.append(point)
        log(f"  sweep {impl} window {window}: {point.get('us_per_conn', 0):.1f} µs/conn")
    return results


def log(message):
    print(message, file=sys.stderr, flush=True)


def machine_info(client, stall_client):
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from fastfork.cpus import usable_cpus
    node = None
    if shutil.which("node"):
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"usable_cores": usable_cpus(), "cpu_count": os.cpu_count(), "cpu_model": model,
            "kernel": platform.release(), "python": platform.python_version(),
            "node": node, "client": client.name, "client_detail": client.describe(),
            "stall_client_detail": stall_client.describe()}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="fastfork against the alternatives, end to end (see the module docstring).")
    from fastfork.cpus import usable_cpus
    parser.add_argument("--workers", type=int, default=usable_cpus(),
                        help="workers per configuration (default: usable cores)")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds per close/keepalive run (default 2)")
    parser.add_argument("--stall", type=float, default=2.0,
                        help="seconds one worker's loop blocks in the stall test (default 2)")
    parser.add_argument("--stall-duration", type=float, default=None,
                        help="seconds of the stall run (default: 1.5 x stall)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="alternating repetitions; tables show medians (default 3)")
    parser.add_argument("--connections", type=int, default=32,
                        help="concurrent connections of the close/keepalive load (default 32)")
    parser.add_argument("--stall-rate", type=float, default=1000.0,
                        help="new connections/s of the stall test's open-loop client "
                             "(default 1000; keep it below every configuration's capacity)")
    parser.add_argument("--client", choices=("auto", "wrk", "builtin"), default="auto",
                        help="load generator: wrk if installed (auto), or the built-in one")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--client-procs", type=int, default=2,
                        help="built-in client processes (default 2)")
    parser.add_argument("--rows", default=",".join(ROW_KEYS),
                        help="comma-separated subset of: " + ", ".join(ROW_KEYS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated subset of: " + ", ".join(WORKLOADS))
    parser.add_argument("--sweep-duration", type=float, default=1.0,
                        help="seconds per dispatcher-sweep point; 0 skips the sweep")
    parser.add_argument("--sweep-windows", default=SWEEP_WINDOWS,
                        help=f"credit windows the sweep tries (default {SWEEP_WINDOWS})")
    parser.add_argument("--out", default=os.path.join(HERE, "results"),
                        help="directory for results.md and results.json")
    args = parser.parse_args(argv)

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for name in rows:
        if name not in ROW_KEYS:
            parser.error(f"--rows: unknown row {name!r}; rows are {', '.join(ROW_KEYS)}")
    for name in workloads:
        if name not in WORKLOADS:
            parser.error(f"--workloads: unknown workload {name!r}; workloads are "
                         f"{', '.join(WORKLOADS)}")
    if args.workers < 1 or args.repeat < 1 or args.connections < 1:
        parser.error("--workers, --repeat and --connections must be >= 1")
    if args.duration <= 0 or args.stall <= 0 or args.sweep_duration < 0:
        parser.error("--duration and --stall must be > 0, --sweep-duration >= 0")
    try:
        args.sweep_windows = [int(w) for w in args.sweep_windows.split(",") if w.strip()]
    except ValueError:
        parser.error("--sweep-windows must be comma-separated integers, "
                     f"got {args.sweep_windows!r}")
    if not args.sweep_windows or min(args.sweep_windows) < 1:
        parser.error("--sweep-windows: give one or more windows, each >= 1")
    if args.stall_duration is None:
        args.stall_duration = 1.5 * args.stall
    if args.stall_duration < args.stall * 4 / 3:
        parser.error(f"--stall-duration {args.stall_duration:g} is too short for a "
                     f"{args.stall:g}s stall that starts a quarter into the run")
    if args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not on the PATH")
    if args.client == "builtin" or not shutil.which("wrk"):
        client = BuiltinClient(args.connections, max(1, min(args.client_procs, args.connections)))
    else:
        if args.threads > args.connections:
            parser.error("--threads must not exceed --connections")
        client = WrkClient(args.connections, args.threads, timeout=max(10, int(args.stall * 3)))

    if args.stall_rate <= 0:
        parser.error("--stall-rate must be > 0")
    args.stall_client = OpenLoopClient(args.stall_rate, timeout=max(10.0, args.stall * 3))

    # SIGTERM (a CI timeout, a test's cleanup) must still kill every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    args.skipped = {}
    if "fastfork-rr-c" in rows:
        reason = cython_available()
        if reason:
            args.skipped["fastfork-rr-c"] = (f"Cython extension not built ({reason}); build it "
                                             "with `pip install -e . --no-build-isolation`")
    if not shutil.which("node"):
        for key in ("node-rr", "node-none"):
            if key in rows:
                args.skipped[key] = "node is not on the PATH"

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    command = "python -m benchmarks.compare" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    info = machine_info(client, args.stall_client)
    log(f"{len(rows)} configurations x {len(workloads)} workloads x {args.repeat} repeats, "
        f"{args.workers} workers, client: {client.describe()}")
    runs = {key: {w: [] for w in workloads} for key in rows}
    errors = {}
    with tempfile.TemporaryDirectory(prefix="fastfork-bench-") as workdir:
        for repeat in range(args.repeat):
            for row in ROWS:
                if row.key not in rows or row.key in args.skipped:
                    continue
                log(f"[{repeat + 1}/{args.repeat}] {row.label}")
                server = Server(row, args.workers, workdir)
                try:
                    server.wait_ready()
                    for workload in workloads:
                        metrics = run_workload(server, client, workload, args)
                        runs[row.key][workload].append(metrics)
                        log(f"    {workload:<9} {metrics['rps']:>9.0f} req/s  "
                            f"p99 {metrics['p99_ms'] or 0:.1f} ms  errors {metrics['errors']}")
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    errors.setdefault(row.key, []).append(f"repeat {repeat + 1}: {exc}")
                    log(f"    FAILED: {exc}")
                finally:
                    server.stop()
        sweep = run_sweep(args) if args.sweep_duration > 0 else []

    elapsed = time.monotonic() - started
    # Other processes on the machine move the figures; say how busy it was.
    info["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    results = {
        "command": command, "machine": info, "elapsed_s": elapsed,
        "settings": {"workers": args.workers, "duration_s": args.duration,
                     "stall_s": args.stall, "stall_duration_s": args.stall_duration,
                     "slow_threshold_s": args.stall / 2, "repeat": args.repeat,
                     "connections": args.connections, "stall_rate": args.stall_rate},
        "reference": REFERENCE, "workloads": workloads,
        "rows": [], "sweep": sweep,
    }
    for row in ROWS:
        if row.key not in rows:
            continue
        entry = {"key": row.key, "label": row.label}
        if row.key in args.skipped:
            entry["skipped"] = args.skipped[row.key]
        if row.key in errors:
            entry["errors"] = errors[row.key]
        entry["workloads"] = {w: {"median": median_metrics(runs[row.key][w]),
                                  "runs": runs[row.key][w]} for w in workloads}
        results["rows"].append(entry)

    markdown = render_markdown(results)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(_json_safe(results), f, indent=1, allow_nan=False)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown)
    print(markdown)
    log(f"wrote {args.out}/results.md and results.json in {elapsed:.0f}s")
    return 1 if errors else 0


def _json_safe(value):
    """Strict JSON: an infinite ratio (a worker that got no connection) becomes "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# -- the report ---------------------------------------------------------------------------

def _fmt(value, digits=0):
    if value is None:
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _with_ratio(value, reference, digits=0):
    text = _fmt(value, digits)
    if value is None or reference in (None, 0) or math.isinf(value) or math.isinf(reference):
        return text
    return f"{text} ({value / reference:.2f}×)"


def _spread(rows):
    """Run-to-run spread of req/s, (max - min) / median, over rows and workloads."""
    spreads = []
    for row in rows:
        for workload, data in row.get("workloads", {}).items():
            values = [run["rps"] for run in data["runs"]]
            if len(values) > 1 and statistics.median(values):
                spreads.append(((max(values) - min(values)) / statistics.median(values),
                                row["label"], workload))
    return spreads


def render_markdown(results):
    info = results["machine"]
    settings = results["settings"]
    lines = [
        "# fastfork benchmark results",
        "",
        f"Machine: {info['usable_cores']} usable cores ({info['cpu_model'] or 'unknown CPU'}), "
        f"Linux {info['kernel']}, Python {info['python']}, Node {info['node'] or 'not installed'}.",
        f"Load: {info['client_detail']}; the stall test: {info['stall_client_detail']}.",
        f"{settings['workers']} workers per configuration; close/keep-alive runs of "
        f"{settings['duration_s']:g} s, stall runs of {settings['stall_duration_s']:g} s with "
        f"a {settings['stall_s']:g} s stall from a quarter in; medians of "
        f"{settings['repeat']} alternating repeats; (ratio) to the `{results['reference']}` row.",
        f"Command: `{results['command']}` ({results['elapsed_s']:.0f} s); 1-minute load "
        f"average {info['loadavg_1min'][0]:g} before, {info['loadavg_1min'][1]:g} after "
        "(the benchmark itself adds about 2).",
    ]
    spreads = _spread(results["rows"])
    if spreads:
        worst = max(spreads)
        lines.append(f"Run-to-run spread of req/s, (max - min) / median over the repeats: "
                     f"median {statistics.median(s for s, _, _ in spreads) * 100:.0f}%, "
                     f"worst {worst[0] * 100:.0f}% ({worst[1]}, {worst[2]}).")
    lines.append("")
    rows = results["rows"]
    ref = next((r for r in rows if r["key"] == results["reference"]), None)
    titles = {"close": "New connection per request (`Connection: close`)",
              "keepalive": "Keep-alive",
              "stall": f"Stall: one worker's loop blocked {settings['stall_s']:g} s mid-run, "
                       f"{settings['stall_rate']:g} new connections/s arriving (open loop)"}
    slow = settings["slow_threshold_s"]
    for workload in results["workloads"]:
        stall = workload == "stall"
        per_conn = workload != "keepalive"
        head = ["configuration"]
        head += ["requests", "errors", "p50 ms", "p99 ms", "max ms", f"waited > {slow:g} s"] \
            if stall else ["req/s", "p50 ms", "p99 ms", "errors"]
        if per_conn:
            head += ["primary user µs/conn", "primary sys µs/conn"]
        head += ["primary CPU %", "fairness (max/min conns)"]
        lines += [f"## {titles[workload]}", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        ref_m = ref["workloads"][workload]["median"] if ref else {}
        for row in rows:
            if "skipped" in row:
                lines.append(f"| {row['label']} | skipped: {row['skipped']} |")
                continue
            m = row["workloads"][workload]["median"]
            if not m:
                lines.append(f"| {row['label']} | failed: see results.json |")
                continue
            cells = [row["label"]]
            if stall:
                share, ref_share = m.get("slow_share"), ref_m.get("slow_share")
                cells += [_fmt(m.get("requests")), _fmt(m.get("errors")),
                          _with_ratio(m.get("p50_ms"), ref_m.get("p50_ms"), 2),
                          _with_ratio(m.get("p99_ms"), ref_m.get("p99_ms"), 1),
                          _with_ratio(m.get("max_ms"), ref_m.get("max_ms"), 0),
                          "—" if share is None else f"{share * 100:.2f}%" + (
                              f" ({share / ref_share:.2f}×)" if ref_share else "")]
            else:
                cells += [_with_ratio(m.get("rps"), ref_m.get("rps")),
                          _with_ratio(m.get("p50_ms"), ref_m.get("p50_ms"), 2),
                          _with_ratio(m.get("p99_ms"), ref_m.get("p99_ms"), 1),
                          _fmt(m.get("errors"))]
            if per_conn:
                cells += [_fmt(m.get("primary_user_us_per_conn"), 1),
                          _fmt(m.get("primary_sys_us_per_conn"), 1)]
            cells += [_fmt(m.get("primary_cpu_pct"), 1),
                      _with_ratio(m.get("fairness"), ref_m.get("fairness"), 2)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if results["sweep"]:
        lines += ["## The dispatcher alone (`benchmarks/dispatch_sweep.py`)", "",
                  "A bare `Dispatcher` (no Cluster loop, no HTTP) fed by one "
                  "connect-and-reset client process, passing to sink workers that hold each "
                  "connection briefly and close it. The primary's CPU per dispatched "
                  "connection (getrusage) at the load the client reached, and the rate one "
                  "core could sustain at that cost (1e6 / µs per connection). Where the "
                  "primary is far from 100% busy, its batches are small and the cost per "
                  "connection is an upper bound.", "",
                  "| dispatcher | window | conns/s achieved | primary CPU % | user µs/conn | "
                  "sys µs/conn | conns/s per primary core |",
                  "|---|---|---|---|---|---|---|"]
        for point in results["sweep"]:
            lines.append(
                f"| {point['implementation']} | {point['window']} | "
                f"{_fmt(point['conns_per_s'])} | {_fmt(point['primary_cpu_pct'], 1)} | "
                f"{_fmt(point.get('user_us_per_conn'), 2)} | "
                f"{_fmt(point.get('sys_us_per_conn'), 2)} | "
                f"{_fmt(point.get('conns_per_core_s'))} |")
        lines.append("")
    failed = [r for r in rows if r.get("errors")]
    if failed:
        lines += ["## Failures", ""]
        for row in failed:
            lines += [f"- {row['label']}: {e}" for e in row["errors"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
