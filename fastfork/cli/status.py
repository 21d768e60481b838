"""``python -m fastfork status``: the workers of running primaries, like ``pm2 ls``.

Asks each primary over its status socket (see ``fastfork.operations.status_socket``):
by default every ``*.sock`` in the control directory, or the one named, or
the one at ``--socket PATH``.  ``--json`` prints the answers as they came.
"""

import argparse
import glob
import json
import os
import sys

from ..operations.status_socket import StatusError, default_dir, default_path, request

COLUMNS = ("id", "index", "pid", "uptime", "restarts", "dispatched", "requests", "open",
           "queued", "rss",
           "state")


def build_parser():
    return argparse.ArgumentParser(
        prog="python -m fastfork status",
        description="Show the workers of running fastfork primaries: per worker its id, "
                    "index, pid, uptime, restarts, connections dispatched, open and queued "
                    "(sent by the primary, not yet taken), RSS and "
                    "state, and the totals. Control sockets are looked for in "
                    "$FASTFORK_RUN_DIR if set, else /run/fastfork for root, else "
                    "$XDG_RUNTIME_DIR/fastfork, else /tmp/fastfork-UID, unless --socket is "
                    "given.")


def duration(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def size(nbytes):
    if nbytes is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def cell(column, value):
    if value is None:
        return "-"
    if column == "uptime":
        return duration(value)
    if column == "rss":
        return size(value)
    return str(value)


def table(answer):
    """The status of one primary as text lines."""
    p = answer["primary"]
    lines = [f"{p['name']}: primary pid {p['pid']}, up {duration(p['uptime'])}, "
             f"{p['size']} workers, policy {p['policy']} ({p['implementation']} dispatcher), "
             f"on {', '.join(p['addresses']) or '-'}"]
    if p.get("replacing"):
        r = p["replacing"]
        lines[0] += f"; replacing worker {r['old']} by {r['new']} ({r['reason']})"
    if p.get("sched") == "batch":     # --primary-sched: it yields to busy workers
        lines[0] += "; primary as SCHED_BATCH"
    if p.get("stopping"):
        lines[0] += "; stopping"
    if p.get("degraded"):         # .get: an older primary does not say
        loops = "".join(f", index {c['index']} crashed {c['quick_deaths']} times in a row"
                        for c in p.get("crash_loops", ()))
        lines[0] += f"; degraded: {p['degraded']} not serving{loops}"
    # .get: a primary of an older fastfork sends no "queued".
    rows = [COLUMNS] + [tuple(cell(c, w.get(c)) for c in COLUMNS) for w in answer["workers"]]
    t = answer["totals"]
    requests = [w["requests"] for w in answer["workers"] if w.get("requests") is not None]
    rows.append(("total", "", "", "", str(t["restarts"]), str(t["dispatched"]),
                 str(sum(requests)) if requests else "-", str(t["open"]),
                 str(t.get("queued", "-")), size(t["rss"]), f"{t['workers']} workers"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        lines.append("  ".join(value.ljust(w) if i in (0, len(COLUMNS) - 1) else value.rjust(w)
                               for i, (value, w) in enumerate(zip(row, widths))).rstrip())
    return lines


def main(argv=None):
    try:
        return _main(argv)
    except BrokenPipeError:
        # `fastfork status | head`: the reader has what it wanted; point stdout
        # at /dev/null so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv):
    parser = build_parser()
    parser.add_argument("name", nargs="?", help="the app's --name (default: every running one)")
    parser.add_argument("--socket", metavar="PATH", help="the control socket of one primary")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.socket:
        paths = [args.socket]
    elif args.name:
        # --name's socket, or those of the apps that took their module's name
        # (NAME@ADDRESS.sock: one per address, see fastfork run).
        paths = sorted(glob.glob(glob.escape(default_path(args.name))[:-len(".sock")]
                                 + "@*.sock")) or [default_path(args.name)]
        if os.path.exists(default_path(args.name)) and default_path(args.name) not in paths:
            paths.insert(0, default_path(args.name))
    else:
        paths = sorted(glob.glob(os.path.join(default_dir(), "*.sock")))
        if not paths:
            print(f"fastfork status: no running primary (no control socket in {default_dir()})",
                  file=sys.stderr)
            return 1
    answers, failed = [], False
    for path in paths:
        try:
            answers.append(request(path, "status"))
        except StatusError as exc:
            print(f"fastfork status: {exc}", file=sys.stderr)
            failed = True
    if args.json:
        if answers:
            # One primary asked for: its answer; all of them: a list.
            single = args.socket or (args.name and len(paths) == 1)
            print(json.dumps(answers[0] if single else answers, indent=2))
    else:
        for i, answer in enumerate(answers):
            if i:
                print()
            print("\n".join(table(answer)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
