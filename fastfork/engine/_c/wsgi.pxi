# A WSGI app called by the engine (``Engine(wsgi_app=...)``): the request
# body read whole by the engine first, the environ built here, the response
# written from here.  Two models:
#
# - on the loop thread (``wsgi_threads=0``): no thread, no loop round trip,
#   no Task; for apps that do not block (one that blocks stalls every
#   connection of the worker).  A body past ``body_limit`` is a 413.
# - on a pool of ``wsgi_threads`` threads, fed from here: the environ is
#   built on the loop, the call and the iteration of its response run on a
#   pool thread, which queues the response's parts on the request and wakes
#   the loop once for however many it queued (``WsgiPool.post``, pool.pxi);
#   the loop writes them.  A one-part response is one hand-off each way and
#   no Python-level queue, future, Task or coroutine.  A thread streaming a
#   body waits when it gets more than HIGH_WATER ahead of the client.  A
#   request whose body does not fit ``body_limit`` (or is chunked) is not
#   served here but by the ASGI app (the WSGI adapter), which streams it.

import io
import sys

cdef dict ENVIRON_KEYS = {}       # header name -> its environ key, built once per name


cdef str environ_key(bytes name):
    key = ENVIRON_KEYS.get(name)
    if key is None:
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(ENVIRON_KEYS) < 1000:      # bounded: names are the client's choice
            ENVIRON_KEYS[name] = key
    return key


cdef dict build_environ(AsgiExchange ex, bytes body):
    cdef HttpConn conn = ex.conn
    cdef Engine engine = conn.engine
    scope = ex.scope
    raw_path = scope["raw_path"]
    if engine.root_path:
        raw_path = raw_path[len(engine.root_path_b):]
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = urllib.parse.unquote_to_bytes(raw_path).decode("latin-1")
    server = conn.server_address or ("localhost", 80)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": engine.root_path,
        "PATH_INFO": path,
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": "HTTP/" + scope["http_version"],
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope["scheme"],
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        # The input ends where the body ends, chunked or not: without this
        # Werkzeug reads a chunked body (no CONTENT_LENGTH) as empty.
        "wsgi.input_terminated": True,
    }
    client = scope["client"]      # the PROXY header's, or X-Forwarded-For's (scope_filter)
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    for name, value in scope["headers"]:
        if engine.header_map != MAP_DANGEROUS and b"_" in name:
            continue              # header_map "drop" ("refuse" refused it while parsing)
        if name == b"content-type":
            key = "CONTENT_TYPE"
        elif name == b"content-length":
            key = "CONTENT_LENGTH"
        else:
            key = environ_key(name)
        text = value.decode("latin-1")
        if key in environ:
            text = environ[key] + "," + text
        environ[key] = text
    return environ


@cython.final
cdef class StartResponse:
    """PEP 3333's ``start_response`` for one request; ``write`` is its write().

    On the pool, the response's parts go through here from the thread to the
    loop: ``push`` (thread) queues one and wakes the loop, ``drain`` (loop)
    writes what is queued."""
    cdef AsgiExchange ex
    cdef object status
    cdef list headers
    cdef bint sent                # the head went out (loop side): a failure is an abort
    cdef bint committed           # the app's side: a body part was given (exc_info re-raises)
    # The pool's hand-off; parts, done and failed are set by the thread.
    cdef bint threaded
    cdef list parts
    cdef bint done                # the app's response is all in parts
    cdef bint failed              # the app raised (logged by the thread)
    cdef bint wake_posted         # a drain is on its way to the loop
    cdef bint finished            # the loop has seen done or failed
    cdef Py_ssize_t ahead         # bytes pushed since the thread last waited for the client
    cdef Py_ssize_t pushed        # body parts pushed: a response of one is framed by length
    cdef object room              # a threading.Event the thread waits on, or None

    def __call__(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.committed:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise RuntimeError("start_response was called twice without exc_info")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data):
        if self.status is None:
            raise RuntimeError("write() was called before start_response")
        if data:
            if self.threaded:
                self.push(bytes(data))
            else:
                self.committed = True
                self.ex.wsgi_part(self, bytes(data), True)

    # -- the pool's hand-off -----------------------------------------------------
    cdef push(self, bytes data):
        """(thread) Queue a body part for the loop; wait while too far ahead."""
        self.committed = True
        self.parts.append(data)
        self.pushed += 1
        self.ahead += len(data)
        if self.ahead > HIGH_WATER:
            self.room = threading.Event()
            self.wake()
            self.room.wait()
            self.room = None
            self.ahead = 0
        else:
            self.wake()

    cdef wake(self):
        """(thread) Make sure a drain is on its way to the loop."""
        if not self.wake_posted:
            self.wake_posted = True
            self.ex.conn.engine.pool.post(self)

    cdef drain(self):
        """(loop) Write what the thread queued; finish the request once it is done."""
        cdef AsgiExchange ex = self.ex
        cdef Engine engine = ex.conn.engine
        cdef bint done, failed
        self.wake_posted = False
        parts, self.parts = self.parts, []
        done, failed = self.done, self.failed      # read after the swap: nothing is lost
        if (done or failed) and not self.finished:
            self.finished = True
            ex.in_pool = False
            engine.in_threads -= 1
            engine.app_ended()
        if not (ex.complete or ex.disconnected):
            try:
                data = b"".join(parts) if len(parts) != 1 else parts[0]
                if done and not failed:
                    # One part, none sent yet: Content-Length, as on the loop
                    # thread for a list of one; a stream stays chunked.
                    ex.wsgi_part(self, data, False, not self.sent and self.pushed <= 1)
                elif data:
                    ex.wsgi_part(self, data, True)
                    if ex.has_length and ex.unsent_length == 0 and not ex.complete:
                        # All the Content-Length promised is out: the response
                        # is complete now, not when the thread says it is done
                        # (a client that has it all may close first).
                        ex.send_body(b"", False)
                if failed:
                    wsgi_failed(ex, self)
            except BaseException as exc:
                app_failed(ex, self, exc)
        if self.finished:
            ex.conn.update()          # into the epoll set if it was left out (Engine._watch)
        self.let_thread_on()

    cdef let_thread_on(self):
        """(loop) Wake a thread waiting for room once the client has taken enough."""
        cdef HttpConn conn = self.ex.conn
        if self.room is None:
            return
        if len(conn.out) <= HIGH_WATER or conn.closed or self.ex.disconnected:
            self.room.set()
        else:
            conn.wait_drained().add_done_callback(self._room_made)

    def _room_made(self, _):
        self.let_thread_on()


cdef call_wsgi(AsgiExchange ex):
    """The request's body is in: call the app, here or on the pool."""
    cdef Engine engine = ex.conn.engine
    cdef StartResponse start = StartResponse.__new__(StartResponse)
    body = joined(ex.body)
    ex.body = []
    ex.buffered = 0
    start.ex = ex
    if engine.scope_filter is not None:
        engine.scope_filter(ex.scope)
    environ = build_environ(ex, body)
    if engine.pool is None:
        run_wsgi(ex, start, environ)
        return
    environ["wsgi.multithread"] = True
    start.threaded = True
    start.parts = []
    ex.in_pool = True
    engine.in_threads += 1
    engine.app_started()
    engine.pool.submit(start, environ)


cdef run_in_thread(StartResponse start, dict environ):
    cdef AsgiExchange ex = start.ex
    cdef Engine engine = ex.conn.engine
    try:
        iterable = engine.wsgi_app(environ, start)
        try:
            for chunk in iterable:
                if chunk:
                    start.push(bytes(chunk))
                if ex.disconnected:
                    break
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
    except BaseException as exc:
        engine.logger.error("Exception in WSGI application\n", exc_info=exc)
        start.failed = True
    else:
        start.done = True
    start.wake()


cdef run_wsgi(AsgiExchange ex, StartResponse start, dict environ):
    """Call the app on the loop thread and write its response."""
    cdef Engine engine = ex.conn.engine
    engine.app_started()
    try:
        _run_wsgi(ex, start, environ)
    finally:
        engine.app_ended()


cdef _run_wsgi(AsgiExchange ex, StartResponse start, dict environ):
    cdef Engine engine = ex.conn.engine
    cdef _LoopStream stream
    try:
        iterable = engine.wsgi_app(environ, start)
    except BaseException as exc:
        app_failed(ex, start, exc)
        return
    if type(iterable) is list and len(<list>iterable) == 1 and not start.sent:
        try:
            start.committed = True
            ex.wsgi_part(start, bytes((<list>iterable)[0]), False, True)
        except BaseException as exc:
            app_failed(ex, start, exc)
        return
    stream = _LoopStream.__new__(_LoopStream)
    stream.ex, stream.start, stream.iterable = ex, start, iterable
    stream.pump()


@cython.final
cdef class _LoopStream:
    """A response iterated on the loop thread part by part: once more than
    HIGH_WATER of it waits for the client, the next part is asked for only
    when that is written, as a pool thread waits (else a client that does not
    read had the whole response held for it: 8 of them, 50 MB each, 389 MiB)."""
    cdef AsgiExchange ex
    cdef StartResponse start
    cdef object iterable
    cdef object iterator

    cdef pump(self):
        cdef AsgiExchange ex = self.ex
        cdef HttpConn conn = ex.conn
        try:
            if self.iterator is None:
                self.iterator = iter(self.iterable)
            while not (ex.disconnected or conn.closed):
                try:
                    chunk = next(self.iterator)
                except StopIteration:
                    ex.wsgi_part(self.start, b"", False)
                    break
                if chunk:
                    self.start.committed = True
                    ex.wsgi_part(self.start, bytes(chunk), True)
                if len(conn.out) > HIGH_WATER and not (ex.disconnected or conn.closed):
                    conn.wait_drained().add_done_callback(self._drained)
                    return
        except BaseException as exc:
            app_failed(ex, self.start, exc)
        self.finish()

    def _drained(self, _):
        cdef Engine engine = self.ex.conn.engine
        engine.app_started()
        try:
            self.pump()
        finally:
            engine.app_ended()

    cdef finish(self):
        close = getattr(self.iterable, "close", None)
        self.iterable = self.iterator = None
        if close is not None:
            try:
                close()
            except BaseException as exc:
                app_failed(self.ex, self.start, exc)


cdef app_failed(AsgiExchange ex, StartResponse start, exc):
    """(loop) The app, or its response, raised ``exc``: logged, then ``wsgi_failed``."""
    ex.conn.engine.logger.error("Exception in WSGI application\n", exc_info=exc)
    wsgi_failed(ex, start)


cdef wsgi_failed(AsgiExchange ex, StartResponse start):
    """The app (or its response) failed: a 500 if nothing was sent yet, else the
    connection is cut (a response cut short must not look complete)."""
    if ex.disconnected or ex.complete:
        return
    if not start.sent:
        ex.head = None
        ex.started = False
        ex.has_length = ex.chunked = False
        ex.unsent_length = 0
        ex.keep_alive = False
        ex.start_response({"type": "http.response.start", "status": 500,
                           "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                       (b"content-length", b"21")]})
        ex.send_body(b"Internal Server Error", False)
    else:
        ex.abort()
