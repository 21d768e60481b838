# One request as ASGI: the scope, ``receive`` and ``send``, and the app run as
# a Task on the worker's loop; the same messages, checks and errors as
# uvicorn's httptools protocol (uvicorn/protocols/http/httptools_impl.py).

cdef dict DISCONNECT_TEMPLATE = {"type": "http.disconnect"}
cdef bytes CHUNK_END = b"0\r\n\r\n"


async def _service_unavailable(scope, receive, send):
    """uvicorn's answer past ``limit_concurrency``."""
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", b"19"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b"Service Unavailable", "more_body": False})


@cython.final
cdef class AsgiExchange:
    cdef HttpConn conn
    cdef dict scope
    cdef bint head_request
    cdef public bint keep_alive
    cdef bint expect_continue
    # The request body: parts read and not yet received by the app.
    cdef list body
    cdef Py_ssize_t buffered
    cdef bint message_complete
    cdef bint final_received      # the app has had the message with more_body False
    cdef object waiter            # receive() waits on it
    # The response.
    cdef bint started
    cdef bint complete
    cdef bint disconnected
    cdef bint chunked
    cdef bint has_length
    cdef bint says_close          # the app's own Connection: close
    cdef long long unsent_length
    cdef bytes head               # the response head, written with the first body part
    cdef object task
    cdef bint stepped             # the task has begun (the engine watches the fd after that)
    cdef bint in_pool             # WSGI: its call is on the pool, not yet drained as done
    cdef bint wsgi                # served as WSGI by the engine (else the ASGI app)
    cdef bint wsgi_due            # WSGI: called once its body is complete

    cdef setup(self, HttpConn conn, bytes method, bytes url, list headers, str version,
                bint keep_alive, bint expect_continue):
        cdef Engine engine = conn.engine
        cdef const char *p = PyBytes_AS_STRING(url)
        cdef const char *q
        self.conn = conn
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.body = []
        method_str = METHODS.get(method)
        if method_str is None:
            method_str = method.decode("ascii")
        self.head_request = method == b"HEAD"
        # Origin form without a "#" (a fragment no client should send, which
        # httptools' own parser cuts off, as uvicorn's protocol does).
        if (PyBytes_GET_SIZE(url) and p[0] == b'/'
                and memchr(p, b'#', PyBytes_GET_SIZE(url)) == NULL):
            q = <const char*>memchr(p, b'?', PyBytes_GET_SIZE(url))
            if q == NULL:
                raw_path, query = url, b""
            else:
                raw_path, query = url[:q - p], url[q - p + 1:]
        else:
            # Absolute form or "*": httptools' own URL parser.
            parsed = parse_url(url)
            raw_path, query = parsed.path or b"", parsed.query or b""
            if not raw_path and method != b"OPTIONS":
                raw_path = b"/"           # http://host: RFC 9112 3.2.2's empty path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version,
            "server": conn.server_address,
            "client": conn.client,
            "scheme": "http",
            "method": method_str,
            "root_path": engine.root_path,
            "path": engine.root_path + path if engine.root_path else path,
            "raw_path": engine.root_path_b + raw_path if engine.root_path else raw_path,
            "query_string": query,
            "headers": headers,
        }
        if engine.wsgi_app is None:
            self.scope["state"] = engine.app_state.copy()
        else:
            # On the loop thread every request is WSGI (a body past the limit:
            # 413).  On the pool, one whose body is too large to read first,
            # or of unknown length, goes to the ASGI app instead: the WSGI
            # adapter, which streams it to the thread as it arrives.
            self.wsgi = engine.pool is None or _body_fits(headers, engine.body_limit)

    cdef start(self):
        cdef Engine engine = self.conn.engine
        if engine.limit_concurrency and (len(engine.conns) >= engine.limit_concurrency
                                         or len(engine.tasks) + engine.in_threads
                                         >= engine.limit_concurrency):
            # uvicorn's rule and answer (httptools_impl's on_headers_complete).
            engine.logger.warning("Exceeded concurrency limit.")
            self.task = engine.loop.create_task(self.run(_service_unavailable))
            engine.tasks.add(self.task)
            engine.app_started()
            return
        if self.wsgi:
            if self.message_complete:
                self.wsgi_due = False
                call_wsgi(self)
            else:
                self.wsgi_due = True      # the engine reads the body first
                if self.expect_continue:
                    self.expect_continue = False
                    self.conn.send_parts([CONTINUE])
            return
        self.task = engine.loop.create_task(self.run(engine.app))
        engine.tasks.add(self.task)
        engine.app_started()

    async def run(self, app):
        cdef Engine engine = self.conn.engine
        self.stepped = True
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            engine.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.started:
                await self.send_500()
            else:
                self.abort()
        else:
            if result is not None:
                engine.logger.error("ASGI callable should return None, but returned '%s'.",
                                    result)
                self.abort()
            elif not self.started and not self.disconnected:
                engine.logger.error("ASGI callable returned without starting response.")
                await self.send_500()
            elif not self.complete and not self.disconnected:
                engine.logger.error("ASGI callable returned without completing response.")
                self.abort()
        finally:
            engine.tasks.discard(self.task)
            self.task = None
            engine.app_ended()

    async def send_500(self):
        await self.send({"type": "http.response.start", "status": 500,
                         "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                     (b"content-length", b"21"), (b"connection", b"close")]})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error",
                         "more_body": False})

    cdef abort(self):
        if not self.conn.closed:
            self.conn.close()

    # -- the request body, from the connection -----------------------------------
    cdef on_body(self, bytes body):
        cdef Engine engine = self.conn.engine
        if self.complete or self.disconnected:
            return                    # answered already: the rest is read and dropped
        if self.wsgi:
            # Read whole before the call, so bounded: past the limit, a 413.
            if self.buffered + len(body) > engine.body_limit:
                raise self.conn.refusing(413, BODY_TOO_LARGE)
            add_part(self.body, body)
            self.buffered += len(body)
            return
        add_part(self.body, body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER:
            self.conn.pause()
        self.wake()

    cdef on_message_complete(self):
        self.message_complete = True
        if self.wsgi_due:
            self.conn.start_due = True    # called after the feed (see HttpConn.feed)
        self.wake()

    cdef on_disconnect(self):
        self.disconnected = True
        self.wake()

    cdef wake(self):
        if self.waiter is not None:
            if not self.waiter.done():
                self.waiter.set_result(None)
            self.waiter = None

    # -- ASGI --------------------------------------------------------------------
    async def receive(self):
        cdef HttpConn conn = self.conn
        if self.expect_continue and not self.started and not conn.closed:
            self.expect_continue = False
            conn.send_parts([CONTINUE])
        while True:
            if self.disconnected or self.complete:
                return dict(DISCONNECT_TEMPLATE)
            if self.buffered or (self.message_complete and not self.final_received):
                body = joined(self.body)
                self.body = []
                self.buffered = 0
                if self.message_complete:
                    self.final_received = True
                elif conn.parsing is self:
                    conn.resume()
                return {"type": "http.request", "body": body,
                        "more_body": not self.message_complete}
            if conn.parsing is self:
                conn.resume()
            self.waiter = conn.engine.loop.create_future()
            await self.waiter

    async def send(self, message):
        cdef HttpConn conn = self.conn
        if len(conn.out) > HIGH_WATER and not self.disconnected:
            await conn.wait_drained()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', "
                                   f"but got '{kind}'.")
            self.start_response(message)
        elif not self.complete:
            if kind != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', "
                                   f"but got '{kind}'.")
            self.send_body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response "
                               f"already completed.")

    cdef start_response(self, message):
        cdef bytes name, value
        cdef int status = message["status"]
        parts = self.open_head(status)
        for name, value in message.get("headers", ()):
            self.head_field(parts, name, value)
        self.close_head(parts, status)

    # The response head in three steps, so that a WSGI app's headers (str)
    # go straight into it, without an ASGI message in between (wsgi_part).
    cdef list open_head(self, int status):
        self.started = True
        self.says_close = False
        if self.expect_continue and not self.message_complete:
            # The client waits for a 100 that will not come: its body will
            # not follow, and the connection cannot be read past it.
            self.keep_alive = False
        self.expect_continue = False
        return [status_line(status), self.conn.engine.default_head]

    cdef head_field(self, list parts, bytes name, bytes value):
        cdef Py_ssize_t size = PyBytes_GET_SIZE(name)
        if bad_name(name):
            raise RuntimeError("Invalid HTTP header name.")
        if bad_value(value):
            raise RuntimeError("Invalid HTTP header value.")
        if size == 14 or size == 17 or size == 10:     # the three that frame the response
            lower = ascii_lower(name)
            if lower == b"content-length" and not self.chunked and not self.has_length:
                self.unsent_length = int(value)
                self.has_length = True
            elif lower == b"transfer-encoding" and value.lower() == b"chunked":
                self.unsent_length = 0
                self.has_length = False
                self.chunked = True
            elif lower == b"connection":
                if b"close" in [token.strip() for token in value.lower().split(b",")]:
                    self.keep_alive = False
                    self.says_close = True
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")

    cdef close_head(self, list parts, int status):
        cdef Engine engine = self.conn.engine
        if (not self.has_length and not self.chunked and not self.head_request
                and status != 204 and status != 304):
            if self.scope["http_version"] == "1.0":
                self.keep_alive = False   # no chunked framing in 1.0: the close ends it
            else:
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive and not self.says_close:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.head = b"".join(parts)
        if engine.access_logger is not None:
            scope = self.scope
            query = scope["query_string"]
            engine.access_logger.info(
                '%s - "%s %s HTTP/%s" %d', _client_addr(scope["client"]), scope["method"],
                scope["path"] + "?" + query.decode("ascii") if query else scope["path"],
                scope["http_version"], status)
        if self.task is not None:
            # The head waits for the first body part (one writev for both),
            # but no longer than this step of the app's task: an app that
            # starts a response and then awaits something else (a stream's
            # first event) must not hold its headers back.
            engine.loop.call_soon(self.flush_head)

    def flush_head(self):
        if self.head is not None and not self.disconnected:
            head, self.head = self.head, None
            self.conn.send_parts([head])

    cdef send_body(self, bytes body, bint more):
        cdef Py_ssize_t size = len(body)
        parts = []
        if self.head is not None:
            parts.append(self.head)   # with the first part: one writev for both
            self.head = None
        if self.head_request:
            self.unsent_length = 0
        elif self.chunked:
            if size:
                parts += [b"%x\r\n" % size, body, b"\r\n"]
            if not more:
                parts.append(CHUNK_END)
        else:
            if self.has_length:
                if size > self.unsent_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.unsent_length -= size
            parts.append(body)
        self.conn.send_parts(parts)
        if not more:
            if self.unsent_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.complete = True
            self.wake()
            self.conn.response_done(self)


    cdef wsgi_part(self, StartResponse start, bytes data, bint more, bint whole=False):
        """A WSGI response part; the head goes out with the first (PEP 3333).
        ``whole``: ``data`` is the whole body (framed by its length if the app
        did not say)."""
        cdef int status
        if not start.sent:
            if start.status is None:
                raise RuntimeError("the WSGI app returned without calling start_response")
            status = int(start.status.split(" ", 1)[0])
            parts = self.open_head(status)
            for key, value in start.headers:
                self.head_field(parts, key.encode("latin-1"), value.encode("latin-1"))
            if whole and not self.has_length and not self.chunked:
                self.head_field(parts, b"content-length", b"%d" % len(data))
            self.close_head(parts, status)
            start.sent = True     # only now: a failure before may still become a 500
        if not self.complete and not self.disconnected:
            self.send_body(data, more)


cdef add_part(list parts, bytes body):
    """Keep ``body`` (one of the parser's pieces) after ``parts``: small pieces
    after a small one go into one bytearray, so that a body sent in tiny
    chunks costs its size, not an object (some 40 bytes) per two-byte chunk."""
    cdef object last
    if PyBytes_GET_SIZE(body) < SMALL_PART and parts:
        last = parts[-1]
        if type(last) is bytearray:
            (<bytearray>last).extend(body)
            return
        if PyBytes_GET_SIZE(last) < SMALL_PART:
            parts[-1] = bytearray(last)
            (<bytearray>parts[-1]).extend(body)
            return
    parts.append(body)


cdef bytes joined(list parts):
    """``parts`` (bytes, bytearrays) as one bytes object."""
    if len(parts) == 1 and type(parts[0]) is bytes:
        return parts[0]
    return b"".join(parts)


cdef bint _body_fits(list headers, Py_ssize_t limit):
    """Does the request's body (by its head) fit in ``limit`` bytes?  A chunked
    one cannot be known to."""
    for name, value in headers:
        if name == b"transfer-encoding":
            return False
        if name == b"content-length":
            try:
                return int(value) <= limit
            except ValueError:
                return False              # llhttp refuses it: answered 400 anyway
    return True


cdef str _client_addr(client):
    if client is None:
        return ""
    return "%s:%d" % client
