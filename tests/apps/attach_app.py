"""A bare asyncio protocol app (no streams), for the tests of how a worker attaches
the connections the primary passes it, on each event loop.

Run as ``python attach_app.py [options]``: a cluster whose primary prints
``EVENT {json}`` lines as ``cluster_app.py`` does.  Or serve ``LineProtocol``
with ``fastfork run attach_app.py:LineProtocol``.  Each connection reads one
line, answers it and closes:

    loop      -> the module of the running loop's class ("asyncio.unix_events", "uvloop")
    open      -> connections this worker counts open (this one included)
    slow S    -> reports {"slow": id} to the primary, answers "slow done" S seconds later
    hold      -> reports {"holding": id}, answers "released" after a second line
    block S   -> reports {"blocking": id}, blocks the event loop S seconds, answers
    anything else -> echoed back
"""

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import fastfork

SERVERS = []          # set in the cluster form: what "open" counts


class LineProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
        self.held = False

    def data_received(self, data):
        self.buffer += data
        if b"\n" not in self.buffer:
            return
        line, _, self.buffer = self.buffer.partition(b"\n")
        if self.held:
            return self.answer("released")
        cmd, _, arg = line.decode().strip().partition(" ")
        if cmd == "loop":
            self.answer(type(asyncio.get_running_loop()).__module__)
        elif cmd == "open":
            self.answer(str(sum(server.connections for server in SERVERS)))
        elif cmd == "slow":
            fastfork.send({"slow": fastfork.worker_id})
            asyncio.get_running_loop().call_later(float(arg), self.answer, "slow done")
        elif cmd == "hold":
            self.held = True
            fastfork.send({"holding": fastfork.worker_id})
        elif cmd == "block":
            fastfork.send({"blocking": fastfork.worker_id})
            time.sleep(float(arg))        # deliberately blocks the event loop
            self.answer("unblocked")
        else:
            self.answer(line.decode())

    def answer(self, text):
        self.transport.write(text.encode() + b"\n")
        self.transport.close()


def emit(event, **fields):
    fields["event"] = event
    # One write for the whole line: with PYTHONUNBUFFERED print() writes the
    # text and its newline apart, and a worker's log line can land between.
    sys.stdout.write("EVENT " + json.dumps(fields) + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="1")
    parser.add_argument("--policy", default="rr")
    parser.add_argument("--loop", default="auto")
    parser.add_argument("--control-socket", default=None)
    args = parser.parse_args()

    def worker():
        fastfork.serve(LineProtocol, "127.0.0.1:0", protocol=True, loop=args.loop,
                       on_started=SERVERS.extend)

    cluster = fastfork.Cluster(worker, args.workers, policy=args.policy,
                               control_socket=args.control_socket, graceful_timeout=10.0)
    cluster.on("listening", lambda w, a: emit("listening", id=w.id, pid=w.pid, address=a))
    cluster.on("message", lambda w, data: emit("message", id=w.id, data=data))
    cluster.on("exit", lambda w, code, sig: emit("exit", id=w.id, code=code, signal=sig))
    code = cluster.run()
    emit("done", code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
