# cython: language_level=3
"""The worker's HTTP/1.1 engine in C: connections from fd to ASGI app, no transport.

One ``Engine`` per served app and event loop.  A ``Gate`` (one per address)
takes the fds the channel passes, or accepts on a listening socket itself;
``attach(fd, owner, server)`` takes any other connection (one whose PROXY
header the worker read).  From there everything is here: non-blocking
``read`` into one shared buffer, llhttp (through httptools'
``HttpRequestParser``) for the parsing, responses framed here and written
with ``writev``, unsent bytes kept per connection.

Readiness comes from one epoll set of the engine's own, whose fd the event
loop watches (``loop.add_reader``): one Python callback per loop iteration
however many connections are ready, and no handle object per connection.
Nothing here blocks (every fd is non-blocking and ``epoll_wait`` is called
with a zero timeout), so the GIL is never released: there is no blocking
syscall to release it around.

Files: ``limits.pxi`` (gunicorn's limits, the status lines, the header
checks), ``conn.pxi`` (one connection: I/O, parsing, pipelining, keep-alive,
timeouts), ``gate.pxi`` (an address's connections coming in: passed fds,
or the engine's own accept), ``asgi.pxi`` (one request as ASGI: scope,
receive, send), ``wsgi.pxi`` (a WSGI app: environ, start_response, the call
on the loop thread or a pool thread), ``pool.pxi`` (the pool's threads:
which one a call goes to, and their hand-back to the loop).  Why
httptools' Python-level parser and not llhttp cimported: httptools ships no C
API (its ``cparser.pxd`` declares llhttp but neither the header nor exported
symbols come with the wheel), so a cimport would build against a copy of
llhttp of our own; its callbacks are vectorcalls into this module's methods,
a few per request, and the bytes they pass are what the scope needs anyway.

Over 400 lines on purpose: ``Engine`` is one cdef class (attaching, the
epoll set, corking and the timers share its fields), and Cython cannot split
a class's methods across files.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memchr
from posix.unistd cimport read, write, close
from posix.uio cimport iovec, writev

from fastfork.handoff._c.includes.epoll cimport (
    EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD, EPOLLERR, EPOLLHUP, EPOLLIN,
    EPOLLOUT, epoll_create1, epoll_ctl, epoll_event, epoll_wait)
from .includes.system cimport (
    AF_INET, AF_INET6, CLOCK_MONOTONIC, EFD_CLOEXEC, EFD_NONBLOCK, EINTR, INET6_ADDRSTRLEN,
    accept4, clock_gettime, EMFILE, ENFILE, ENOBUFS, ENOMEM, errno, eventfd, getpeername,
    getrusage, getsockname, getsockopt, inet_ntop, IPPROTO_TCP, MSG_DONTWAIT, MSG_PEEK, ntohs,
    recv, rusage, RUSAGE_THREAD, SHUT_WR, setsockopt, shutdown, SOCK_CLOEXEC, SOCK_NONBLOCK,
    sockaddr, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t, TCP_NODELAY, timespec,
    would_block)

import collections
import logging
import os
import threading
import urllib.parse

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, parse_url

include "limits.pxi"


cdef double monotonic() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef enum:
    READ_SIZE = 65536       # one read per readiness: fair to the other connections
    EVENTS = 256            # epoll events taken per loop callback

# The longest a corked response waits for the rest of its pass (Engine, "corking").
cdef double CORK_SECONDS = 0.0005


include "conn.pxi"
include "gate.pxi"
include "asgi.pxi"
include "wsgi.pxi"
include "pool.pxi"


cdef class Engine:
    """Serves one ASGI app on the connections given to ``attach``.

    ``app``: the ASGI 3 callable (uvicorn's loaded app, its middleware
    included); ``app_state``: the lifespan state, copied into each scope;
    ``keep_alive``: seconds an idle keep-alive connection is kept;
    ``head_timeout``: seconds a request head may take (0: no deadline; see
    ``fastfork.web.deadline``); ``on_upgrade(fd, data, owner, server)``: takes
    a connection whose request is a WebSocket upgrade (None: upgrades are
    answered as plain requests); ``wsgi_app``: a WSGI app the engine calls
    instead of ``app`` (``wsgi.pxi``), its bodies read whole first, up to
    ``body_limit`` bytes: on the loop thread (``wsgi_threads=0``; 413 past
    the limit), or on a pool of ``wsgi_threads`` threads fed from here (a
    body past the limit, or chunked, goes to ``app``, the WSGI adapter;
    ``wsgi_sched_batch``: the loop's thread and the pool's run under
    SCHED_BATCH, pool.pxi).  ``limit_concurrency`` (0: none):
    as uvicorn's, a request that arrives while this many connections are open
    or app calls run is answered 503 instead.  ``scope_filter(scope)``: called
    on each WSGI request's scope before its environ is built (the client and
    scheme a trusted proxy's headers give; an ASGI app has that middleware
    around it already).  ``header_map``: what a WSGI request's header whose
    name has an underscore does: "drop" (not in the environ), "refuse" (a
    400 while the head is read), "dangerous" (mapped as any other; see
    ``fastfork.web.header_map``).  ``requests`` counts responses completed,
    ``head_timeouts`` connections closed at the head deadline.
    """

    cdef int epfd
    cdef object loop
    cdef dict conns                     # fd -> HttpConn: held while registered
    cdef bytearray rbuf
    cdef object rview                   # memoryview of rbuf, sliced per read
    cdef object app
    cdef object app_state
    cdef bytes default_head             # "date: ...\r\nserver: ...\r\n", refreshed each second
    cdef str root_path
    cdef bytes root_path_b
    cdef object access_logger           # None: no access log
    cdef object logger
    cdef double keep_alive
    cdef double head_timeout
    cdef double grace_until             # stopping: idle connections close then
    cdef readonly long long requests
    cdef readonly long long head_timeouts
    cdef readonly bint stopping
    cdef readonly set tasks
    cdef object on_upgrade
    cdef object wsgi_app                # a WSGI app the engine calls, or None
    cdef WsgiPool pool                  # the threads that call it (None: the loop thread)
    cdef readonly Py_ssize_t in_threads # WSGI calls given to the pool and not finished
    cdef Py_ssize_t body_limit          # its request bodies are read whole up to this
    cdef Py_ssize_t limit_concurrency   # uvicorn's: 503 at this many connections or tasks
    cdef object scope_filter            # WSGI: rewrites a scope in place before its environ
    cdef int header_map                 # WSGI: MAP_DROP, MAP_REFUSE or MAP_DANGEROUS
    cdef object ticker
    cdef double tick
    cdef object liveness                # told when app calls start and end (watch())
    cdef readonly Py_ssize_t running    # app calls running (tasks, WSGI calls here or on the pool)
    cdef epoll_event events[EVENTS]
    # Corking (WSGI on the loop thread): see "corking" below.
    cdef bint cork
    cdef list corked                    # None, or during a pass the connections it wrote to
    cdef list attached                  # connections attached, their first read not yet done
    cdef list due                       # connections read this pass, their request to start
    cdef list unwatched                 # connections read once, into the epoll set next pass

    def __init__(self, loop, app, app_state, *, double keep_alive=5.0, double head_timeout=60.0,
                 str root_path="", access_logger=None, logger=None, on_upgrade=None,
                 wsgi_app=None, Py_ssize_t body_limit=1 << 20,
                 Py_ssize_t limit_concurrency=0, scope_filter=None, int wsgi_threads=0,
                 bint wsgi_sched_batch=False, str header_map="drop"):
        if header_map not in HEADER_MAPS:
            raise ValueError(f"header_map must be one of {', '.join(HEADER_MAPS)}, "
                             f"got {header_map!r}")
        self.header_map = HEADER_MAPS[header_map]
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")
        self.loop = loop
        self.conns = {}
        self.rbuf = bytearray(READ_SIZE)
        self.rview = memoryview(self.rbuf)
        self.app = app
        self.app_state = app_state
        self.default_head = b""
        self.root_path = root_path
        self.root_path_b = root_path.encode("ascii")
        self.access_logger = access_logger
        self.logger = logger if logger is not None else logging.getLogger("uvicorn.error")
        self.keep_alive = keep_alive
        self.head_timeout = head_timeout
        self.tasks = set()
        self.on_upgrade = on_upgrade
        self.wsgi_app = wsgi_app
        self.body_limit = body_limit
        self.limit_concurrency = limit_concurrency
        self.scope_filter = scope_filter
        self.cork = wsgi_app is not None and wsgi_threads == 0
        self.attached = []
        self.unwatched = []
        self.due = []
        if wsgi_app is not None and wsgi_threads > 0:
            self.pool = WsgiPool(loop, wsgi_threads, wsgi_sched_batch)
        shortest = min([t for t in (keep_alive, head_timeout) if t > 0] or [1.0])
        # Deadlines are checked on a tick: a tenth of the shortest timeout,
        # within [50 ms, 1 s], is precise enough for either and costs nothing.
        self.tick = min(1.0, max(0.05, shortest / 10))
        loop.add_reader(self.epfd, self._ready)
        self.ticker = loop.call_later(self.tick, self._on_tick)

    @property
    def open(self):
        """Connections this engine serves now."""
        return len(self.conns)

    def watch(self, liveness):
        """``liveness.app_started()`` when ``running`` leaves 0 (an app call
        began: an ASGI task, a WSGI call on the loop's thread, or one on the
        pool, whose threads can starve the loop of the GIL), ``app_ended()``
        when it is back at 0 (the worker's ``Tracker``, for its ``Ticker``)."""
        self.liveness = liveness

    cdef app_started(self):
        self.running += 1
        if self.running == 1 and self.liveness is not None:
            self.liveness.app_started()

    cdef app_ended(self):
        self.running -= 1
        if self.running == 0 and self.liveness is not None:
            self.liveness.app_ended()

    def set_default_headers(self, headers):
        """The headers every response starts with (uvicorn's ``default_headers``)."""
        self.default_head = b"".join([name + b": " + value + b"\r\n" for name, value in headers])

    def attach(self, int fd, owner, server=None, client=None):
        """Serve ``fd`` (a connected, non-blocking stream socket, now the engine's).

        ``owner.finish()`` is called once when it closes; ``client``: the
        peer as a PROXY header gave it (else ``getpeername``).  A ``Gate``
        does this for an address's connections with less per connection."""
        self._attach(fd, owner, server, client, None)

    cdef _attach(self, int fd, owner, server, client, Gate gate):
        cdef HttpConn conn = HttpConn.__new__(HttpConn)
        cdef int one = 1
        # As uvloop and asyncio do for every TCP transport: a response written
        # in parts (a head, then a stream's parts) must not wait for the
        # client's delayed ACK of the part before.  A Unix socket refuses
        # the option (EOPNOTSUPP), and has no Nagle to turn off.  A gate's
        # connections usually have it from their listener (gate.pxi).
        if gate is None or gate.set_nodelay(fd):
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        conn.setup(self, fd, owner, server, client)
        if gate is not None:
            conn.server_address = gate.sockname
        self.conns[fd] = conn
        if self.stopping:
            conn.arm(TIMER_GRACE, self.grace_until)
        elif self.head_timeout > 0:
            conn.arm(TIMER_HEAD, monotonic() + self.head_timeout)
        # The request usually came with the connection: read it now instead
        # of after a round of the loop; corking, with the others of its batch.
        # The connection joins the epoll set only in the next pass, after its
        # app's first step (``watch_later``), or sooner if it has to wait
        # (HttpConn.update): one answered and closed by then, as a fast
        # app's `Connection: close` traffic is, costs no epoll_ctl ADD and
        # DEL (3.3 us the pair on the 2-core VM).
        if not self.cork:
            try:
                conn.on_readable()
            finally:
                self.watch_later(conn)
            return
        self.attached.append(conn)
        if len(self.attached) == 1:
            self.loop.call_soon(self._read_attached)

    def _read_attached(self):
        cdef HttpConn conn
        cdef double started = monotonic()
        attached, self.attached = self.attached, []
        if len(attached) > 1:
            self.corked = []
        try:
            for conn in attached:
                if not conn.closed:
                    conn.on_readable()
            self.start_due(started)
        finally:
            self.uncork()
            for conn in attached:
                self.watch_later(conn)

    cdef watch_later(self, HttpConn conn):
        """Into the epoll set in the next pass, if still open and not in it yet."""
        if conn.closed or conn.registered:
            return
        self.unwatched.append(conn)
        if len(self.unwatched) == 1:
            self.loop.call_soon(self._watch)

    def _watch(self):
        cdef HttpConn conn
        cdef AsgiExchange ex
        unwatched, self.unwatched = self.unwatched, []
        for conn in unwatched:
            ex = conn.current
            if ex is not None:
                if ex.in_pool:
                    continue          # watched once its call is done (StartResponse.drain)
                if ex.task is not None and not ex.stepped and not ex.task.done():
                    # Its app's first step comes later in this pass (the tasks
                    # of a batch of connections run in turn): after it, then.
                    self.watch_later(conn)
                    continue
            conn.update()             # nothing if closed or in the set already

    def _ready(self):
        cdef int n, i
        cdef HttpConn conn
        cdef unsigned int what
        cdef double started = 0.0
        n = epoll_wait(self.epfd, self.events, EVENTS, 0)
        if self.cork and n > 1:
            self.corked = []
            started = monotonic()
        try:
            for i in range(n):
                conn = <HttpConn>self.events[i].data.ptr
                what = self.events[i].events
                if conn.closed:
                    continue          # closed by an earlier event of this batch
                if what & EPOLLOUT:
                    conn.on_writable()
                if what & (EPOLLIN | EPOLLHUP | EPOLLERR) and not conn.closed:
                    conn.on_readable()
            self.start_due(started)
        finally:
            self.uncork()

    # -- corking -----------------------------------------------------------------
    # With a WSGI app on the loop thread, a pass of the engine calls the app
    # for each ready request in turn.  Written as each is answered, every
    # response would wake the client's side on its own (on loopback, the
    # writev runs the client's receive path and an inter-processor wake-up,
    # 13% of a Flask worker's time in perf); corked, the pass's responses are
    # written together at its end, each with one write, and wake it once.  A
    # response waits at most CORK_SECONDS for the others.  The pass reads
    # every ready connection first and then calls the app for each request it
    # completed, back to back (``due``): interleaved with the reads' kernel
    # work, a Flask call cost 48-49 us of CPU; back to back, 45-46.  On the
    # pool, the loop's drains already write several threads' responses in one
    # pass.

    cdef start_due(self, double started):
        """Call the app for each request the pass's reads completed, in turn."""
        cdef HttpConn conn
        if not self.due:
            return
        due, self.due = self.due, []
        # One app_started for the pass's calls, not one each (liveness).
        self.app_started()
        try:
            for conn in due:
                if conn.start_due and not conn.closed:
                    conn.start_due = False
                    conn.current.start()
                started = self.corked_for(started)
        finally:
            self.app_ended()

    cdef double corked_for(self, double started):
        """Flush now if the pass has held its responses long enough; the new start.
        (Not corking, or nothing held yet: nothing to do.)"""
        cdef double now
        if not self.corked:
            return started
        now = monotonic()
        if now - started < CORK_SECONDS:
            return started
        self.uncork()
        self.corked = []
        return now

    cdef uncork(self):
        """Write what the pass's connections were given, and stop corking."""
        cdef HttpConn conn
        if self.corked is None:
            return
        corked, self.corked = self.corked, None
        for conn in corked:
            conn.corked = False
            if not conn.closed:
                conn.on_writable()

    def _on_tick(self):
        cdef double now = monotonic()
        cdef HttpConn conn
        for conn in list(self.conns.values()):
            if conn.timer != TIMER_NONE and now >= conn.deadline:
                conn.expired()
        self.ticker = self.loop.call_later(self.tick, self._on_tick)

    def shutdown(self, double grace):
        """Stop keeping connections alive: a busy one closes after its response, an
        idle one after ``grace`` seconds or after answering one more request."""
        cdef HttpConn conn
        self.stopping = True
        self.grace_until = monotonic() + grace
        self.tick = min(self.tick, 0.1)
        for conn in list(self.conns.values()):
            conn.shutdown()

    def close_all(self):
        """Close every connection now (past the graceful timeout)."""
        cdef HttpConn conn
        for conn in list(self.conns.values()):
            conn.close()

    def close(self):
        """Close every connection and the engine's epoll set; the pool's threads end
        after the call they are in."""
        self.close_all()
        if self.pool is not None:
            self.pool.close()
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None
        if self.epfd >= 0:
            self.loop.remove_reader(self.epfd)
            close(self.epfd)
            self.epfd = -1

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)
