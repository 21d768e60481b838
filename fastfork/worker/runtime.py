"""A worker's link to its primary: one ``WorkerRuntime`` per worker process.

A daemon thread reads the control channel (replies to ``listen``, messages
from the primary, ``stop``) so that blocking code and asyncio code are served
the same way; connections arrive on the data channel and are read by whoever
serves: the asyncio loop (``fastfork.worker.aio``) or a blocking
``Listener.accept()`` (``fastfork.worker.listener``).
"""

import asyncio
import concurrent.futures
import logging
import os
import random
import resource
import select
import signal
import socket
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

from ..addresses import DEFAULT_BACKLOG, Address, parse_address
from ..handoff.control import ControlChannel, MessageError
from ..handoff.wire import DEFAULT_STALL_MS, DEFAULT_WINDOW
from .listener import Listener

log = logging.getLogger("fastfork.worker")

LISTEN_TIMEOUT = 30.0
EXIT_PRIMARY_GONE = 70
# How long ``loaded`` waits for the primary's answer (it answers at once; a
# primary gone ends this worker anyway).
LOADED_TIMEOUT = 10.0


class WorkerRuntime:
    """This process's link to its primary."""

    def __init__(self, data_fd, control_fd, worker_id, index, policy, receiver_mod,
                 credit_fd=-1):
        self.id = worker_id
        self.index = index
        self.policy = policy
        # credit_fd: the page where credit goes back to the primary (the
        # Cython build), or -1; mapped by the Receiver, then not needed.
        try:
            self.receiver = receiver_mod.Receiver(data_fd, credit_fd)
        finally:
            if credit_fd >= 0:
                os.close(credit_fd)
        self.control = ControlChannel(socket.socket(fileno=control_fd))
        self.control.sock.setblocking(True)
        self.listeners = {}               # lid -> Listener (round-robin policy)
        self.stop_timeout = None
        # Until the primary's "config" says otherwise: short, so a worker that
        # starts beating before the config arrives is never taken for hung.
        self.heartbeat_interval = 0.1
        # The primary's credit window (its "config" says): how many fds it may
        # send before this worker takes them, so the room to have before
        # asking for more after running out of fds.
        self.window = DEFAULT_WINDOW
        # The primary's stall threshold (its config says), which sets how
        # often the loop ticks, and the watchdog's (fastfork.worker.liveness).
        self.stall_ms = DEFAULT_STALL_MS
        self.stall_log_ms = 100
        self.ticker = None                # set by the loop that reads the data channel
        self.watchdog = None
        self._lost_seen = 0               # receiver.lost already logged and reported
        self.read_later = False           # the last pump() gave a connection read next pass
        self._unreported = 0              # closes a full channel held back (least)
        self.stopping = threading.Event()
        # True while this worker imports its app (``fastfork run`` without
        # --preload): a stop then ends it at once, as it has nothing to drain.
        self.loading = False
        self._loaded_answer = threading.Event()
        self._last_beat = 0.0
        self.accepted = 0                 # connections blocking accept() returned
        # Set by a server that counts requests (fastfork.web): heartbeats report
        # them, and max-requests counts them instead of connections.
        self.request_counter = None
        # Likewise: connections closed at the request-head deadline (fastfork.web).
        self.head_timeout_counter = None
        # Readable once this worker is stopping (a blocking accept() waits on it too).
        self.stop_fd, self._stop_w = os.pipe2(os.O_CLOEXEC)
        # SIGTERM to a worker (kill, systemd's KillMode=control-group) means
        # "drain and exit", as in gunicorn.  The handler only writes here;
        # the control thread does the work.
        self._term_r, self._term_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        self._requests = {}
        self._next_request = 1
        self._lock = threading.Lock()     # requests and message handlers
        self.data_lock = threading.Lock()   # one reader of the data channel at a time
        self._message_handlers = []
        self._stop_handlers = []
        self._thread = threading.Thread(target=self._read_control, name="fastfork-control",
                                        daemon=True)
        self._thread.start()
        self.control.send({"t": "online"})

    # -- control channel ---------------------------------------------------------
    def _on_sigterm(self, signum, frame):
        try:
            os.write(self._term_w, b"t")
        except BlockingIOError:
            pass

    def _read_control(self):
        while True:
            readable, _, _ = select.select([self.control.sock, self._term_r], [], [])
            if self._term_r in readable:
                os.read(self._term_r, 64)
                if not self.stopping.is_set():
                    log.info("worker %d: SIGTERM, finishing open connections", self.id)
                    try:
                        # The primary retires us (END on the data channel),
                        # answers with "stop", and forks a replacement.
                        self.control.send({"t": "stopping"})
                    except OSError:
                        pass
                    self._begin_stop()
            if self.control.sock not in readable:
                continue
            try:
                message, fds = self.control.recv()
            except MessageError as exc:
                log.error("malformed message from the primary: %s", exc)
                continue
            except OSError:
                message, fds = None, []
            if message is None:
                # The primary is gone (PR_SET_PDEATHSIG normally got here first).
                os._exit(EXIT_PRIMARY_GONE)
            kind = message["t"]
            if kind in ("listening", "listen_error"):
                with self._lock:
                    future = self._requests.pop(message.get("id"), None)
                if future is None:
                    for fd in fds:
                        os.close(fd)
                else:
                    future.set_result((message, fds))
            elif kind == "msg":
                with self._lock:
                    handlers = list(self._message_handlers)
                for callback, loop in handlers:
                    _call(loop, callback, message.get("data"))
            elif kind == "loaded":
                self._loaded_answer.set()
            elif kind == "stop":
                self.stop_timeout = message.get("timeout")
                self._begin_stop()
            elif kind == "config":
                self.heartbeat_interval = float(message.get("heartbeat") or self.heartbeat_interval)
                self.window = int(message.get("window") or self.window)
                self.stall_ms = int(message.get("stall_ms", self.stall_ms))
                self.stall_log_ms = int(message.get("stall_log_ms", self.stall_log_ms))

    def _begin_stop(self):
        if self.loading:
            # Still importing the app: no connection to finish, and the import
            # may take long (Ctrl-C during the start must not wait for it).
            os._exit(0)
        if self.stopping.is_set():
            return
        self.stopping.set()
        os.write(self._stop_w, b"x")
        with self._lock:
            handlers = list(self._stop_handlers)
        for callback, loop in handlers:
            _call(loop, callback)

    def send(self, data: Any) -> None:
        self.control.send({"t": "msg", "data": data})

    def on_message(self, callback: Callable[[Any], object]) -> None:
        self._add_handler(self._message_handlers, callback)

    def on_stop(self, callback: Callable[[], object]) -> None:
        self._add_handler(self._stop_handlers, callback)
        if self.stopping.is_set():
            _call(_running_loop(), callback)

    def _add_handler(self, handlers, callback):
        with self._lock:
            handlers.append((callback, _running_loop()))

    def ready(self) -> None:
        self.control.send({"t": "ready"})

    def loaded(self, kind: Optional[str] = None, error: Optional[str] = None) -> None:
        """Tell the primary this worker has loaded its app, of ``kind``, or why it
        could not (``error``; the worker then exits); waits for the primary's answer,
        so the word is read before this worker can exit (the ``loaded`` event)."""
        self._loaded_answer.clear()
        self.control.send({"t": "loaded", "kind": kind, "error": error})
        self._loaded_answer.wait(LOADED_TIMEOUT)
        self.loading = False

    def heartbeat(self, open_connections: Optional[int] = None,
                  served: Optional[int] = None) -> None:
        """Prove this worker's loop runs; the counts show in ``fastfork status``."""
        self.tend_data_channel()
        self._last_beat = time.monotonic()
        requests = self.request_counter() if self.request_counter is not None else None
        message = {"t": "heartbeat", "open": open_connections, "served": served,
                   "requests": requests}
        if self.head_timeout_counter is not None:
            message["head_timeouts"] = self.head_timeout_counter()
        if self.ticker is not None:
            message["lag"], message["lag_sum"] = self.ticker.lag()
        if self.watchdog is not None:
            message["blocked"] = self.watchdog.stalls
        try:
            # Never wait for a primary that is not reading (stopped, or a
            # debugger holds it): this runs on the loop, which would stop
            # serving.  Every count is a total, so the next beat says it all.
            self.control.send(message, wait=False)
        except BlockingIOError:
            pass

    def unlisten(self, lid: int) -> None:
        """This worker closed its listener ``lid`` and goes on: the primary must
        send it nothing more for that address (a stopping worker needs no such
        word: the primary retires it whole)."""
        if self.stopping.is_set():
            return
        try:
            self.control.send({"t": "unlisten", "lid": lid})
        except OSError:
            pass              # the primary is gone; this worker exits on its own

    def count_accepted(self):
        """One more connection returned by a blocking ``accept()`` (it beats
        from there: its loop is the caller's)."""
        self.accepted += 1
        self.beat_if_due(served=self.accepted)

    def beat_if_due(self, served: Optional[int] = None) -> None:
        """A heartbeat, unless one went out less than an interval ago (for loops
        that are not asyncio's: blocking ``accept()`` and ``fastfork.heartbeat()``)."""
        if time.monotonic() - self._last_beat >= self.heartbeat_interval:
            try:
                self.heartbeat(served=served)
            except OSError:
                pass          # the primary is gone; this worker exits on its own

    # -- listening ------------------------------------------------------------------
    def request_listen(self, address: Address, backlog: int = DEFAULT_BACKLOG,
                       ) -> "concurrent.futures.Future[Tuple[dict[str, Any], List[int]]]":
        """Send a listen request; returns a Future of ``(reply, fds)``."""
        parse_address(address)   # a bad address fails here, with its own message
        future: "concurrent.futures.Future[Tuple[dict[str, Any], List[int]]]"
        future = concurrent.futures.Future()
        with self._lock:
            request = self._next_request
            self._next_request += 1
            self._requests[request] = future
        wire_address = list(address) if isinstance(address, tuple) else address
        self.control.send({"t": "listen", "id": request, "address": wire_address,
                           "backlog": backlog})
        return future

    def make_listener(self, address: Address, reply: "dict[str, Any]",
                      fds: List[int]) -> Listener:
        """Turn the primary's reply into a Listener, or raise its error."""
        if reply["t"] == "listen_error":
            raise OSError(reply.get("errno") or 0,
                          reply.get("error") or f"cannot listen on {address}")
        sock = socket.socket(fileno=fds[0]) if fds else None
        listener = Listener(self, reply["lid"], reply["address"], sock, reply.get("proxy"))
        if sock is None:
            self.listeners[listener.lid] = listener
        return listener

    def listen(self, address: Address, backlog: int = DEFAULT_BACKLOG,
               timeout: float = LISTEN_TIMEOUT) -> Listener:
        if self.policy == "least":
            # Refused before the listen request: once subscribed, connections
            # would be dispatched to a worker whose closes nobody reports, and
            # the primary would count them open for ever.
            raise RuntimeError(
                "fastfork.listen() cannot serve under policy 'least': blocking code "
                "does not report the connections it closes, which least needs to "
                "count each worker's open connections; serve from an event loop with "
                "fastfork.serve(), create_server() or start_server(), or use policy rr")
        future = self.request_listen(address, backlog)
        try:
            reply, fds = future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the primary did not answer a listen on {address} "
                               f"within {timeout}s") from None
        return self.make_listener(address, reply, fds)

    # -- data channel -----------------------------------------------------------------
    def pump(self, max_msgs=0):
        """Receive what the primary sent (at most ``max_msgs`` messages, 0: all)
        and route it to listeners; True at END."""
        _, self.read_later, dropped, ended = self.receiver.hand_out(max_msgs, self.listeners)
        lost = self.receiver.lost - self._lost_seen
        if lost:
            self._lost_seen = self.receiver.lost
            log.warning("worker %d is out of file descriptors (RLIMIT_NOFILE %d): %d "
                        "connections passed to it were lost; the primary sends it none "
                        "until it has room", self.id, _nofile_limit(), lost)
        if (dropped or lost) and self.policy == "least":
            # Taken and never open here: or least counts them open for ever.
            self._unreported += dropped + lost
            self._unreported = self.receiver.report_closed(self._unreported)
        return ended

    def tend_data_channel(self):
        """With each heartbeat: tell the primary when this worker, out of fds,
        has room again, and send what a full channel buffer held back."""
        # Never wait for the lock: a thread inside pump() does this work's
        # part, and the next beat does the rest.
        if not self.data_lock.acquire(blocking=False):
            return
        try:
            if self.receiver.at_fd_limit and _has_room(self.receiver.fileno(), self.window):
                self.receiver.room_again()
                log.info("worker %d has file descriptors to spare again: the primary "
                         "may send it connections", self.id)
            self.receiver.flush()
            if self._unreported:
                self._unreported = self.receiver.report_closed(self._unreported)
        except (OSError, ValueError):
            pass          # the channel is closed: the primary is gone or ended it
        finally:
            self.data_lock.release()


def _nofile_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _has_room(fd, count):
    """Can this process open ``count`` more fds now?  Tried by doing it (dups of
    ``fd``, closed at once): exact whoever holds the others, and no /proc."""
    taken = []
    try:
        for _ in range(count):
            taken.append(os.dup(fd))
        return True
    except OSError:
        return False          # EMFILE (or ENFILE): no room yet
    finally:
        for extra in taken:
            os.close(extra)


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _call(loop, callback, *args):
    if loop is None:
        try:
            callback(*args)
        except Exception:
            log.exception("handler %r raised", callback)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(callback, *args)


_runtime: Optional[WorkerRuntime] = None


def start(data_fd, control_fd, worker_id, index, policy, receiver_mod, credit_fd=-1):
    """Become a worker: connect to the primary over the inherited channels."""
    global _runtime
    random.seed()    # forked workers must not share the primary's random sequence
    _runtime = WorkerRuntime(data_fd, control_fd, worker_id, index, policy, receiver_mod,
                             credit_fd)
    return _runtime


def current() -> Optional[WorkerRuntime]:
    """This process's runtime, or None in a process that is not a worker."""
    return _runtime


def runtime() -> WorkerRuntime:
    """This process's runtime; RuntimeError outside a worker."""
    if _runtime is None:
        raise RuntimeError("not in a fastfork worker (fastfork.is_worker is False)")
    return _runtime
