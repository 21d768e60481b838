# cython: language_level=3
"""The data channel's hot path in C: ``Dispatcher`` (primary) and ``Receiver`` (worker).

``fastfork._core._pydispatch`` is the pure-Python twin: same classes, methods,
attributes and behaviour; the same tests run against both.

One extension built from this file and the ``.pxi`` files it includes (as
uvloop does), so that the classes call each other's C functions directly:

* ``common.pxi``: the wire constants in C, errno and EINTR handling, small helpers;
* ``connqueue.pxi``: the FIFO of connections waiting for a worker with credit;
* ``dispatcher.pxi``: the primary's accept-and-hand-out loop;
* ``receiver.pxi``: the worker's end of the data channel.

POSIX declarations live in ``includes/system.pxd``.

Design notes (they apply to the twin too)
-----------------------------------------
* One epoll instance holds the listening sockets, the primary's ends of the
  workers' data channels and the fds the caller ``watch``es.  Each registration
  carries ``kind << 32 | id`` in ``epoll_data`` so an event needs no lookup.
* A listener is armed (EPOLLIN) only while some subscribed worker has credit
  and accepting is not paused; otherwise it is registered with events=0 so
  the backlog stays in the kernel and a readable listener cannot make epoll
  spin.  Re-armed by ``poll`` as soon as credit comes back.
* Accepting: ``accept4(NONBLOCK|CLOEXEC)`` until EAGAIN or until the credit
  runs out; each connection goes to the worker the scheduler picks; the
  connections of one worker are sent in one ``sendmsg`` per ``batch_max``.
* The primary keeps its copy of every connection until the worker
  acknowledges it (per-worker FIFO of capacity ``window``): if the worker dies
  first, the copy goes to the pending queue and from there to another worker.
* The GIL is released in exactly one place, around ``epoll_wait``.
* Every syscall that can fail with EINTR goes through ``_interrupted``, which
  runs Python's signal handlers before the retry.
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport (errno, EINTR, ECONNABORTED, EPROTO, EPERM, ENETDOWN,
                         ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP,
                         ENETUNREACH, EMFILE, ENFILE, ENOBUFS, ENOMEM, EPIPE,
                         ECONNRESET, ESHUTDOWN)
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memset, strerror
from posix.fcntl cimport fcntl, F_GETFL, F_SETFL, O_NONBLOCK
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from posix.types cimport pid_t
from posix.unistd cimport close, getpid

from .includes.system cimport (
    FASTFORK_DEBUG, FF_SCM_MAX_FD, INT_MAX, EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL,
    EPOLL_CTL_MOD, EPOLLIN, MSG_CMSG_CLOEXEC, MSG_CTRUNC, MSG_DONTWAIT, MSG_NOSIGNAL,
    MSG_TRUNC, SO_TYPE, SOCK_CLOEXEC, SOCK_NONBLOCK, SOL_SOCKET, accept4, epoll_create1,
    epoll_ctl, epoll_event, epoll_wait, ff_recv_fds, ff_send_fds, getsockopt, recv, send,
    socklen_t, would_block)
from ._cscheduler cimport RoundRobinScheduler, LeastConnectionsScheduler, FF_MAX_LISTENERS
from ._cscheduler import scheduler_for

from fastfork.channels.wire import (BATCH_BUCKETS, DEFAULT_BATCH_MAX, DEFAULT_WINDOW,
                                    ProtocolError, check_batch_max, check_window)

IMPLEMENTATION = "cython"
DEBUG = bool(FASTFORK_DEBUG)

include "common.pxi"
include "connqueue.pxi"
include "dispatcher.pxi"
include "receiver.pxi"

if [BATCH_BOUNDS[i] for i in range(NBATCH_BUCKETS)] != list(BATCH_BUCKETS):
    raise ImportError("the C batch buckets disagree with fastfork.channels.wire.BATCH_BUCKETS")
