"""fastfork's core: the hot path in Cython, its pure-Python twin, and the choice.

* ``backend``: which implementation runs (``FASTFORK_NO_EXTENSIONS=1``: the twin).
* ``_cdispatch`` (``_cdispatch.pyx`` + ``*.pxi``) / ``_pydispatch`` + ``_pyreceiver``:
  the primary's ``Dispatcher`` and the worker's ``Receiver``.
* ``_cscheduler`` / ``_pyscheduler``: which worker gets the next connection
  (``RoundRobinScheduler`` for policy rr, ``LeastConnectionsScheduler`` for
  least; ``scheduler_for(policy, ...)`` is the one place that chooses).
* ``includes/system.pxd``: the POSIX declarations the Cython build uses.
* ``linux``: the few Linux calls the standard library lacks (``prctl``).
"""
