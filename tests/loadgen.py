"""Bounded, self-stopping load for the fault tests: loopback only, every request counted.

``Load(address, ...)`` runs ``concurrency`` threads; each opens a new
connection, sends one line, reads one reply line and closes, over and over,
until ``duration`` seconds have passed, ``max_requests`` were sent, or
``stop()`` is called, whichever comes first.  ``join()`` returns a ``Report``:
requests sent, answered, failed, and (with ``keep_records``) one record per
request (start, end, client port, outcome) so a test can tell which requests
failed and when.
"""

import collections
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


class Load:
    def __init__(self, address, *, concurrency=8, duration=10.0, max_requests=100_000,
                 payload=b"ping\n", check=echo_check, timeout=5.0, keep_records=False,
                 source=None):
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be in 1..{MAX_CONCURRENCY}, got {concurrency}")
        if not 0 < duration <= MAX_DURATION:
            raise ValueError(f"duration must be in (0, {MAX_DURATION}] seconds, got {duration}")
        if not 0 < max_requests <= MAX_REQUESTS:
            raise ValueError(f"max_requests must be in 1..{MAX_REQUESTS}, got {max_requests}")
        if not payload.endswith(b"\n") or payload.count(b"\n") != 1:
            raise ValueError("payload must be exactly one line ending in b'\\n'")
        self.address = check_loopback(address)
        # Connect from this loopback address (a client the server can tell apart).
        self.source = None if source is None else check_loopback((source, 0))
        self.concurrency = concurrency
        self.duration = float(duration)
        self.max_requests = int(max_requests)
        self.payload = payload
        self.check = check
        self.timeout = float(timeout)
        self.keep_records = keep_records
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
            thread = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        self._stop.set()

    def join(self):
        """Wait for every thread (each finishes its request in flight); returns the Report."""
        # A request takes at most about 2 x timeout (connect, then read).
        limit = self._deadline + 2 * self.timeout + 5.0
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

    @property
    def answered(self):
        return self._answered

    # -- one thread ---------------------------------------------------------------------
    def _take(self):
        with self._lock:
            if (self._stop.is_set() or self._issued >= self.max_requests
                    or time.monotonic() >= self._deadline):
                return False
            self._issued += 1
            return True

    def _run(self):
        while self._take():
            start = time.monotonic()
            port, ok, detail = self._one()
            end = time.monotonic()
            with self._lock:
                if ok:
                    self._answered += 1
                else:
                    self._failed += 1
                    self._errors[detail] += 1
                if self.keep_records:
                    self._records.append(Record(start, end, port, ok, detail))

    def _one(self):
        port = None
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                if self.source is not None:
                    sock.bind(self.source)
                sock.connect(self.address)
                port = sock.getsockname()[1]
                sock.sendall(self.payload)
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as exc:
            return port, False, f"{type(exc).__name__}"
        if not reply:
            return port, False, "closed without a reply"
        if not self.check(self.payload, reply):
            return port, False, f"unexpected reply {reply[:40]!r}"
        return port, True, None
