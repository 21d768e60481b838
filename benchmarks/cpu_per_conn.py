"""CPU per connection of the primary and of the workers, next to a C floor (issue 11).

    python benchmarks/cpu_per_conn.py                      # the documented run (~2.5 min)
    python benchmarks/cpu_per_conn.py --seconds 10 --repeat 3 --json cpu.json
    python benchmarks/cpu_per_conn.py --rows floor,asyncio-rr --modes close --strace

One run, one row after another, every row serving the same bare protocol
app on 127.0.0.1 with ``--workers`` workers:

* ``floor``: ``benchmarks/floor.c``, compiled here with ``gcc -O2`` into a temporary
  directory: a C primary making only the syscalls fastfork's primary must
  make (epoll_wait, accept4 until EAGAIN, one sendmsg with SCM_RIGHTS per
  worker per batch, close) and C workers answering the same bytes;
* ``asyncio-rr``, ``asyncio-none``, ``asyncio-reuseport`` and the same under
  ``uvloop``: ``benchmarks/bare_app.py`` (a raw ``asyncio.Protocol``, no HTTP
  library) in a fastfork cluster with that policy, its workers on that loop.

Each row is loaded by ``wrk -t1 -c32`` twice: ``close`` (a new connection per
request, ``-H 'Connection: close'``) and ``keepalive`` (plain wrk).  After a
warm-up run, the primary's and every worker's ``utime``/``stime`` are read
from ``/proc/<pid>/stat`` just before and just after the measured wrk run
and divided by the requests wrk completed: under ``close`` that is CPU per
connection.  Under ``none`` and ``reuseport`` the primary accepts nothing;
its CPU is reported all the same.  Then the ratios issue 11 sets targets
for.  ``--strace`` adds, for the ``rr`` rows and the floor, a separate run with
``strace -c -f -p <primary>`` attached: the primary's syscalls per connection
(strace slows it, so that run is not the one measured for CPU).

Prints Markdown; ``--json`` also writes every figure.  Needs ``wrk``; the floor
row is skipped (with the reason) without ``gcc``, the uvloop rows without uvloop.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.loadgen import free_port, http_get

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BARE_APP = os.path.join(HERE, "bare_app.py")
FLOOR_SRC = os.path.join(ROOT, "benchmarks", "floor.c")
WRK_SCRIPT = os.path.join(HERE, "wrk_report.lua")
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
MODES = ("close", "keepalive")
LOOPS = ("asyncio", "uvloop")
POLICIES = ("rr", "none", "reuseport")
# Issue 11's targets.
TARGET_PRIMARY_USER_US = 1.0
TARGET_PRIMARY_VS_FLOOR = 1.10
TARGET_RR_WORKER_EXTRA_US = 3.0
TARGET_RR_VS_NONE_RPS = 0.97


class Row:
    def __init__(self, key, label, kind, loop, policy):
        self.key, self.label, self.kind, self.loop, self.policy = key, label, kind, loop, policy


ROWS = (Row("floor", "C floor", "floor", "C (epoll)", "rr"),) + tuple(
    Row(f"{loop}-{policy}", f"fastfork {policy} ({loop})", "fastfork", loop, policy)
    for loop in LOOPS for policy in POLICIES)
ROW_KEYS = tuple(row.key for row in ROWS)


def log(message):
    print(message, file=sys.stderr, flush=True)


# -- processes and their CPU -------------------------------------------------------

def proc_stat(pid):
    """``(state, ppid, utime_ticks, stime_ticks, starttime)`` of ``pid``, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1]), int(fields[11]), int(fields[12]), int(fields[19])


def alive(pid, starttime):
    """Whether the process ``pid`` started at ``starttime`` still exists (zombies count)."""
    stat = proc_stat(pid)
    return stat is not None and stat[4] == starttime


def compile_floor(workdir):
    """Build benchmarks/floor.c; returns ``(path, None)`` or ``(None, why not)``."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "gcc is not on the PATH"
    path = os.path.join(workdir, "floor")
    out = subprocess.run([gcc, "-O2", "-o", path, FLOOR_SRC], capture_output=True, text=True)
    if out.returncode != 0:
        return None, f"gcc -O2 benchmarks/floor.c failed: {out.stderr.strip()[-500:]}"
    return path, None


class Server:
    """One row's server, in its own session: a primary and its workers, all known by pid."""

    def __init__(self, row, workers, workdir, floor_path=None, batch=64):
        self.row = row
        self.port = free_port()
        self.expected = workers
        self.pid_dir = tempfile.mkdtemp(prefix=f"{row.key}-pids-", dir=workdir)
        self.log_path = os.path.join(workdir, f"{row.key}-{self.port}.log")
        self._log = open(self.log_path, "w+")
        env = dict(os.environ)
        env.pop("FASTFORK_CHANNELS", None)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        if row.kind == "floor":
            cmd = [floor_path, str(self.port), str(workers), str(batch)]
        else:
            cmd = [sys.executable, BARE_APP, "--port", str(self.port), "--workers",
                   str(workers), "--policy", row.policy, "--loop", row.loop,
                   "--pid-dir", self.pid_dir]
            # A silent fallback to the pure-Python dispatcher would be measured as Cython.
            env["PYTHONWARNINGS"] = "error::RuntimeWarning"
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        self.workers = []          # worker pids
        self.starttimes = {}       # pid -> starttime, to tell a reused pid apart
        self.info = {}

    def log_tail(self, lines=15):
        self._log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-lines:])

    def _check_alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.row.label} exited with code {self.proc.returncode}:\n"
                               f"{self.log_tail()}")

    def _first_line(self):
        with open(self.log_path) as f:
            for line in f:
                if line.startswith("{") and line.rstrip().endswith("}"):
                    try:
                        return json.loads(line)
                    except ValueError:
                        return None
        return None

    def _worker_pids(self):
        if self.row.kind == "floor":
            return list(self.info.get("workers", []))
        pids = []
        for name in os.listdir(self.pid_dir):
            if name.isdigit():
                with open(os.path.join(self.pid_dir, name)) as f:
                    loop_class = f.read()
                if ("uvloop" in loop_class) != (self.row.loop == "uvloop"):
                    raise RuntimeError(f"{self.row.label}: worker {name} runs {loop_class}")
                pids.append(int(name))
        return sorted(pids)

    def wait_ready(self):
        """The primary said who it is, every worker serves, and a request is answered."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self._check_alive()
            if not self.info:
                self.info = self._first_line() or {}
                if self.info and self.info.get("primary") != self.pid:
                    raise RuntimeError(f"{self.row.label}: unexpected first line {self.info}")
                impl = self.info.get("implementation")
                if impl not in (None, "cython"):
                    raise RuntimeError(f"{self.row.label}: dispatcher is {impl}, not cython")
            workers = self._worker_pids() if self.info else []
            if len(workers) >= self.expected:
                try:
                    if http_get(self.port).startswith(b"HTTP/1.1 200"):
                        break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.row.label} not ready within {READY_TIMEOUT:g}s "
                                   f"({len(workers)} of {self.expected} workers):\n"
                                   f"{self.log_tail()}")
            time.sleep(0.02)
        self.workers = workers
        for pid in [self.pid] + workers:
            stat = proc_stat(pid)
            if stat is None:
                raise RuntimeError(f"{self.row.label}: process {pid} is gone")
            if pid != self.pid and stat[1] != self.pid:
                raise RuntimeError(f"{self.row.label}: worker {pid} is not the primary's child")
            self.starttimes[pid] = stat[4]

    def cpu(self):
        """``{pid: (utime, stime)}`` in clock ticks, the primary's first."""
        out = {}
        for pid in [self.pid] + self.workers:
            stat = proc_stat(pid)
            if stat is None or stat[4] != self.starttimes[pid] or stat[0] == "Z":
                raise RuntimeError(f"{self.row.label}: process {pid} died during the run:\n"
                                   f"{self.log_tail()}")
            out[pid] = (stat[2], stat[3])
        return out

    def pids(self):
        return dict(self.starttimes)

    def stop(self):
        """SIGTERM to the primary (it stops and reaps its workers); SIGKILL the session
        if it has not exited within STOP_TIMEOUT."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log(f"    {self.row.label}: no exit {STOP_TIMEOUT:g}s after SIGTERM; "
                        "killing its session")
                    os.killpg(self.pid, signal.SIGKILL)     # the primary still holds the group
                    self.proc.wait(STOP_TIMEOUT)
            workers = {p: t for p, t in self.starttimes.items() if p != self.pid}
            if any(alive(p, t) for p, t in workers.items()):
                try:
                    os.killpg(self.pid, signal.SIGKILL)     # stragglers of the session
                except (ProcessLookupError, PermissionError):
                    pass
        finally:
            self._log.close()
        # The workers were the primary's children: wait until they are gone too.
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(alive(pid, t) for pid, t in self.starttimes.items()):
            if time.monotonic() > deadline:
                left = sorted(p for p, t in self.starttimes.items() if alive(p, t))
                raise RuntimeError(f"{self.row.label}: processes {left} outlived the stop")
            time.sleep(0.01)


# -- load -----------------------------------------------------------------------------------

def wrk_version():
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).splitlines()[0].split(" Copyright")[0].strip()


def run_wrk(port, mode, seconds, connections, threads):
    """One wrk run; returns its report (requests, duration, errors, latency)."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout=5s",
           "-s", WRK_SCRIPT]
    if mode == "close":
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON "):])
            break
    else:
        raise RuntimeError(f"wrk printed no result (exit {out.returncode}):\n"
                           f"{out.stdout}{out.stderr}")
    return {"requests": data["requests"], "duration_s": data["duration_us"] / 1e6,
            "errors": sum(data["errors"].values()), "error_detail": data["errors"],
            "p50_ms": data["p50_us"] / 1e3, "p99_ms": data["p99_us"] / 1e3}


def measure(server, mode, args):
    """Warm up, then one measured wrk run; CPU per request of the primary and workers."""
    if args.warmup > 0:
        run_wrk(server.port, mode, args.warmup, args.connections, args.threads)
    before, t0 = server.cpu(), time.monotonic()
    load = run_wrk(server.port, mode, args.seconds, args.connections, args.threads)
    after, t1 = server.cpu(), time.monotonic()
    requests = load["requests"]
    if requests <= 0:
        raise RuntimeError(f"{server.row.label} {mode}: wrk completed no request")
    us = 1e6 / CLK_TCK / requests              # microseconds per tick per request

    def delta(pid, i):
        return after[pid][i] - before[pid][i]

    p_user, p_sys = delta(server.pid, 0), delta(server.pid, 1)
    w_user = sum(delta(pid, 0) for pid in server.workers)
    w_sys = sum(delta(pid, 1) for pid in server.workers)
    metrics = dict(load)
    metrics.update({
        "rps": requests / load["duration_s"],
        "primary_user_us": p_user * us, "primary_sys_us": p_sys * us,
        "primary_us": (p_user + p_sys) * us,
        "workers_user_us": w_user * us, "workers_sys_us": w_sys * us,
        "workers_us": (w_user + w_sys) * us,
        "total_us": (p_user + p_sys + w_user + w_sys) * us,
        "primary_cpu_pct": 100.0 * (p_user + p_sys) / CLK_TCK / (t1 - t0),
        "workers_cpu_pct": 100.0 * (w_user + w_sys) / CLK_TCK / (t1 - t0),
        "tick_us": us,
        "per_worker_us": sorted((delta(pid, 0) + delta(pid, 1)) * us
                                for pid in server.workers),
    })
    return metrics


STRACE_LINE = re.compile(r"^\s*\d+\.\d+\s+\d+\.\d+\s+\d+\s+(\d+)\s+(?:(\d+)\s+)?(\w+)\s*$")


def strace_run(server, args):
    """``strace -c -f -p <primary>`` over one close run: ``{syscall: calls per request}``."""
    out_path = server.log_path + ".strace"
    proc = subprocess.Popen(["strace", "-c", "-f", "-o", out_path, "-p", str(server.pid)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        line = proc.stderr.readline()         # "strace: Process N attached..."
        if "attached" not in line:
            raise RuntimeError(f"strace did not attach: {line.strip()}")
        load = run_wrk(server.port, "close", args.seconds, args.connections, args.threads)
    finally:
        proc.send_signal(signal.SIGINT)       # strace detaches and writes its summary
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    calls = {}
    with open(out_path) as f:
        for text in f:
            match = STRACE_LINE.match(text)
            if match and match.group(3) != "total":
                calls[match.group(3)] = int(match.group(1))
    requests = max(1, load["requests"])
    return {"requests": load["requests"], "rps": load["requests"] / load["duration_s"],
            "per_request": {name: n / requests for name, n in
                            sorted(calls.items(), key=lambda item: -item[1])}}


# -- the run -----------------------------------------------------------------------------------

def median_metrics(runs):
    keys = {k for run in runs for k, v in run.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: statistics.median(run[k] for run in runs if k in run) for k in sorted(keys)}


def machine_info():
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import uvloop
        uvloop_version = uvloop.__version__
    except ImportError:
        uvloop_version = None
    gcc = None
    if shutil.which("gcc"):
        gcc = subprocess.run(["gcc", "--version"], capture_output=True,
                             text=True).stdout.splitlines()[0]
    return {"usable_cores": len(os.sched_getaffinity(0)), "cpu_model": model,
            "kernel": platform.release(), "python": platform.python_version(),
            "uvloop": uvloop_version, "gcc": gcc, "wrk": wrk_version(), "clk_tck": CLK_TCK}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="measured wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unmeasured wrk run before each measured one (default 1; 0: none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument("--batch", type=int, default=64,
                        help="the C floor's most accepts per wake-up (default 64)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run all rows this many times, alternating; medians (default 1)")
    parser.add_argument("--rows", default=",".join(ROW_KEYS),
                        help=f"comma-separated subset of {','.join(ROW_KEYS)}")
    parser.add_argument("--modes", default=",".join(MODES), help="close,keepalive or one")
    parser.add_argument("--strace", action="store_true",
                        help="also count the primary's syscalls per connection (rr rows, floor)")
    parser.add_argument("--json", metavar="PATH", help="write every figure here too")
    args = parser.parse_args(argv)
    args.row_keys = [k for k in args.rows.split(",") if k]
    for key in args.row_keys:
        if key not in ROW_KEYS:
            parser.error(f"unknown row {key!r} (rows: {', '.join(ROW_KEYS)})")
    args.mode_list = [m for m in args.modes.split(",") if m]
    for mode in args.mode_list:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r} (modes: {', '.join(MODES)})")
    if args.seconds < 1 or args.warmup < 0 or args.workers < 1 or args.connections < 1 \
            or args.threads < 1 or args.repeat < 1 or not 1 <= args.batch <= 253:
        parser.error("--seconds, --workers, --connections, --threads, --repeat must be >= 1, "
                     "--warmup >= 0, --batch 1..253")
    if not args.row_keys or not args.mode_list:
        parser.error("no rows or no modes to run")
    return args


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt          # unwinds through every finally: servers are stopped


def run(args, command):
    """Every row and mode; returns the results dict (also the pids, to check cleanup)."""
    if shutil.which("wrk") is None:
        raise SystemExit("cpu_per_conn: wrk is not installed (apt-get install wrk)")
    started = time.monotonic()
    info = machine_info()
    load_before = os.getloadavg()[0]
    rows = [row for row in ROWS if row.key in args.row_keys]
    skipped = {}
    runs = {row.key: {mode: [] for mode in args.mode_list} for row in rows}
    straces = {}
    errors = {}
    all_pids = {}
    with tempfile.TemporaryDirectory(prefix="fastfork-cpu-") as workdir:
        floor_path = None
        if any(row.kind == "floor" for row in rows):
            floor_path, why = compile_floor(workdir)
            if why:
                skipped["floor"] = why
        if info["uvloop"] is None:
            for row in rows:
                if row.loop == "uvloop":
                    skipped[row.key] = "uvloop is not installed (pip install uvloop)"
        for repeat in range(args.repeat):
            for row in rows:
                if row.key in skipped:
                    continue
                log(f"[{repeat + 1}/{args.repeat}] {row.label}")
                server = Server(row, args.workers, workdir, floor_path, args.batch)
                try:
                    server.wait_ready()
                    for mode in args.mode_list:
                        m = measure(server, mode, args)
                        runs[row.key][mode].append(m)
                        log(f"    {mode:<9} {m['rps']:>8.0f} req/s  primary "
                            f"{m['primary_user_us']:.1f}+{m['primary_sys_us']:.1f} µs  "
                            f"workers {m['workers_us']:.1f} µs  errors {m['errors']}")
                    if args.strace and row.policy == "rr" and repeat == 0:
                        straces[row.key] = strace_run(server, args)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    errors.setdefault(row.key, []).append(f"repeat {repeat + 1}: {exc}")
                    log(f"    FAILED: {exc}")
                finally:
                    all_pids.update(server.pids())
                    try:
                        server.stop()
                    except RuntimeError as exc:
                        errors.setdefault(row.key, []).append(str(exc))
    info["loadavg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    results = {
        "command": command, "machine": info, "elapsed_s": time.monotonic() - started,
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "workers": args.workers,
                     "connections": args.connections, "threads": args.threads,
                     "batch": args.batch, "repeat": args.repeat},
        "modes": args.mode_list, "rows": [],
        # Every process this run started, {pid: starttime}: all gone once it returns.
        "pids": {str(pid): start for pid, start in sorted(all_pids.items())},
    }
    for row in rows:
        entry = {"key": row.key, "label": row.label, "kind": row.kind, "loop": row.loop,
                 "policy": row.policy}
        if row.key in skipped:
            entry["skipped"] = skipped[row.key]
        if row.key in errors:
            entry["errors"] = errors[row.key]
        entry["modes"] = {mode: {"median": median_metrics(runs[row.key][mode]) if
                                 runs[row.key][mode] else {}, "runs": runs[row.key][mode]}
                          for mode in args.mode_list}
        if row.key in straces:
            entry["strace"] = straces[row.key]
        results["rows"].append(entry)
    results["ratios"] = ratios(results)
    return results


# -- the report -------------------------------------------------------------------------------

def _median(results, key, mode):
    for row in results["rows"]:
        if row["key"] == key and "skipped" not in row:
            return row["modes"].get(mode, {}).get("median") or None
    return None


def ratios(results):
    """The figures issue 11 sets targets for, per loop: ``[{name, loop, value, target, met}]``."""
    out = []
    floor = _median(results, "floor", "close")
    if floor:
        out.append({"name": "C floor: primary user / total µs/conn, workers µs/conn",
                    "loop": "C", "value": None, "target": "(reference)", "met": None,
                    "text": f"{floor['primary_user_us']:.2f} / {floor['primary_us']:.2f}, "
                            f"{floor['workers_us']:.1f}"})
    for loop in LOOPS:
        rr_c = _median(results, f"{loop}-rr", "close")
        none_c = _median(results, f"{loop}-none", "close")
        rr_k = _median(results, f"{loop}-rr", "keepalive")
        none_k = _median(results, f"{loop}-none", "keepalive")
        if rr_c:
            out.append({"name": "primary user µs/conn (rr)", "loop": loop,
                        "value": rr_c["primary_user_us"], "target": f"≤ {TARGET_PRIMARY_USER_US}",
                        "met": rr_c["primary_user_us"] <= TARGET_PRIMARY_USER_US})
        if rr_c and floor and floor["primary_us"]:
            value = rr_c["primary_us"] / floor["primary_us"]
            out.append({"name": "primary total CPU/conn, rr ÷ C floor", "loop": loop,
                        "value": value, "target": f"≤ {TARGET_PRIMARY_VS_FLOOR}×",
                        "met": value <= TARGET_PRIMARY_VS_FLOOR, "unit": "×"})
        if rr_c and none_c:
            value = rr_c["workers_us"] - none_c["workers_us"]
            out.append({"name": "workers µs/conn, rr − none", "loop": loop, "value": value,
                        "target": f"≤ {TARGET_RR_WORKER_EXTRA_US}",
                        "met": value <= TARGET_RR_WORKER_EXTRA_US})
            value = rr_c["rps"] / none_c["rps"]
            out.append({"name": "close req/s, rr ÷ none", "loop": loop, "value": value,
                        "target": f"≥ {TARGET_RR_VS_NONE_RPS}×",
                        "met": value >= TARGET_RR_VS_NONE_RPS, "unit": "×"})
        if rr_k and none_k:
            value = rr_k["rps"] / none_k["rps"]
            out.append({"name": "keep-alive req/s, rr ÷ none (equal)", "loop": loop,
                        "value": value, "target": f"≥ {TARGET_RR_VS_NONE_RPS}×",
                        "met": value >= TARGET_RR_VS_NONE_RPS, "unit": "×"})
    return out


def _f(value, digits=1):
    return "—" if value is None else f"{value:,.{digits}f}"


def render_markdown(results):
    info, s = results["machine"], results["settings"]
    lines = [
        "# CPU per connection: the primary, the workers, the C floor",
        "",
        f"Machine: {info['usable_cores']} usable cores ({info['cpu_model'] or 'unknown CPU'}), "
        f"Linux {info['kernel']}, Python {info['python']}, uvloop {info['uvloop'] or 'absent'}, "
        f"{info['wrk']}, {info['gcc'] or 'no gcc'}.",
        f"{s['workers']} workers; wrk -t{s['threads']} -c{s['connections']}, "
        f"{s['seconds']} s measured after {s['warmup']} s of warm-up; "
        + (f"medians of {s['repeat']} alternating repeats; " if s["repeat"] > 1 else "")
        + f"CPU from /proc/<pid>/stat (clock tick {1000 / info['clk_tck']:g} ms) "
        "divided by the requests wrk completed.",
        f"Command: `{results['command']}` ({results['elapsed_s']:.0f} s); 1-minute load "
        f"average {info['loadavg_1min'][0]:g} before, {info['loadavg_1min'][1]:g} after.",
        "",
    ]
    titles = {"close": "New connection per request (`Connection: close`): µs per connection",
              "keepalive": "Keep-alive: µs per request"}
    head = ["row", "loop", "policy", "req/s", "errors", "primary user µs", "primary sys µs",
            "primary µs", "workers µs (user+sys)", "total µs", "primary CPU %"]
    for mode in results["modes"]:
        lines += [f"## {titles[mode]}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for row in results["rows"]:
            if "skipped" in row:
                lines.append(f"| {row['label']} | skipped: {row['skipped']} |")
                continue
            m = row["modes"][mode]["median"]
            if not m:
                errors = "; ".join(row.get("errors", []))[:200]
                lines.append(f"| {row['label']} | failed: {errors} |")
                continue
            lines.append("| " + " | ".join([
                row["label"], row["loop"], row["policy"], _f(m["rps"], 0), _f(m["errors"], 0),
                _f(m["primary_user_us"], 2), _f(m["primary_sys_us"], 2), _f(m["primary_us"], 2),
                _f(m["workers_us"]), _f(m["total_us"]), _f(m["primary_cpu_pct"])]) + " |")
        ticks = [row["modes"][mode]["median"].get("tick_us") for row in results["rows"]
                 if row["modes"].get(mode, {}).get("median")]
        if ticks:
            lines += ["", f"One clock tick is {min(ticks):.2f}–{max(ticks):.2f} µs per request "
                      "in these runs: finer differences are below the resolution."]
        lines.append("")
    if results["ratios"]:
        lines += ["## Issue 11's targets", "", "| figure | loop | measured | target | met |",
                  "|---|---|---|---|---|"]
        for r in results["ratios"]:
            value = r["text"] if r["value"] is None else f"{r['value']:.2f}" + r.get("unit", "")
            met = "—" if r["met"] is None else "yes" if r["met"] else "no"
            lines.append(f"| {r['name']} | {r['loop']} | {value} | {r['target']} | {met} |")
        lines.append("")
    traced = [row for row in results["rows"] if "strace" in row]
    if traced:
        names = []
        for row in traced:
            for name in row["strace"]["per_request"]:
                if name not in names:
                    names.append(name)
        lines += ["## The primary's syscalls per connection (`strace -c -f`, a separate "
                  "close run)", "",
                  "| syscall | " + " | ".join(row["label"] for row in traced) + " |",
                  "|---|" + "---|" * len(traced)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(
                _f(row["strace"]["per_request"].get(name), 3) for row in traced) + " |")
        lines.append("| *all* | " + " | ".join(
            _f(sum(row["strace"]["per_request"].values()), 3) for row in traced) + " |")
        lines.append("")
    failed = [row for row in results["rows"] if row.get("errors")]
    if failed:
        lines += ["## Failures", ""]
        for row in failed:
            lines += [f"- {row['label']}: {e}" for e in row["errors"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    command = "python benchmarks/cpu_per_conn.py" + (
        " " + " ".join(sys.argv[1:] if argv is None else argv)).rstrip()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        results = run(args, command)
    except KeyboardInterrupt:
        log("interrupted: every server was stopped")
        return 130
    markdown = render_markdown(results)
    print(markdown)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, allow_nan=False)
    failed = any(row.get("errors") for row in results["rows"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
