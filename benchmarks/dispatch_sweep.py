"""The dispatcher alone: how much primary CPU one connection costs, so how many
connections per second one primary core can dispatch.

    python benchmarks/dispatch_sweep.py --impl c --window 8 --duration 1

No HTTP and no Cluster around it: this process runs a bare ``Dispatcher``
(accept, pick, ``sendmsg`` with SCM_RIGHTS, close its copy, take credit
back) over one listening socket, set up as the arbiter sets it up (each
worker's end of the channel kept open here, a credit page where the build
has one); ``--workers`` forked sink processes receive each batch with
``Receiver.receive()`` (which gives the credit back) and close the fds a
little later;
``--clients`` forked processes connect as fast as they can and reset each
connection at once (SO_LINGER 0, so no TIME_WAIT exhausts the ports).  The
primary's user and system CPU over the measured window (``getrusage``),
divided by the connections it dispatched in that window, is the cost per
connection; ``1e6 / cost`` is the rate one core could sustain if the
primary did nothing else.  Prints one JSON line.
"""

import argparse
import collections
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WARMUP = 0.2


def _die_with_parent():
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG


SINK_HOLD = 256


def _sink(dispatch, fd, credit_fd):
    """A worker that takes every connection and closes it a little later.

    Holding the last SINK_HOLD connections open, as a real worker holds a
    connection while it serves it, keeps the sink's closes as spread out as
    a real worker's.
    """
    receiver = dispatch.receiver.Receiver(fd, credit_fd)
    held = collections.deque()
    while True:
        select.select([receiver], [], [])
        pairs, ended = receiver.receive()
        for _, conn in pairs:
            held.append(conn)
        while len(held) > SINK_HOLD:
            os.close(held.popleft())
        if ended:
            return


def _client(address, go_fd):
    """Connect and reset, as fast as one process can, once told to go."""
    os.read(go_fd, 1)
    linger = struct.pack("ii", 1, 0)
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        try:
            sock.connect(address)
        except OSError:
            pass
        sock.close()


def _fork(body):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _die_with_parent()
            body()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return pid


def measure(impl, window, workers, clients, duration):
    from fastfork.handoff import backend, credit
    dispatch = backend.load(pure=(impl == "py"))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    address = listener.getsockname()
    channels = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(workers)]
    # As the arbiter does: a page per worker where the build has them.
    pages = [credit.create(dispatch.dispatcher.CREDIT_SIZE) if dispatch.dispatcher.CREDIT_SIZE
             else -1 for _ in range(workers)]
    go_r, go_w = os.pipe()
    children = []
    try:
        for index, (_, worker_end) in enumerate(channels):
            def sink(worker_end=worker_end, page=pages[index]):
                listener.close()
                for primary_end, _ in channels:
                    primary_end.close()
                _sink(dispatch, os.dup(worker_end.fileno()), page)
            children.append(_fork(sink))
        for _ in range(clients):
            def client():
                listener.close()
                for pair in channels:
                    for sock in pair:
                        sock.close()
                _client(address, go_r)
            children.append(_fork(client))
        dispatcher = dispatch.dispatcher.Dispatcher(window=window)
        try:
            lid = dispatcher.add_listener(listener.fileno())
            # The workers' ends stay open here, as the arbiter keeps them.
            for (primary_end, worker_end), page in zip(channels, pages):
                dispatcher.subscribe(dispatcher.add_worker(primary_end.fileno(),
                                                           worker_end.fileno(), page), lid)
            os.write(go_w, b"g" * clients)
            warm_until = time.monotonic() + WARMUP
            while time.monotonic() < warm_until:
                dispatcher.poll(50)
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            count0 = dispatcher.dispatched
            start = time.monotonic()
            while time.monotonic() - start < duration:
                dispatcher.poll(50)
            usage1 = resource.getrusage(resource.RUSAGE_SELF)
            wall = time.monotonic() - start
            count = dispatcher.dispatched - count0
        finally:
            dispatcher.close()
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            os.waitpid(pid, 0)
        for pair in channels:
            for sock in pair:
                sock.close()
        for page in pages:
            if page >= 0:
                os.close(page)
        listener.close()
        os.close(go_r)
        os.close(go_w)
    user = usage1.ru_utime - usage0.ru_utime
    system = usage1.ru_stime - usage0.ru_stime
    result = {"impl": impl, "implementation": dispatch.name, "window": window,
              "workers": workers, "clients": clients, "wall_s": wall,
              "connections": count, "conns_per_s": count / wall,
              "primary_cpu_pct": 100.0 * (user + system) / wall}
    if count:
        cost = (user + system) * 1e6 / count
        result.update(user_us_per_conn=user * 1e6 / count, sys_us_per_conn=system * 1e6 / count,
                      us_per_conn=cost, conns_per_core_s=1e6 / cost if cost else None)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("c", "py"), required=True)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--duration", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.workers < 1 or args.clients < 1 or args.window < 1:
        parser.error("--duration must be > 0; --workers, --clients, --window >= 1")
    print(json.dumps(measure(args.impl, args.window, args.workers, args.clients,
                             args.duration)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
