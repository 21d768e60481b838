"""``python -m fastfork demo``: the cluster model, shown live with real processes.

The scripted demo runs in six parts: the core count, the primary forking its
workers onto one port, round-robin dispatch (the demo itself is the client),
per-worker counters against the primary's total, a worker killed and
re-forked, and a clean shutdown.  ``--serve`` skips the script and serves
HTTP until SIGINT/SIGTERM: it is the reference server the benchmarks use.

Threads: the cluster loop must own the main thread (signals), so the scripted
client runs on a helper thread started once every worker listens; both print
(see ``output`` for the lock they share with fork).

* ``main``: the command (options, the six parts' opening, the closing summary).
* ``options``: its command line, and reserving the port before forking.
* ``lesson``: ``Demo``, the primary's side: prints the events, drives the client.
* ``app``: what each worker runs (an HTTP server that says who it is).
* ``http``: the tiny HTTP/1.1 protocol the workers (and the benchmarks) serve.
* ``output``: printing, colors, and the lock shared with fork.
"""

from .main import main

__all__ = ["main"]
