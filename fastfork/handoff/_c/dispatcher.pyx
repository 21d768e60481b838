# cython: language_level=3
"""The primary's ``Dispatcher`` in C: accept, pick a worker, pass the fd.

``_py/dispatcher.py`` is the pure-Python twin: same class, methods,
attributes and behaviour; the same tests run against both.  The worker's end
of the channel is ``receiver.pyx``.

One extension built from this file and the ``.pxi`` files it includes (as
uvloop does), so that the parts call each other's C functions directly:

* ``common.pxi``: the wire constants in C, errno and EINTR handling, small
  helpers (``receiver.pyx`` includes it too);
* ``connqueue.pxi``: the FIFO of connections waiting for a worker with credit;
* ``dispatcher.pxi``: the primary's accept-and-hand-out loop.

POSIX declarations live in ``includes/system.pxd``.

Design notes (they apply to the twin too)
-----------------------------------------
* One epoll instance holds the listening sockets, the primary's ends of the
  workers' data channels and the fds the caller ``watch``es.  Each registration
  carries ``kind << 32 | id`` in ``epoll_data`` so an event needs no lookup.
* Listeners are edge-triggered (EPOLLIN|EPOLLET) and never re-armed: an event
  marks a listener as having a backlog, accept4 returning EAGAIN clears it,
  and a listener left with a backlog when credit ran out is accepted from
  again as soon as acks bring credit back.  While no worker has credit the
  connections wait in the kernel's backlog; no epoll_ctl per window.
* Accepting: ``accept4(NONBLOCK|CLOEXEC)`` until EAGAIN or until the credit
  runs out; each connection goes to the worker the scheduler picks; the
  connections of one worker are sent in one ``sendmsg`` per ``batch_max``.
* Nothing a worker never received is lost.  The primary keeps the worker's
  end of each data channel open (``add_worker(fd, peer)``: required), so a
  message the worker has not read stays queued there, holding its
  connections, even after the worker dies; the primary closes its own copy
  of each fd right after the send (a reference drop: the kernel's TCP
  teardown runs later, in the worker's close) and, when the worker is gone,
  reads the unread messages back from the peer and re-dispatches their
  connections; a reserve of spare fds (one window's worth) is given up for
  that, so that a primary at its fd limit can still receive them.  So the
  primary holds connection fds only while no worker has credit for them
  (the pending queue), and credit is only a count per worker.
* Credit comes back through a page of counters shared with each worker
  (``csrc/credit.h``): the worker adds what it received (and, under least,
  what closed), the primary reads the counters when it schedules; an ACK
  message is sent only to wake a primary about to sleep for want of credit.
  Without a page (``add_worker(credit_fd=-1)``, the twin) ACKs carry the counts.
* A worker whose loop is blocked is found out and routed around: its loop
  ticks on the page while it holds connections, and a tick older than
  ``stall_ms``, or a message it has left unread ``STALL_UNTAKEN_FACTOR`` times
  that long (a loop that was idle when it froze, or one not yet scheduled
  on a busy machine), marks it stalled
  (the scheduler's rule 12: it is sent nothing); what waits unread in its
  channel is read back from its end, exactly as from a dead worker's (each
  message is taken by one reader only), and sent to another (rule 13).  It
  is picked again once its tick moves or it takes something, or, showing no
  sign at all, after ``STALL_PROBE_MS``.  The twin has no page: it sees a
  stall only by what waits unread.
* Acks are read with one ``recvmmsg`` per readiness (fewer messages than asked
  for means drained: no call wasted on EAGAIN); the worker reads fd batches
  the same way.
* The GIL is released in exactly one place, around ``epoll_wait``, and only
  when the process has another Python thread that could want it.
* Every syscall that can fail with EINTR goes through ``_interrupted``, which
  runs Python's signal handlers before the retry.
"""

from .scheduler cimport (RoundRobinScheduler, LeastConnectionsScheduler, FF_MAX_LISTENERS,
                         FF_STALLED)
from .scheduler import scheduler_for

from fastfork.handoff.wire import (BATCH_BUCKETS, DEFAULT_BATCH_MAX, DEFAULT_STALL_MS,
                                   DEFAULT_WINDOW, STALL_PROBE_MS, STALL_UNTAKEN_FACTOR,
                                   check_batch_max,
                                   check_stall_ms, check_window)

include "common.pxi"
include "connqueue.pxi"
include "dispatcher.pxi"

IMPLEMENTATION = "cython"
# Bytes of the page a worker and the primary share for credit (csrc/credit.h);
# the pure-Python twin has none (0) and counts with ACK messages.
CREDIT_SIZE = FF_CREDIT_SIZE
DEBUG = bool(FASTFORK_DEBUG)

_check_wire(__name__)
