"""The tests' one load generator: bounded, self-stopping, loopback only, every request counted.

``Load(address, ...)`` runs ``concurrency`` threads; each sends requests
through a *client* session, over and over, until ``duration`` seconds have
passed, ``max_requests`` were sent, or ``stop()`` is called, whichever comes
first.  ``join()`` returns a ``Report``: requests sent, answered, failed, and
(with ``keep_records``) one record per request (start, end, client port,
outcome) so a test can tell which requests failed and when.

Two clients: ``LineClient`` (the test apps' line protocol, a new connection
per request: one line out, one line back; the default) and ``HttpClient``
(``GET`` a path with ``http.client``, a new connection per request or
keep-alive).  Used as a context manager, a ``Load`` starts on entry and
stops and joins on exit.
"""

import collections
import http.client
import ipaddress
import socket
import threading
import time

# Hard bounds, whatever a caller asks for: load in a test must stop by itself.
MAX_DURATION = 120.0
MAX_REQUESTS = 1_000_000
MAX_CONCURRENCY = 256


class Record:
    """One request: when it ran, from which client port, and how it ended."""

    __slots__ = ("start", "end", "port", "ok", "detail")

    def __init__(self, start, end, port, ok, detail):
        self.start, self.end, self.port, self.ok, self.detail = start, end, port, ok, detail

    def __repr__(self):
        return (f"<Record port={self.port} {'ok' if self.ok else 'FAILED'} {self.detail!r} "
                f"{self.start:.3f}..{self.end:.3f}>")


class Report:
    def __init__(self, sent, answered, failed, elapsed, errors, records):
        self.sent = sent
        self.answered = answered
        self.failed = failed
        self.elapsed = elapsed
        self.errors = errors          # Counter: error description -> count
        self.records = records        # [Record] with keep_records, else []

    @property
    def rate(self):
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    def failures(self):
        return [r for r in self.records if not r.ok]

    def __str__(self):
        errors = f" errors={dict(self.errors)}" if self.errors else ""
        return (f"sent={self.sent} answered={self.answered} failed={self.failed} "
                f"in {self.elapsed:.2f}s ({self.rate:.0f} req/s){errors}")


def check_loopback(address):
    host, port = address
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"load goes to loopback addresses only, not {host!r}")
    return host, int(port)


def echo_check(payload, reply):
    """The default check: the server echoed the line back."""
    return reply == payload


class LineClient:
    """The test apps' line protocol: one line out, one line back, on a new
    connection per request.  ``payload`` is the line (bytes), or a function
    of the request's number (0, 1, ...) that gives it; ``check(payload,
    reply)`` says whether the reply is right; ``source``: connect from this
    loopback address (a client the server can tell apart)."""

    def __init__(self, payload=b"ping\n", check=None, timeout=5.0, source=None):
        if not callable(payload) and (not payload.endswith(b"\n") or payload.count(b"\n") != 1):
            raise ValueError("payload must be exactly one line ending in b'\\n'")
        self.payload = payload
        self.check = check or echo_check
        self.timeout = float(timeout)
        self.source = None if source is None else check_loopback((source, 0))

    def session(self, index):
        return self

    def request(self, address, n):
        """One request: ``(client port, ok, what went wrong or None, reply)``."""
        payload = self.payload(n) if callable(self.payload) else self.payload
        port = None
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                if self.source is not None:
                    sock.bind(self.source)
                sock.connect(address)
                port = sock.getsockname()[1]
                sock.sendall(payload)
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as exc:
            return port, False, f"{type(exc).__name__}", None
        if not reply:
            return port, False, "closed without a reply", None
        if not self.check(payload, reply):
            return port, False, f"unexpected reply {reply[:40]!r}", reply
        return port, True, None, reply

    def close(self):
        pass


class HttpClient:
    """``GET path`` with ``http.client``, expecting ``status``.  With
    ``keep_alive`` "half", every other thread keeps its connection open
    between requests (True: all of them; False: none).

    A reused keep-alive connection that closes under a request (a worker
    draining as the request crossed its close) is *retried*, as HTTP clients
    do (RFC 9112, 9.3.1): counted in ``Load.retried``, not failed."""

    RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)

    def __init__(self, path="/", status=200, keep_alive=False, timeout=10.0):
        self.path, self.status, self.keep_alive, self.timeout = path, status, keep_alive, timeout

    def session(self, index):
        keep = self.keep_alive if self.keep_alive != "half" else index % 2 == 1
        return _HttpSession(self, keep)


class _HttpSession:
    def __init__(self, client, keep_alive):
        self.client, self.keep_alive = client, keep_alive
        self.conn, self.reused = None, False

    def request(self, address, n):
        client = self.client
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(*address, timeout=client.timeout)
                self.reused = False
            self.conn.request("GET", client.path)
            response = self.conn.getresponse()
            reply = response.read()
            port = self.conn.sock.getsockname()[1] if self.conn.sock else None
        except (OSError, http.client.HTTPException) as exc:
            retry = self.reused and isinstance(exc, HttpClient.RETRYABLE)
            detail = ("retry" if retry else
                      f"{exc!r} on a {'reused' if self.reused else 'new'} connection")
            self.close()
            return None, False, detail, None
        self.reused = True
        if not self.keep_alive:
            self.close()
        if response.status != client.status:
            return port, False, f"status {response.status}", reply
        return port, True, None, reply

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Load:
    def __init__(self, address, *, concurrency=8, duration=10.0, max_requests=100_000,
                 client=None, keep_records=False, keep_replies=False, **line_options):
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be in 1..{MAX_CONCURRENCY}, got {concurrency}")
        if not 0 < duration <= MAX_DURATION:
            raise ValueError(f"duration must be in (0, {MAX_DURATION}] seconds, got {duration}")
        if not 0 < max_requests <= MAX_REQUESTS:
            raise ValueError(f"max_requests must be in 1..{MAX_REQUESTS}, got {max_requests}")
        if client is not None and line_options:
            raise ValueError(f"{', '.join(line_options)}: options of the default LineClient")
        self.address = check_loopback(address)
        self.client = client or LineClient(**line_options)
        self.concurrency = concurrency
        self.duration = float(duration)
        self.max_requests = int(max_requests)
        self.keep_records = keep_records
        self.keep_replies = keep_replies
        self.replies = []             # the answered requests' replies, with keep_replies
        self.retried = 0              # requests a closing keep-alive connection made retry
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._issued = 0
        self._answered = 0
        self._failed = 0
        self._errors = collections.Counter()
        self._records = []
        self._threads = []
        self._started = None
        self._ended = None

    # -- control --------------------------------------------------------------------
    def start(self):
        self._started = time.monotonic()
        self._deadline = self._started + self.duration
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._run, args=(i,), name=f"load-{i}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        self._stop.set()

    def join(self):
        """Wait for every thread (each finishes its request in flight); returns the Report."""
        # A request takes at most about 2 x timeout (connect, then read).
        limit = self._deadline + 2 * getattr(self.client, "timeout", 10.0) + 5.0
        for thread in self._threads:
            thread.join(max(0.0, limit - time.monotonic()))
            if thread.is_alive():
                raise RuntimeError(f"load thread {thread.name} did not stop")
        self._ended = time.monotonic()
        return self.report()

    def run(self):
        """start() then join()."""
        return self.start().join()

    def report(self):
        with self._lock:
            elapsed = (self._ended or time.monotonic()) - self._started
            return Report(self._issued, self._answered, self._failed, elapsed,
                          collections.Counter(self._errors), list(self._records))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.join()

    @property
    def answered(self):
        return self._answered

    @property
    def sent(self):
        return self._issued

    def wait_more(self, n, what, timeout=15.0):
        """Wait until ``n`` more requests than now were answered."""
        target = self._answered + n
        deadline = time.monotonic() + timeout
        while self._answered < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.report()}")
            if not any(thread.is_alive() for thread in self._threads):
                raise AssertionError(f"the load ended before {what}: {self.report()}")
            time.sleep(0.01)

    # -- one thread ---------------------------------------------------------------------
    def _take(self):
        with self._lock:
            if (self._stop.is_set() or self._issued >= self.max_requests
                    or time.monotonic() >= self._deadline):
                return None
            self._issued += 1
            return self._issued - 1

    def _run(self, index):
        session = self.client.session(index)
        try:
            while (n := self._take()) is not None:
                start = time.monotonic()
                port, ok, detail, reply = session.request(self.address, n)
                end = time.monotonic()
                with self._lock:
                    if ok:
                        self._answered += 1
                        if self.keep_replies:
                            self.replies.append(reply)
                    elif detail == "retry":
                        self.retried += 1
                        self._issued -= 1       # sent again, not counted twice
                    else:
                        self._failed += 1
                        self._errors[detail] += 1
                    if self.keep_records and detail != "retry":
                        self._records.append(Record(start, end, port, ok, detail))
        finally:
            session.close()
