# A WSGI app called on the loop thread (``Engine(wsgi_app=...)``): the request
# body is read whole by the engine first (up to ``body_limit``, else 413),
# the environ built here, the response written from here.  No thread, no
# loop round trip, no Task: for apps that do not block (a blocking one
# stalls every connection of the worker; those keep the thread pool, the
# default).

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
    """PEP 3333's ``start_response`` for one request; ``write`` is its write()."""
    cdef AsgiExchange ex
    cdef object status
    cdef list headers
    cdef bint sent                # the head went out: start_response is final

    def __call__(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.sent:
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
            self.ex.wsgi_part(self, bytes(data), True)


cdef run_wsgi(AsgiExchange ex):
    cdef Engine engine = ex.conn.engine
    cdef StartResponse start = StartResponse.__new__(StartResponse)
    body = b"".join(ex.body)
    ex.body = []
    ex.buffered = 0
    start.ex = ex
    try:
        if engine.scope_filter is not None:
            engine.scope_filter(ex.scope)
        iterable = engine.wsgi_app(build_environ(ex, body), start)
        try:
            if type(iterable) is list and len(<list>iterable) == 1 and not start.sent:
                ex.wsgi_part(start, bytes((<list>iterable)[0]), False, True)
            else:
                for chunk in iterable:
                    if chunk:
                        ex.wsgi_part(start, bytes(chunk), True)
                    if ex.disconnected:
                        break
                if start.status is None:
                    raise RuntimeError("the WSGI app returned without calling start_response")
                ex.wsgi_part(start, b"", False)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
    except BaseException as exc:
        engine.logger.error("Exception in WSGI application\n", exc_info=exc)
        if ex.disconnected or ex.complete:
            return
        if not start.sent:
            ex.head = None
            ex.started = False
            ex.has_length = ex.chunked = False
            ex.keep_alive = False
            ex.start_response({"type": "http.response.start", "status": 500,
                               "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                           (b"content-length", b"21")]})
            ex.send_body(b"Internal Server Error", False)
        else:
            ex.abort()
