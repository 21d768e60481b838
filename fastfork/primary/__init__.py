"""The primary process: the arbiter and the policies it follows.

* ``arbiter``: ``Cluster``, the loop that forks, watches and replaces workers.
* ``handle``: ``Worker``, the primary's handle on one worker process.
* ``messages``: what the primary does with each control message a worker sends.
* ``listeners``: the addresses the primary owns, and what each policy hands a worker.
* ``signals``: which signals the primary handles; handlers only record them.
* ``snapshot``: what ``fastfork status`` shows.
* ``slots``: which slots serve: ``/readyz`` and the degraded count.
* ``activation``: sockets passed by systemd.
* Lifecycle policies, free of I/O and tested as tables: ``backoff`` (the
  crash loop), ``replacement`` (rolling reload, new before old), ``health``
  (hangs, max-requests, max-memory), ``scaling`` (how many to fork or stop).
"""

from .arbiter import (EVENTS, EXIT_CRASH_LOOP, EXIT_FORCED, EXIT_OK, POLICIES, Cluster,
                      Worker)

__all__ = ["Cluster", "Worker", "EVENTS", "POLICIES", "EXIT_OK", "EXIT_FORCED",
           "EXIT_CRASH_LOOP"]
