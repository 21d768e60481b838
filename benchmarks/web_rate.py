"""The servers of web_compare under a fixed rate of new connections: CPU per connection.

    python benchmarks/web_rate.py                                 # 4,000 a second
    python benchmarks/web_rate.py --rate 8000 --repeat 5 --only starlette

``web_compare`` loads each server as hard as it goes, and its CPU per request
then mixes the server's own cost with how much work each wake-up of its loop
finds, which the server's speed decides: a slower row batches more.  Here
every server is offered the same load, below what it can serve, so each is
woken as often and its CPU per connection compares directly; costs paid per
wake-up or per timer (a loop that wakes to say it runs, a pass of the loop
per connection taken) show here and hide at saturation.  h2load (Debian's
``nghttp2-client``) opens ``--rate`` connections a second, in slices every
2 ms, each for one HTTP/1.1 request, for ``--duration`` seconds after a 1 s
warm-up.  The table gives, per connection, the CPU of the server's processes
(utime + stime from ``/proc``; the primary's or master's share in brackets),
the mean time to the response, and the connections that failed.  The rows
are web_compare's, and ``fastfork rr, --stall-ms 0``: round-robin without
stall-aware dispatch (a worker takes everything its channel holds each pass
of its loop, and its loop never ticks to say it runs).  ``--repeat N`` runs
the rows alternately N times and reports the run with the median CPU.
Writes ``benchmarks/results/web_rate.md`` (``--out``).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if __package__ in (None, ""):
    sys.path.insert(0, ROOT)

from benchmarks.cpu_per_conn import CLK_TCK  # noqa: E402
from benchmarks.web_compare import (  # noqa: E402
    APPS, configurations, cpu_ticks, run_alternately, serving)

SLICE_MS = 2                # h2load opens rate * SLICE_MS / 1000 connections per slice
WARM_UP_CONNECTIONS = 32    # web_compare's warm-up: one wrk second with this many


def h2load(port, rate, duration, pids):
    """h2load's count of connections that succeeded and failed, its mean time
    to the response (ms), and the CPU ``pids`` spent per successful one."""
    total = rate * duration
    per_slice = max(1, round(rate * SLICE_MS / 1000))
    before = cpu_ticks(pids)
    out = subprocess.run(
        ["h2load", "--h1", "-n", str(total), "-c", str(total), "-r", str(per_slice),
         f"--rate-period={SLICE_MS}ms", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=duration * 3 + 30).stdout
    after = cpu_ticks(pids)
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    timing = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if counts is None or timing is None:
        raise RuntimeError(f"h2load said: {out.strip()[-300:]}")
    ok = int(counts.group(1))
    failed = sum(int(counts.group(i)) for i in (2, 3, 4))
    spent = {pid: after[pid] - before[pid] for pid in after if pid in before}
    per = 1e6 / CLK_TCK / max(ok, 1)
    return {"ok": ok, "failed": failed, "mean_ms": _ms(timing.group(1)),
            "cpu_us": sum(spent.values()) * per, "top_cpu_us": spent.get(pids[0], 0) * per}


def _ms(text):
    # h2load prints 642us, 1.01ms or 2.3s.
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def rows(args):
    """web_compare's rows, with ``fastfork rr, --stall-ms 0`` after each fastfork rr."""
    out = []
    for app, label, command in configurations(args):
        out.append((app, label, command))
        if label == "fastfork rr":
            out.append((app, "fastfork rr, --stall-ms 0", command + ["--stall-ms", "0"]))
    return [row for row in out
            if not args.only or any(text in f"{row[0]} {row[1]}" for text in args.only)]


def render(results, args):
    lines = [f"Served by {args.workers} workers on loopback; h2load opens {args.rate:,} "
             f"connections a second for {args.duration} s, one request each; the run with "
             f"the median CPU of {args.repeat} alternating run(s).", "",
             "| app | server | CPU µs/connection (primary or master) | ratio to fastfork "
             "none | mean time to response, ms | failed |", "|---|---|---|---|---|---|"]
    for app in APPS:
        reference = results.get((app, "fastfork none"))
        for (row_app, label), data in results.items():
            if row_app != app:
                continue
            if isinstance(data, str):
                lines.append(f"| {app} | {label} | {data} | | | |")
                continue
            ratio = (f"{data['cpu_us'] / reference['cpu_us']:.2f}"
                     if isinstance(reference, dict) and reference["cpu_us"] else "")
            lines.append(f"| {app} | {label} | {data['cpu_us']:.1f} ({data['top_cpu_us']:.1f}) "
                         f"| {ratio} | {data['mean_ms']:.2f} | {data['failed']} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=4000, help="new connections a second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=10, help="WSGI threads per worker")
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only rows whose 'app server' contains TEXT (repeatable)")
    parser.add_argument("--window", type=int, default=None,
                        help="fastfork's credit window (default: fastfork's own)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "web_rate.md"),
                        help="where the table is written (default: %(default)s)")
    args = parser.parse_args()
    for tool, package in (("h2load", "nghttp2-client"), ("wrk", "wrk")):
        if not shutil.which(tool):
            sys.exit(f"web_rate: {tool} is not installed (apt-get install {package})")
    if args.rate < 1000 // SLICE_MS:
        sys.exit(f"web_rate: --rate must be at least {1000 // SLICE_MS} (one connection "
                 f"per {SLICE_MS} ms slice)")
    def measure(command):
        with serving(command, WARM_UP_CONNECTIONS) as (port, pids):
            return h2load(port, args.rate, args.duration, pids)

    runs = run_alternately(rows(args), args.repeat, measure)
    results = {key: data if isinstance(data, str) else
               sorted(data, key=lambda run: run["cpu_us"])[len(data) // 2]
               for key, data in runs.items()}
    table = render(results, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
