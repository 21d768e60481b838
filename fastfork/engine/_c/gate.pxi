# Where one address's connections come into an engine: the fds the channel
# passes (rr, least: ``Gate.take``), or a listening socket the engine accepts
# on itself (none, reuseport: ``Gate.listen``).  Either way a connection
# becomes an HttpConn with no Python object of the worker's per connection:
# the gate's ``owner`` counts it (``opened()`` now, ``finish()`` once it
# closes), one object for all of them.
#
# What every connection of one address shares is found out once here, not
# asked of the kernel per connection:
# * TCP_NODELAY: Linux copies it from a listening socket to the connections
#   accepted from it, and the primary sets it on its TCP listeners (as
#   gunicorn does on its own); the first connection is asked (getsockopt),
#   and if it has it, no other is set.
# * the scope's "server": on an address bound to one IP (not 0.0.0.0 or
#   ::), every connection's local address is the bound one.
# * the client: accept4 gives it; only a passed fd needs getpeername.

cdef enum:
    ACCEPT_BATCH = 64       # accepts per readiness: one busy address cannot starve the loop
    NODELAY_UNKNOWN = 0     # the first connection tells
    NODELAY_INHERITED = 1   # the listener has it (or the socket has no Nagle: unix)
    NODELAY_SET = 2         # set on each connection

# Out of fds (or kernel memory), accepting again at once would spin: the
# backlog keeps the listener readable.  As asyncio does, accept nothing for
# this long; under none the other workers take the address's connections.
# (The worker's own accept, for a PROXY header read first, does the same:
# fastfork.worker.aio, Server._pause_accept.)
cdef double ACCEPT_RETRY = 1.0


cdef class Gate:
    """One address's connections into an ``Engine``.

    ``server``: the worker's ``aio.Server`` (an upgrade is handed back to
    it); ``owner``: counts the connections, ``opened()`` per connection,
    ``finish()`` once each closes, ``refused()`` for one taken after
    ``close()``; ``sockname``: the scope's ``server`` for every connection
    (an address bound to one IP), or None (``getsockname`` per connection).
    """

    cdef Engine engine
    cdef object server
    cdef object owner
    cdef object opened                  # owner.opened, bound once
    cdef object sockname
    cdef int nodelay
    cdef int lfd                        # the listening fd accepted on (listen), or -1
    cdef bint reading                   # the loop watches lfd
    cdef object retry                   # the handle that resumes accepting, or None
    cdef readonly bint closed
    cdef readonly long long accepted    # connections this gate's listen accepted

    def __init__(self, Engine engine, server, owner, sockname=None):
        self.engine = engine
        self.server = server
        self.owner = owner
        self.opened = owner.opened
        self.sockname = sockname
        self.lfd = -1

    def take(self, int fd):
        """Serve ``fd``, a connection the channel passed (the engine's now)."""
        if self.closed:
            close(fd)
            self.owner.refused()
            return
        self.opened()
        self._serve(fd, None)

    cdef _serve(self, int fd, client):
        # A connection that fails here (epoll_ctl refused it: ENOMEM, or
        # max_user_watches) is closed and counted closed by _attach; the
        # ones after it in the batch are served all the same.
        try:
            self.engine._attach(fd, self.owner, self.server, client, self)
        except Exception as exc:
            self.engine.loop.call_exception_handler({
                "message": f"serving a connection on {getattr(self.server, 'address', '?')} "
                           f"failed", "exception": exc})

    def listen(self, int fd):
        """Accept on ``fd`` (a non-blocking listening socket, still the
        caller's) and serve what comes, until ``close()``."""
        cdef int one = 1
        if self.closed or self.lfd >= 0:
            raise RuntimeError("this gate is closed or listening already")
        self.lfd = fd
        # Inherited by what is accepted (the primary's own listeners have it
        # already; a socket systemd passed may not).  A unix socket refuses it.
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        self._resume()

    def close(self):
        """Take no more connections: those in flight are refused, those open stay."""
        self.closed = True
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        if self.reading:
            self.reading = False
            self.engine.loop.remove_reader(self.lfd)

    def _resume(self):
        self.retry = None
        if not self.closed and not self.reading:
            self.reading = True
            self.engine.loop.add_reader(self.lfd, self._accept)

    def _accept(self):
        cdef sockaddr_storage ss
        cdef socklen_t size
        cdef int fd, err, i
        for i in range(ACCEPT_BATCH):
            size = sizeof(ss)
            fd = accept4(self.lfd, <sockaddr*>&ss, &size, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                err = errno
                if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                    self._pause(err)
                    return
                if would_block(err):
                    return
                continue              # EINTR, or the client left first (ECONNABORTED)
            self.accepted += 1
            self.opened()
            self._serve(fd, _inet(&ss))
            if self.closed:
                return                # a connection's app stopped the server

    cdef _pause(self, int err):
        self.reading = False
        self.engine.loop.remove_reader(self.lfd)
        self.retry = self.engine.loop.call_later(ACCEPT_RETRY, self._resume)
        self.engine.logger.error(
            "accepting on %s: %s (%d connections open here); accepting again in %.0f s",
            getattr(self.server, "address", "?"), os.strerror(err), len(self.engine.conns),
            ACCEPT_RETRY)

    cdef bint set_nodelay(self, int fd):
        """Whether ``fd`` needs TCP_NODELAY set: asked of the first connection only."""
        cdef int value = 0
        cdef socklen_t size = sizeof(value)
        if self.nodelay == NODELAY_UNKNOWN:
            if getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &value, &size) < 0 or value:
                self.nodelay = NODELAY_INHERITED
            else:
                self.nodelay = NODELAY_SET
        return self.nodelay == NODELAY_SET
