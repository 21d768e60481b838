"""The cluster the fault and load tests attack (tests/test_faults.py).

Run as ``python fault_app.py [options]``.  Like cluster_app.py, the primary
prints one ``EVENT {json}`` line per lifecycle event; with ``--log`` it also
prints its log as ``LOG <ms since start> <level> <message>`` lines so a
test can count them.

Each connection reads one line and answers it:

    whoami                  -> "<worker id> <pid> <index>"
    state                   -> asks the primary to print EVENT state (its size
                               and every worker it knows), answers "sent"
    garbage CHANNEL KIND S  -> answers "ok <pid>", then writes garbage of KIND
                               on its control or data channel and blocks its
                               event loop for S seconds (so that nothing else
                               reaches this worker's code until it is replaced)
    anything else           -> echoed back

A connection that never sends a full line waits; one whose client shuts down
its side gets the partial line echoed back.
"""

import argparse
import array
import json
import logging
import os
import resource
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import fastfork
from fastfork.handoff import control, wire
from fastfork.worker.runtime import runtime

parser = argparse.ArgumentParser()
parser.add_argument("--workers", default="2")
parser.add_argument("--form", choices=("function", "node"), default="function")
parser.add_argument("--window", type=int, default=8)
parser.add_argument("--stall-ms", type=int, default=None,
                    help="the primary's stall detection (default: fastfork's; 0: off)")
parser.add_argument("--min-uptime", type=float, default=1.0)
parser.add_argument("--max-restarts", type=int, default=10)
parser.add_argument("--graceful-timeout", type=float, default=10.0)
parser.add_argument("--nofile", type=int, default=0,
                    help="the primary's soft RLIMIT_NOFILE (workers get theirs back)")
parser.add_argument("--worker-nofile", type=int, default=0,
                    help="the workers' soft RLIMIT_NOFILE")
parser.add_argument("--metrics", default=None,
                    help="serve /metrics and /readyz there (EVENT endpoint says where)")
parser.add_argument("--log", action="store_true", help="print the primary's log on stdout")
args = parser.parse_args()

ADDRESS = "127.0.0.1:0"


def emit(event, **fields):
    fields["event"] = event
    # One write for the whole line: with PYTHONUNBUFFERED print() writes the
    # text and its newline apart, and a worker's log line can land between.
    sys.stdout.write("EVENT " + json.dumps(fields) + "\n")
    sys.stdout.flush()


# -- garbage a misbehaving worker writes --------------------------------------------
def _fds(count):
    # Descriptors worth nothing to the primary: fresh pipe ends.
    fds = []
    for _ in range((count + 1) // 2):
        fds.extend(os.pipe())
    return fds[:count]


_BIG = b'{"t":"msg","data":"' + b"x" * (control.MAX_MESSAGE + 16) + b'"}'

# kind -> (payload, number of fds sent with it)
CONTROL_GARBAGE = {
    "invalid-json": (b"{not json", 0),
    "not-object": (b"[1, 2, 3]", 0),
    "no-type": (b'{"x": 1}', 0),
    "unknown-type": (b'{"t": "launch"}', 0),
    "not-utf8": (b'\xff\xfe{"t": "online"}', 0),
    "truncated": (b'{"t": "heartbeat"', 0),
    "oversized": (_BIG, 0),
    "deep-nesting": (b"[" * 100000 + b"]" * 100000, 0),
    "huge-int": (b'{"t": "msg", "data": ' + b"7" * 5000 + b"}", 0),
    "bad-backlog": (b'{"t": "listen", "id": 99, "address": "127.0.0.1:0", "backlog": Infinity}', 0),
    # Counts no metric can hold (a float overflows: every scrape failed) or
    # that are no count at all.
    "heartbeat-overflow": (b'{"t": "heartbeat", "open": 1' + b"0" * 400 + b"}", 0),
    "heartbeat-negative": (b'{"t": "heartbeat", "requests": -5}', 0),
    "heartbeat-lag-nan": (b'{"t": "heartbeat", "lag": [0,0,0,0,0,0,0,0,0,0,0,0,0], '
                          b'"lag_sum": NaN}', 0),
    "too-many-fds": (b'{"t": "heartbeat"}', control.MAX_FDS + 3),
    "empty": (b"", 0),
    # Well-formed, but a worker has no reason to send descriptors: the primary
    # closes them and keeps the worker.
    "fds-on-valid": (b'{"t": "heartbeat"}', 2),
}
DATA_GARBAGE = {
    "short": (b"\x03", 0),
    "long": (wire.HEADER.pack(wire.MSG_ACK, 1) * 8, 0),
    "bad-type": (wire.HEADER.pack(wire.MSG_FDS, 1), 0),
    "over-ack": (wire.HEADER.pack(wire.MSG_ACK, 500), 0),
    "empty": (b"", 0),
    # A well-formed ACK of nothing, with descriptors the primary never asked for.
    "ack-with-fds": (wire.HEADER.pack(wire.MSG_ACK, 0), 3),
}


def write_garbage(channel, kind):
    payload, nfds = (CONTROL_GARBAGE if channel == "control" else DATA_GARBAGE)[kind]
    rt = runtime()
    fd = rt.control.fileno() if channel == "control" else rt.receiver.fileno()
    # A dup, so that this works whatever object owns the channel (the Cython
    # Receiver has no Python socket to borrow).  Its blocking mode is left
    # alone: a dup shares it with the channel, which must stay non-blocking.
    sock = socket.socket(fileno=os.dup(fd))
    fds = _fds(nfds)
    try:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sock.sendmsg([payload], anc)
    finally:
        sock.close()
        for extra in fds:
            os.close(extra)


# -- the worker ------------------------------------------------------------------------
async def handle(reader, writer):
    line = (await reader.readline()).decode(errors="replace").strip()
    cmd, _, arg = line.partition(" ")
    after = None
    if cmd == "whoami":
        reply = f"{fastfork.worker_id} {os.getpid()} {fastfork.worker_index}"
    elif cmd == "state":
        fastfork.send({"state": True})
        reply = "sent"
    elif cmd == "garbage":
        channel, kind, block = arg.split()
        after = (channel, kind, float(block))
        reply = f"ok {os.getpid()}"
    else:
        reply = line
    writer.write((reply + "\n").encode())
    try:
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()
    if after is not None:
        channel, kind, block = after
        write_garbage(channel, kind)
        time.sleep(block)       # deliberately blocks the event loop: no more acks


def worker_main():
    if args.nofile or args.worker_nofile:
        # --nofile is the primary's alone; the worker takes its own back, or
        # the one --worker-nofile gives it.
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.worker_nofile or hard, hard))
    fastfork.serve(handle, ADDRESS)


# -- the primary -----------------------------------------------------------------------
def primary_main():
    if args.log:
        logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                            format="LOG %(relativeCreated)d %(levelname)s %(message)s")
    if args.nofile:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, hard))
    cluster = fastfork.Cluster(worker_main if args.form == "function" else None, args.workers,
                               window=args.window, min_uptime=args.min_uptime,
                               max_restarts=args.max_restarts,
                               graceful_timeout=args.graceful_timeout,
                               metrics=args.metrics,
                               **({} if args.stall_ms is None else {"stall_ms": args.stall_ms}))
    emit("primary", pid=os.getpid(), implementation=cluster.implementation, size=cluster.size)
    if args.metrics:
        emit("endpoint", address=cluster.open_endpoints()[0])
    cluster.on("fork", lambda w: emit("fork", id=w.id, index=w.index, pid=w.pid))
    cluster.on("listening", lambda w, a: emit("listening", id=w.id, index=w.index, pid=w.pid,
                                               address=a))
    cluster.on("disconnect", lambda w: emit("disconnect", id=w.id, pid=w.pid))
    cluster.on("exit", lambda w, code, sig: emit("exit", id=w.id, index=w.index, pid=w.pid,
                                                  code=code, signal=sig))

    def on_message(worker, data):
        if isinstance(data, dict) and data.get("state"):
            emit("state", size=cluster.size,
                 workers=[{"id": w.id, "index": w.index, "pid": w.pid, "state": w.state,
                           "stopping": w.stop_requested}
                          for w in cluster.workers.values()])

    cluster.on("message", on_message)
    code = cluster.run()
    emit("done", code=code)
    return code


if __name__ == "__main__":
    if fastfork.is_worker:
        worker_main()
    else:
        sys.exit(primary_main())
