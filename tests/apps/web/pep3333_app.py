"""A bare WSGI app (no framework) that uses the corners of PEP 3333 a server must get right.

    GET /replace-start      start_response 200, then again with exc_info (500) before any
                            body: the client must see the 500 and its body
    GET /error-after-body   a first body part, then an exception: the headers are out, so
                            the server must drop the connection, not start again
    GET /write              the legacy write() callable, then a returned part
    GET /no-start           returns a body without calling start_response
    GET /bad-header?h=K     a header the server must refuse (a 500 instead): K=crlf, a
                            value that would end the header and forge another; K=name, a
                            name with a space; K=latin1, a value outside Latin-1
    GET /hold               "first\\n", then waits (up to 10 s) for GET /release before
                            "second\\n": the first part must reach the client meanwhile
    GET /release            lets /hold go on
    GET /closed             how many response iterables the server has closed
    GET /big?n=N            N parts of 16 KiB (part i: the byte i % 256), made as they are
                            asked for; GET /made: how many were made so far
    GET /endless            16 KiB parts until the server stops asking (then close())
    GET /whoami             {"id", "index", "pid", "kind"}
    GET /thread?spin=S      {"thread"}: the name of the thread that ran the call, after
                            S seconds of CPU work (default 0)
    GET /sleep?s=S          sleeps S seconds in the call, then answers /thread's JSON
    GET /block?s=S          blocks the worker's event loop S seconds (common.block_loop)
    GET /policy             {"thread", "policy", "main"}: the scheduling policy of the thread
                            that ran the call and of the worker's main (loop) thread
    GET /requests-served    {"requests": fastfork.web.requests_served()} of this worker
    GET /target...          {"path", "query"}: PATH_INFO and QUERY_STRING as the server
                            read the request target (any path under /target)
    GET /headers            {key: value} of every HTTP_ key of the environ
    POST /read-body         reads wsgi.input to its end; GET /last-read: {"reading": true}
                            meanwhile, then {"got": bytes read, "raised": the exception's
                            class name or null} of the last
    POST /stream-then-read  "first\n", then reads wsgi.input whole and answers its length
"""

import json
import os
import sys
import threading
import time

import common

_released = threading.Event()
_closed = []
_last_read = {}
_made = [0]
PART = 16384


class _Closing:
    """A response iterable with close(), which PEP 3333 says the server must call."""

    def __init__(self, parts):
        self.parts = parts

    def __iter__(self):
        return iter(self.parts)

    def close(self):
        _closed.append(1)


def _json(start_response, data):
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/whoami":
        return _json(start_response, common.whoami("pep3333"))
    if path == "/requests-served":
        return _json(start_response, common.requests_served())
    if path == "/read-body":
        _last_read.clear()
        _last_read["reading"] = True
        got, raised = 0, None
        try:
            while chunk := environ["wsgi.input"].read(65536):
                got += len(chunk)
        except Exception as exc:
            raised = type(exc).__name__
        _last_read.update(got=got, raised=raised, reading=False)
        return _json(start_response, dict(_last_read))
    if path == "/stream-then-read":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream_then_read(environ["wsgi.input"])
    if path == "/last-read":
        return _json(start_response, dict(_last_read))
    if path == "/headers":
        return _json(start_response, {key: value for key, value in environ.items()
                                      if key.startswith("HTTP_")})
    if path.startswith("/target"):
        return _json(start_response, {"path": path, "query": environ["QUERY_STRING"]})
    if path == "/thread":
        spin = float(environ["QUERY_STRING"].partition("=")[2] or 0)
        until = time.thread_time() + spin
        while time.thread_time() < until:
            pass
        return _json(start_response, {"thread": threading.current_thread().name})
    if path == "/policy":
        names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_BATCH: "SCHED_BATCH"}
        return _json(start_response, {
            "thread": threading.current_thread().name,
            "policy": names.get(os.sched_getscheduler(0), "other"),
            "main": names.get(os.sched_getscheduler(os.getpid()), "other")})
    if path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"].partition("=")[2]))
        return _json(start_response, {"thread": threading.current_thread().name})
    if path == "/block":
        common.block_loop(float(environ["QUERY_STRING"].partition("=")[2]))
        return _json(start_response, common.whoami("pep3333"))
    if path == "/closed":
        return _json(start_response, {"closed": len(_closed)})
    if path == "/replace-start":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("found a problem after start_response")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
        return [b"replaced"]
    if path == "/error-after-body":
        return _error_after_body(start_response)
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one,")
        write(b"two,")
        return _Closing([b"three"])
    if path == "/no-start":
        return [b"nobody called start_response"]
    if path == "/bad-header":
        bad = {"crlf": ("X-Note", "one\r\nX-Forged: yes"), "name": ("X Note", "one"),
               "latin1": ("X-Note", "\u20ac")}[environ["QUERY_STRING"][2:]]
        start_response("200 OK", [("Content-Type", "text/plain"), bad])
        return [b"must not be sent"]
    if path == "/hold":
        _released.clear()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _held()
    if path == "/big":
        _made[0] = 0
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _big(int(environ["QUERY_STRING"].partition("=")[2]))
    if path == "/made":
        return _json(start_response, {"made": _made[0]})
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _Closing(_endless())
    if path == "/release":
        _released.set()
        return _json(start_response, {"released": True})
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found: " + path.encode("latin-1")]


def _error_after_body(start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial"
    try:
        raise ValueError("failed after the headers went out")
    except ValueError:
        start_response("500 Internal Server Error", [], sys.exc_info())


def _stream_then_read(stream):
    yield b"first\n"
    yield b"%d\n" % len(stream.read())


def _held():
    yield b"first\n"
    _released.wait(10)
    yield b"second\n" if _released.is_set() else b"never released\n"


def _big(n):
    for i in range(n):
        _made[0] = i + 1
        yield bytes([i % 256]) * PART


def _endless():
    while True:
        yield b"x" * PART
