"""``python -m fastfork demo [options]``: run the six parts, then say what happened."""

import logging
import os
import sys
import time

import fastfork

from ..settings import DISPATCHED
from . import app
from .lesson import EXIT_DEMO_FAILED, WAIT, Demo
from .options import EXIT_USAGE, UsageError, build_parser, reserve_port
from .output import Output, count as _count, install_fork_hooks

EXIT_OK = fastfork.EXIT_OK


def _no_child_left():
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return True
    return False if pid == 0 else _no_child_left()


def main(argv=None):
    """``python -m fastfork demo [options]``; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:       # --help (0) or a bad value (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    color = (not args.no_color and sys.stdout.isatty()
             and os.environ.get("NO_COLOR", "") == "")
    out = Output(color)
    try:
        probe = reserve_port(args.host, args.port)
    except UsageError as exc:
        out.error(str(exc))
        return EXIT_USAGE
    app.probe = probe
    try:
        return _run(args, out, probe)
    finally:
        app.probe = None
        probe.close()


def _run(args, out, probe):
    started = time.monotonic()
    install_fork_hooks()
    # The demo explains deaths it causes itself; the library's warnings about
    # them would only repeat it.  Errors still reach stderr.
    logger = logging.getLogger("fastfork")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("fastfork: %(message)s"))
        handler.setLevel(logging.ERROR)
        logger.addHandler(handler)

    cores, cpu_count = fastfork.usable_cpus(), os.cpu_count()
    size = args.workers or cores
    port = probe.getsockname()[1]
    host = args.host
    demo = Demo(args, out, size, host, port, probe)
    cluster = fastfork.Cluster(app.worker_main, size, args=((host, port), not args.serve),
                               policy=args.policy, graceful_timeout=args.graceful_timeout)
    demo.attach(cluster)

    out.line(out.heading("fastfork demo") + out.dim(
        f": the cluster model, shown live ({cluster.implementation} dispatcher)"))
    out.line("")
    out.line(out.heading("1. One process = one core"))
    out.line("   A Python process runs its code on one core at a time (the GIL), so a server "
             "uses")
    out.line("   the whole machine only as one process per core.")
    if cpu_count and cpu_count != cores:
        out.line(f"   usable cores: {cores} (os.cpu_count() says {cpu_count}; CPU affinity or a "
                 "cgroup quota allows only these)")
    else:
        out.line(f"   usable cores: {cores}")
    if args.workers is None:
        out.line(f"   so the primary forks {_count(size, 'worker')}, one per core.")
    else:
        out.line(f"   --workers {size}: the primary forks {_count(size, 'worker')}.")
    if args.port == 0:
        out.line(f"   port 0: picked the free port {port}")

    out.line("")
    out.line(out.heading("2. The primary/worker model"))
    out.line(f"   primary    pid {os.getpid()}: forks the workers, owns the port, hands out "
             "connections;")
    out.line("              it serves no request itself.")
    out.line(out.dim("   A worker's id is unique and never reused; its index (0..N-1) is its "
                     "slot, which a"))
    out.line(out.dim("   replacement takes over."))
    code = cluster.run()
    if demo.client is not None and not demo.interrupted:
        demo.client.join(WAIT)      # not when interrupted: it may be waiting for Enter

    left = "no child process is left" if _no_child_left() else "SOME CHILD PROCESSES ARE LEFT"
    out.line(f"   every worker exited and was reaped; {left}.")
    if demo.failure is not None:
        code = demo.failure[0]
    elif not args.serve and not demo.finished:
        out.error("interrupted: the primary stopped before the demo finished")
        code = code or EXIT_DEMO_FAILED
    forked = len(demo.all_workers)
    refork = forked - size
    if args.serve:
        served = ""
        if args.policy in DISPATCHED:
            dispatched = sum(w.dispatched() for w in demo.all_workers)
            served = f", {_count(dispatched, 'connection')} dispatched"
    else:
        served = f", {_count(demo.answered, 'request')} answered"
    out.line("")
    out.line(out.heading("done") + f": {_count(forked, 'worker')} forked ({refork} re-forked)"
             f"{served}; the primary exits {code} after {time.monotonic() - started:.1f}s.")
    return code if code is not None else EXIT_OK
