# One connection: reads into the engine's buffer and through the parser,
# requests answered one at a time in arrival order (pipelined ones wait
# their turn, parsed), unsent bytes kept and written when the socket has
# room, keep-alive and the two deadlines.
#
# Over 400 lines on purpose: this is one cdef class (its reading, writing,
# epoll interest and timers share every field), and Cython cannot split a
# class's methods across files; the request itself is in asgi.pxi/wsgi.pxi.

cdef enum:
    TIMER_NONE = 0
    TIMER_HEAD = 1        # a request head is awaited (fastfork.web.deadline's clock)
    TIMER_IDLE = 2        # keep-alive between requests (uvicorn's timeout_keep_alive)
    TIMER_GRACE = 3       # stopping: one more request may come until then
    TIMER_LINGER = 4      # answered and closing: the client's last bytes are drained
    TIMER_DISCARD = 5     # answered before its body ended: the rest is read and dropped

# After an answer that ends a connection whose client may still be sending
# (a refused or timed-out head), the write side is shut and what arrives is
# read and dropped for up to this long before the close (nginx's lingering
# close): closing with unread bytes sends an RST that can destroy the answer
# before the client reads it.
cdef double LINGER = 2.0
# An answered request's body still arriving is read and dropped (so that the
# client's upload ends and it reads the answer, as uvicorn does), for up to
# this long in all, and while no more than the keep-alive time passes between
# two reads (nginx's lingering_time and lingering_timeout).
cdef double DISCARD_MAX = 30.0

cdef bytes CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
cdef bytes TIMEOUT_BODY = b"the request head did not arrive in time\n"


class _LimitExceeded(Exception):
    """Raised in a parser callback: the request breaks one of gunicorn's limits."""


@cython.final
cdef class HttpConn:
    cdef Engine engine
    cdef int fd
    cdef object owner             # the worker's Connection: finish() once closed
    cdef object server            # the aio.Server it came through (for the upgrade hand-off)
    cdef object client
    cdef object server_address
    cdef bint addressed
    cdef bint closed
    cdef bint paused              # reading stopped: body or pipeline backlog
    cdef bint close_when_flushed
    cdef bint lingering           # answered, write side shut after the flush, input dropped
    cdef bint corked              # its bytes wait in out for the end of the pass (corking)
    cdef unsigned int interest    # the epoll events registered now
    cdef bint registered          # in the engine's epoll set (only once its first read is done)
    cdef bytearray out            # bytes the socket had no room for
    cdef object drained           # a future send() waits on while out is over HIGH_WATER
    cdef object parser
    # The request head being parsed.
    cdef bint in_head
    cdef list url_parts
    cdef Py_ssize_t url_size
    cdef list headers
    cdef int fields
    cdef Py_ssize_t since_field   # bytes fed since the last complete header field
    cdef bint expect_continue
    cdef bint upgrading
    cdef bytes upgrade_rest       # an upgrade waiting for the answer before it to be sent
    cdef bint in_trailer          # after the last chunk's size: trailer fields, or extensions
    cdef int refused              # the status a callback refused the request with
    cdef str refused_why          # and the answer's text
    cdef double discard_until     # TIMER_DISCARD: when dropping the rest ends, at the latest
    cdef bytes refusal            # an answer due once the requests before it are answered
    # The requests: the one answered, those parsed and waiting, the one
    # whose body is being read (any of them).
    cdef AsgiExchange current
    cdef object queue
    cdef AsgiExchange parsing
    cdef bint start_due           # current's head is parsed; its app starts after the feed
    # Deadlines.
    cdef int timer
    cdef double deadline
    cdef bint partial             # bytes of the awaited head arrived

    cdef setup(self, Engine engine, int fd, owner, server, client):
        self.engine = engine
        self.fd = fd
        self.owner = owner
        self.server = server
        if client is not None:
            self.client = client
        self.out = bytearray()
        self.queue = collections.deque()
        self.parser = HttpRequestParser(self)

    # -- addresses ---------------------------------------------------------------
    cdef address(self):
        """``server`` and ``client`` of the scope, read once per connection."""
        cdef sockaddr_storage ss
        cdef socklen_t size = sizeof(ss)
        self.addressed = True
        if self.server_address is None and getsockname(self.fd, <sockaddr*>&ss, &size) == 0:
            self.server_address = _inet(&ss)     # else its gate knew it
        if self.client is None:
            size = sizeof(ss)
            if getpeername(self.fd, <sockaddr*>&ss, &size) == 0:
                self.client = _inet(&ss)

    # -- reading -----------------------------------------------------------------
    cdef on_readable(self):
        cdef Engine engine = self.engine
        cdef ssize_t n = read(self.fd, <char*>engine.rbuf, READ_SIZE)
        if n > 0:
            if self.parser is not None:   # None: refused or lingering, input dropped
                self.feed(n)
        elif n == 0:
            self.close()              # the client left (uvicorn: connection_lost)
        elif not (would_block(errno) or errno == EINTR):
            self.close()

    cdef feed(self, Py_ssize_t n):
        cdef Py_ssize_t start = 0
        if self.timer == TIMER_IDLE or self.timer == TIMER_GRACE:
            # The first byte of the next request: the head deadline starts now.
            self.timer = TIMER_NONE
            if self.engine.head_timeout > 0:
                self.arm(TIMER_HEAD, monotonic() + self.engine.head_timeout)
        elif self.timer == TIMER_DISCARD:
            self.deadline = min(monotonic() + self.engine.keep_alive, self.discard_until)
        self.partial = True
        while start < n:
            if self.in_head or self.in_trailer:
                self.since_field += n - start
            try:
                self.parser.feed_data(self.engine.rview[start:n])
            except HttpParserUpgrade as exc:
                start += exc.args[0]
                if self.upgrading:
                    if self.out:
                        # The answer before it is not all sent: handed over
                        # now, its rest was lost and the 101 went out inside
                        # its body.  Nothing more is read until it is sent.
                        self.upgrade_rest = bytes(self.engine.rview[start:n])
                        self.pause()
                    else:
                        self.hand_over(bytes(self.engine.rview[start:n]))
                    return
                # An upgrade not made (not a WebSocket, or CONNECT): answered
                # as a plain request, and the connection ends with it.  What
                # follows its head is the other protocol's, or (llhttp reads
                # no body after an Upgrade head) a body: never a request.
                self.parser = None
            except HttpParserError as exc:
                self.refuse(exc)      # and the requests before it still start
            break
        if self.closed:
            return
        if self.start_due:
            # Only now: llhttp refuses some heads (two lengths, a bad
            # Transfer-Encoding) after on_headers_complete, and such a request
            # must never reach the app.
            if self.engine.corked is not None:
                self.engine.due.append(self)  # after the pass's reads (corking)
            else:
                self.start_due = False
                self.current.start()
        if self.parser is not None and (self.in_head or self.in_trailer) and (
                self.since_field > LIMIT_REQUEST_FIELD_SIZE + 2):
            self.refuse(None, 431)

    cdef refuse(self, exc, int status=0):
        """The request cannot be read (or only read two ways): say so and close."""
        cdef str why
        if status == 0:
            status = self.refused or 400
        if status == self.refused and self.refused_why is not None:
            why = self.refused_why
        elif status == 431:
            why = FIELDS_TOO_LARGE
        else:
            why = "Invalid HTTP request received."
        if self.parsing is not None:
            if self.parsing is self.current and (self.start_due or self.current.wsgi_due):
                self.current = None       # refused before its app was called
                self.start_due = False
            elif self.queue and self.queue[-1] is self.parsing:
                self.queue.pop()
            else:
                # Broken in the middle of a body being read by the app: that
                # request cannot be answered as if it had arrived whole.
                self.close()
                return
            self.parsing = None
        self.parser = None            # nothing after it is read as a request
        self.in_head = self.in_trailer = False
        self.timer = TIMER_NONE
        self.refusal = self.simple(status, why.encode())
        if self.current is None:
            self.send_refusal()
        else:
            # The requests before it are answered first, in order: then this.
            self.pause()

    cdef object refusing(self, int status, str why):
        """In a parser callback: the request is refused with ``status`` and
        ``why`` (``refuse`` answers it); raise what this returns."""
        self.refused = status
        self.refused_why = why
        return _LimitExceeded(why)

    cdef send_refusal(self):
        self.send_parts([self.refusal])
        self.refusal = None
        self.linger()

    # Parser callbacks (httptools calls them by name).
    def on_message_begin(self):
        self.in_head = True
        self.url_parts = []
        self.url_size = 0
        self.headers = []
        self.fields = 0
        self.since_field = 0
        self.expect_continue = False
        self.upgrading = False
        self.in_trailer = False

    def on_url(self, bytes url):
        self.url_parts.append(url)
        self.url_size += len(url)
        if self.url_size > LIMIT_REQUEST_LINE - 12 and (
                self.url_size + len(self.parser.get_method()) + 10 > LIMIT_REQUEST_LINE):
            raise self.refusing(400, LINE_TOO_LONG)

    def on_header(self, bytes name, bytes value):
        # A trailer field (after a chunked body) is held to the same limits
        # (counted apart), and is not part of the scope.
        self.fields += 1
        self.since_field = 0
        if (self.fields > LIMIT_REQUEST_FIELDS
                or len(name) + len(value) + 2 > LIMIT_REQUEST_FIELD_SIZE):
            raise self.refusing(431, FIELDS_TOO_LARGE)
        if not self.in_head:
            return
        if bad_name(name):
            # A newer llhttp refuses these itself; the one in httptools 0.6.0
            # (the lowest supported) lets them through: the engine checks too.
            raise self.refusing(400, BAD_HEADER_NAME)
        if (self.engine.header_map == MAP_REFUSE and self.engine.wsgi_app is not None
                and b"_" in name):
            raise self.refusing(400, UNDERSCORE_NAME)
        name = ascii_lower(name)
        value = rstrip_ows(value)
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self):
        cdef AsgiExchange exchange
        cdef Engine engine = self.engine
        self.in_head = False
        self.partial = False
        if self.timer == TIMER_HEAD:
            self.timer = TIMER_NONE
        parser = self.parser
        upgrade = parser.should_upgrade()
        if (upgrade and engine.on_upgrade is not None
                and self.current is None and not self.queue and _wants_websocket(self.headers)):
            self.upgrading = True     # handed over once the parser stops (see feed)
            return
        if upgrade and _declares_body(self.headers):
            # llhttp reads no body after an Upgrade head: the engine could
            # only answer it as a request without one (see feed).
            raise self.refusing(400, UPGRADE_WITH_BODY)
        url = b"".join(self.url_parts) if len(self.url_parts) != 1 else self.url_parts[0]
        self.url_parts = None
        version = parser.get_http_version()
        # --timeout-keep-alive 0: no connection is kept (uvicorn closes at once).
        keep_alive = (version != "1.0" and parser.should_keep_alive() and not engine.stopping
                      and engine.keep_alive > 0 and not upgrade)
        if not self.addressed:
            self.address()
        exchange = AsgiExchange.__new__(AsgiExchange)
        exchange.setup(self, parser.get_method(), url, self.headers, version, keep_alive,
                       self.expect_continue)
        self.headers = None
        self.parsing = exchange
        if self.current is None:
            self.current = exchange
            self.start_due = True
        else:
            self.queue.append(exchange)
            if len(self.queue) >= PIPELINE_DEPTH:
                self.pause()

    def on_body(self, bytes body):
        self.in_trailer = False
        if self.parsing is not None:
            self.parsing.on_body(body)

    def on_chunk_header(self):
        # Before a chunk's data, or (the last chunk) the trailer fields: the
        # bytes until the next body part or field are counted as a field's.
        self.in_trailer = True
        self.fields = 0
        self.since_field = 0

    def on_message_complete(self):
        self.in_trailer = False
        if self.parsing is not None:
            self.parsing.on_message_complete()
            self.parsing = None
            if self.current is None and self.engine.keep_alive > 0:
                # The body of a request answered before it was read ended:
                # the connection is idle now.
                self.arm(TIMER_IDLE, monotonic() + self.engine.keep_alive)

    # -- the answered request ----------------------------------------------------
    cdef response_done(self, AsgiExchange exchange):
        """``exchange``'s response is complete: the next request, or idle, or close."""
        self.engine.requests += 1
        if not exchange.keep_alive or self.closed:
            if (self.parsing is exchange or self.parser is None) and not self.closed:
                # Its body still comes, or what follows an upgrade not made:
                # closing with bytes unread would reset, the answer with it.
                self.linger()
            else:
                self.close_after_write()
            return
        self.current = None
        if self.queue:
            self.current = self.queue.popleft()
            if self.refusal is None:
                self.resume()
            self.current.start()
        elif self.refusal is not None:
            self.send_refusal()
        elif self.in_head:
            if self.engine.head_timeout > 0 and self.timer == TIMER_NONE:
                self.arm(TIMER_HEAD, monotonic() + self.engine.head_timeout)
        elif self.parsing is None:
            if self.engine.stopping:
                self.close_after_write()
                return
            self.partial = False
            if self.engine.keep_alive > 0:
                self.arm(TIMER_IDLE, monotonic() + self.engine.keep_alive)
            self.resume()
        else:
            # Answered before its body ended (an early 401 or 413 from the
            # app): the rest is read and dropped (AsgiExchange.on_body), then
            # the connection is idle (on_message_complete).
            self.discard_until = monotonic() + DISCARD_MAX
            self.arm(TIMER_DISCARD, min(monotonic() + self.engine.keep_alive,
                                        self.discard_until))
            self.resume()

    cdef shutdown(self):
        if self.current is not None:
            self.current.keep_alive = False
            for exchange in self.queue:
                (<AsgiExchange>exchange).keep_alive = False
        elif not self.in_head:
            self.arm(TIMER_GRACE, self.engine.grace_until)

    # -- timers ------------------------------------------------------------------
    cdef arm(self, int timer, double deadline):
        self.timer = timer
        self.deadline = deadline

    cdef expired(self):
        cdef int timer = self.timer
        self.timer = TIMER_NONE
        if timer == TIMER_HEAD:
            self.engine.head_timeouts += 1
            if self.partial and self.current is None and not self.queue:
                # As nginx and gunicorn: a slow but real client sees why.
                self.send_parts([self.simple(408, TIMEOUT_BODY)])
                self.linger()
            else:
                self.close()
        else:
            self.close()

    cdef linger(self):
        """The answer is the last: shut the write side once it is out, drop input."""
        self.lingering = True
        self.parser = None
        self.arm(TIMER_LINGER, monotonic() + LINGER)
        if self.paused:
            self.paused = False
        if not self.out:
            shutdown(self.fd, SHUT_WR)
        self.update()

    # -- writing -----------------------------------------------------------------
    cdef bytes simple(self, int status, bytes body):
        """A whole plain-text answer that ends the connection."""
        return b"".join([status_line(status), self.engine.default_head,
                         b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                         b"connection: close\r\n\r\n" % len(body), body])

    cdef send_parts(self, list parts):
        """Write ``parts`` (bytes) in order after what is unsent: at once with one
        writev where the socket has room, the rest kept for EPOLLOUT."""
        cdef iovec iov[16]
        cdef int count = 0, i
        cdef ssize_t n, total = 0
        cdef bytes part
        if self.closed:
            return
        if self.engine.corked is not None or self.out or len(parts) > 16:
            for part in parts:
                self.out += part
            if self.engine.corked is not None:
                # Written at the end of the engine's pass (corking), or now
                # once large: a large response goes out as it grows.
                if not self.corked:
                    self.corked = True
                    self.engine.corked.append(self)
                if len(self.out) > HIGH_WATER:
                    self.on_writable()
            elif self.interest & EPOLLOUT == 0:
                self.on_writable()
            return
        for part in parts:
            if PyBytes_GET_SIZE(part):
                iov[count].iov_base = <void*>PyBytes_AS_STRING(part)
                iov[count].iov_len = PyBytes_GET_SIZE(part)
                total += iov[count].iov_len
                count += 1
        if count == 0:
            return
        n = writev(self.fd, iov, count)
        if n == total:
            return
        if n < 0:
            if not (would_block(errno) or errno == EINTR):
                self.close()          # EPIPE, ECONNRESET: the client is gone
                return
            n = 0
        for i in range(count):
            if n >= <ssize_t>iov[i].iov_len:
                n -= iov[i].iov_len
                continue
            self.out += (<char*>iov[i].iov_base)[n:iov[i].iov_len]
            n = 0
        self.update()

    cdef on_writable(self):
        cdef ssize_t n
        if self.out:
            n = write(self.fd, <char*>self.out, len(self.out))
            if n < 0:
                if not (would_block(errno) or errno == EINTR):
                    self.close()
                    return
            elif n:
                del self.out[:n]
        if not self.out:
            if self.close_when_flushed:
                self.close()
                return
            if self.upgrade_rest is not None:
                rest, self.upgrade_rest = self.upgrade_rest, None
                self.hand_over(rest)
                return
            if self.lingering:
                shutdown(self.fd, SHUT_WR)
            if self.drained is not None:
                if not self.drained.done():
                    self.drained.set_result(None)
                self.drained = None
        self.update()

    cdef object wait_drained(self):
        """A future done once unsent bytes fall to nothing (or the connection closes)."""
        if self.drained is None:
            self.drained = self.engine.loop.create_future()
        return self.drained

    cdef close_after_write(self):
        if not self.out:
            self.close()              # no epoll_ctl first: the close's own DEL is enough
            return
        self.paused = True
        self.close_when_flushed = True
        if not self.corked:           # corked: written at the pass's end, then closed or updated
            self.update()

    # -- epoll interest ----------------------------------------------------------
    cdef pause(self):
        if not self.paused:
            self.paused = True
            self.update()

    cdef resume(self):
        if (self.paused and not self.close_when_flushed and self.refusal is None
                and self.upgrade_rest is None and len(self.queue) < PIPELINE_DEPTH):
            self.paused = False
            self.update()

    cdef update(self):
        cdef epoll_event ev
        cdef unsigned int want = 0
        if self.closed:
            return
        if not self.paused:
            want |= EPOLLIN
        if self.out and not self.corked:    # a corked one is written at the pass's end
            want |= EPOLLOUT
        ev.events = want
        ev.data.ptr = <void*>self
        if not self.registered:
            # The first interest: the connection has been read once already
            # (Engine._attach), and one answered and closed before this
            # never enters the set at all.
            if epoll_ctl(self.engine.epfd, EPOLL_CTL_ADD, self.fd, &ev) < 0:
                err = errno       # ENOMEM, or the user's max_user_watches
                self.close()
                self.engine.loop.call_exception_handler({
                    "message": "a connection could not be watched, closed",
                    "exception": OSError(err, "epoll_ctl(ADD) failed")})
                return
            self.registered = True
            self.interest = want
        elif want != self.interest:
            epoll_ctl(self.engine.epfd, EPOLL_CTL_MOD, self.fd, &ev)
            self.interest = want

    # -- the end -----------------------------------------------------------------
    cdef detach(self):
        """Forget the fd (it stays open): out of the epoll set and the engine."""
        self.closed = True
        if self.registered:
            epoll_ctl(self.engine.epfd, EPOLL_CTL_DEL, self.fd, NULL)
        del self.engine.conns[self.fd]
        self.parser = None            # it holds our bound methods: no cycle left
        self.timer = TIMER_NONE
        if self.drained is not None:
            if not self.drained.done():
                self.drained.set_result(None)
            self.drained = None

    cdef close(self):
        if self.closed:
            return
        self.detach()
        close(self.fd)
        for exchange in [self.current, self.parsing, *self.queue]:
            if exchange is not None:
                (<AsgiExchange>exchange).on_disconnect()
        self.current = self.parsing = None
        self.queue.clear()
        owner, self.owner = self.owner, None
        owner.finish()

    cdef hand_over(self, bytes rest):
        """A WebSocket upgrade: the fd goes, with the request as read, to uvicorn's
        protocols (the engine speaks HTTP/1.1 only)."""
        cdef char byte
        cdef ssize_t n = recv(self.fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT)
        if n == 0 or (n < 0 and not (would_block(errno) or errno == EINTR)):
            # The client has left already (its FIN or RST came with the
            # head): nobody to upgrade for.  Handed over, the new transport
            # saw the end before the app's first step, uvicorn skipped the
            # accept without calling the client gone, and the app's first
            # send raised: a traceback in the log for every such client.
            self.close()
            return
        head = [self.parser.get_method(), b" ", b"".join(self.url_parts), b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.detach()
        owner, self.owner = self.owner, None
        self.engine.on_upgrade(self.fd, b"".join(head) + rest, owner, self.server)


cdef bint _declares_body(list headers):
    """The head says a body follows: a Transfer-Encoding, or a Content-Length
    other than 0."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.lstrip(b"0")):
            return True
    return False


cdef bint _wants_websocket(list headers):
    for name, value in headers:
        if name == b"upgrade" and value.lower() == b"websocket":
            return True
    return False


cdef object _inet(sockaddr_storage *ss):
    cdef char text[INET6_ADDRSTRLEN]
    if ss.ss_family == AF_INET:
        inet_ntop(AF_INET, &(<sockaddr_in*>ss).sin_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs((<sockaddr_in*>ss).sin_port))
    if ss.ss_family == AF_INET6:
        inet_ntop(AF_INET6, &(<sockaddr_in6*>ss).sin6_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs((<sockaddr_in6*>ss).sin6_port))
    return None
