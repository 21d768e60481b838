"""A small cluster for the tests: a line protocol served by every worker.

Run as ``python cluster_app.py [options]``.  The primary prints one line per
lifecycle event on stdout as ``EVENT {json}`` so a test can wait for exactly
what it needs.  Each connection reads one line and answers it:

    whoami          -> "<worker id> <pid> <index>"
    block S         -> reports {"blocking": id} to the primary, blocks the worker's
                       event loop for S seconds, then answers
    hold            -> reports {"holding": id} to the primary, then keeps the
                       connection open (the loop runs) until the client sends a
                       second line, and answers "<id> released"
    count           -> how many connections this worker served
    send TEXT       -> sends {"text": TEXT} to the primary, answers "sent"
    garbage         -> writes a malformed message on the control channel
    exit CODE       -> the worker exits at once with CODE
    close           -> the worker closes its server (and goes on living), answers
                       "<id> closed"
    anything else   -> echoed back
"""

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import fastfork
from fastfork.worker import runtime

parser = argparse.ArgumentParser()
parser.add_argument("--workers", default="2")
parser.add_argument("--policy", default="rr")
parser.add_argument("--form", choices=("function", "node"), default="function")
parser.add_argument("--address", default="127.0.0.1:0")
parser.add_argument("--window", type=int, default=8)
parser.add_argument("--worker-connections", type=int, default=0)
parser.add_argument("--stall-ms", type=int, default=None, help="default: the Cluster's")
parser.add_argument("--primary-sched", default="other", choices=("batch", "other"))
parser.add_argument("--control-socket", default=None, help="serve `fastfork status` here")
parser.add_argument("--graceful-timeout", type=float, default=10.0)
parser.add_argument("--max-restarts", type=int, default=10)
parser.add_argument("--min-uptime", type=float, default=1.0)
parser.add_argument("--crash-on-start", action="store_true")
parser.add_argument("--blocking", action="store_true",
                    help="serve with Listener.accept() and threads")
parser.add_argument("--sequential", action="store_true",
                    help="with --blocking: answer each connection before the next accept()")
parser.add_argument("--timeout", type=float, default=0.0, help="the primary's hang timeout")
parser.add_argument("--proxy-protocol", action="store_true", help="PROXY headers from 127.0.0.1")
parser.add_argument("--bad-address", default=None,
                    help="also try to listen here and report the error")
args = parser.parse_args()
logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(levelname)s %(message)s")

served = 0
servers = []          # this worker's servers (for "close")


def emit(event, **fields):
    fields["event"] = event
    # One write for the whole line: with PYTHONUNBUFFERED print() writes the
    # text and its newline apart, and a worker's log line can land between.
    sys.stdout.write("EVENT " + json.dumps(fields) + "\n")
    sys.stdout.flush()


async def handle(reader, writer):
    global served
    served += 1
    line = (await reader.readline()).decode().strip()
    cmd, _, arg = line.partition(" ")
    if cmd == "whoami":
        reply = f"{fastfork.worker_id} {os.getpid()} {fastfork.worker_index}"
    elif cmd == "block":
        # Tell the primary (and so the test) first: from here on the loop is stuck.
        fastfork.send({"blocking": fastfork.worker_id})
        time.sleep(float(arg))        # deliberately blocks the event loop
        reply = f"{fastfork.worker_id} unblocked"
    elif cmd == "hold":
        fastfork.send({"holding": fastfork.worker_id})
        await reader.readline()
        reply = f"{fastfork.worker_id} released"
    elif cmd == "count":
        reply = str(served)
    elif cmd == "send":
        fastfork.send({"text": arg})
        reply = "sent"
    elif cmd == "garbage":
        # Bypass the API: a malformed datagram straight onto the control channel.
        runtime.runtime().control.sock.send(b"{not json")
        reply = "garbage sent"
    elif cmd == "exit":
        os._exit(int(arg or 0))
    elif cmd == "close":
        for server in servers:
            server.close()
        reply = f"{fastfork.worker_id} closed"
    else:
        reply = line
    writer.write((reply + "\n").encode())
    await writer.drain()
    writer.close()


def serve_blocking():
    import threading
    listener = fastfork.listen(args.address)

    def one(conn, peer):
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(1024)
                if not chunk:
                    return
                data += chunk
            if data.startswith(b"block "):
                time.sleep(float(data.split()[1]))      # a handler that never comes back
            if data.startswith(b"peer"):
                return conn.sendall(f"{peer[0]} {peer[1]}\n".encode())
            conn.sendall(f"{fastfork.worker_id} {os.getpid()} {fastfork.worker_index}\n".encode())

    while True:
        try:
            conn, peer = listener.accept()
        except fastfork.WorkerStopping:
            return
        if args.sequential:
            one(conn, peer)
        else:
            threading.Thread(target=one, args=(conn, peer), daemon=True).start()


def worker_main():
    if args.crash_on_start:
        sys.exit(3)
    fastfork.on_message(lambda data: fastfork.send({"echo": data}))
    if args.bad_address:
        try:
            fastfork.listen(args.bad_address)
        except OSError as exc:
            fastfork.send({"listen_error": exc.errno, "message": str(exc)})
    if args.blocking:
        try:
            serve_blocking()
        except RuntimeError as exc:
            # fastfork.listen() refused (policy least): say so, then wait to be stopped.
            fastfork.send({"listen_refused": str(exc)})
            runtime.runtime().stopping.wait()
    else:
        fastfork.serve(handle, args.address, on_started=servers.extend)


def _children():
    me = str(os.getpid())
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2:].split()[1] == me:
                kids.append(int(entry))
    return kids


def primary_main():
    fds_before = len(os.listdir("/proc/self/fd"))
    extra = {} if args.stall_ms is None else {"stall_ms": args.stall_ms}
    cluster = fastfork.Cluster(worker_main if args.form == "function" else None, args.workers,
                               policy=args.policy, window=args.window,
                               worker_connections=args.worker_connections,
                               control_socket=args.control_socket,
                               graceful_timeout=args.graceful_timeout,
                               max_restarts=args.max_restarts, min_uptime=args.min_uptime,
                               timeout=args.timeout, proxy_protocol=args.proxy_protocol,
                               primary_sched=args.primary_sched, **extra)
    emit("primary", pid=os.getpid(), implementation=cluster.implementation, size=cluster.size)
    cluster.on("fork", lambda w: emit("fork", id=w.id, index=w.index, pid=w.pid))
    cluster.on("online", lambda w: emit("online", id=w.id, pid=w.pid))
    cluster.on("listening", lambda w, a: emit("listening", id=w.id, index=w.index, pid=w.pid,
                                               address=a))
    cluster.on("disconnect", lambda w: emit("disconnect", id=w.id))

    def on_message(worker, data):
        emit("message", id=worker.id, data=data)
        if isinstance(data, dict) and "text" in data:
            worker.send({"pong": data["text"]})

    cluster.on("message", on_message)
    cluster.on("exit", lambda w, code, sig: emit("exit", id=w.id, index=w.index, pid=w.pid,
                                                  code=code, signal=sig))
    code = cluster.run()
    emit("done", code=code, fds_before=fds_before, fds_after=len(os.listdir("/proc/self/fd")),
         children=_children(), sched=os.sched_getscheduler(0))
    return code


if __name__ == "__main__":
    if fastfork.is_worker:
        worker_main()
    else:
        sys.exit(primary_main())
