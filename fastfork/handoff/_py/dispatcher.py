"""The primary's ``Dispatcher`` in Python: the twin of ``_c/dispatcher.pyx``
(FASTFORK_NO_EXTENSIONS=1).

Same class, same methods, same behaviour; ``socket.sendmsg``/``recvmsg``
and ``select.epoll`` instead of raw syscalls.  See ``_c/dispatcher.pyx`` for the
design notes, which apply to both, except one: Python has no ``recvmmsg``,
so acks are read one ``recv`` at a time, until EAGAIN.  And one more: no
shared credit page (``CREDIT_SIZE`` is 0), because Python has no atomics and
no memory barrier to make the page's wake-up handshake safe; credit comes back
in ACK messages; so no tick either, and a blocked worker is found out only
by what it leaves unread for ``STALL_UNTAKEN_FACTOR * stall_ms`` (a worker blocked while it holds
connections, with nothing in flight, is still sent one, which comes back
after that).
EINTR needs no code here: Python's socket and epoll calls retry it after
running the signal handlers (PEP 475).

Over 400 lines because ``Dispatcher`` is one state machine (listeners, worker
credit, the pending queue, batching) whose parts share its state; it mirrors
``_c/dispatcher.pxi`` method for method so the two can be read side by side.
"""

import bisect
import collections
import errno
import os
import select
import socket
import time

from ..fdpass import cmsg_space, rights, unpack_fds
from ..wire import (BATCH_BUCKETS, MAX_LISTENERS, MSG_CLOSED, MSG_LIMIT, RECV_BUF, SCM_MAX_FD,
                    STALL_PROBE_MS, STALL_UNTAKEN_FACTOR, ProtocolError, check_batch_max,
                    check_stall_ms, check_window, encode_end, encode_fds, parse_to_primary,
                    parse_to_worker, DEFAULT_BATCH_MAX, DEFAULT_STALL_MS, DEFAULT_WINDOW)
from .receiver import _no_credit, borrow
from .scheduler import LeastConnectionsScheduler, scheduler_for

__all__ = ["Dispatcher", "IMPLEMENTATION", "CREDIT_SIZE"]

_KIND_LISTENER = 0
_KIND_WORKER = 1
_KIND_WATCH = 2

# accept4() errors that concern one connection only: skip it and go on.
_ACCEPT_SKIP = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EPERM,
                          errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN,
                          errno.ENONET, errno.EHOSTUNREACH, errno.EOPNOTSUPP,
                          errno.ENETUNREACH))
# accept4() errors that mean "out of a resource": stop accepting for a while.
_ACCEPT_PAUSE = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))

IMPLEMENTATION = "python"
CREDIT_SIZE = 0          # no shared credit page: see the module's docstring

_MAX_SPARES = 256
_CMSG_SPACE = cmsg_space(SCM_MAX_FD)


class Dispatcher:
    """The primary's hot path: accept, pick a worker, pass the fd, track acks."""

    def __init__(self, window=DEFAULT_WINDOW, batch_max=DEFAULT_BATCH_MAX,
                 pause_ms=100, policy="rr", worker_connections=0, stall_ms=DEFAULT_STALL_MS):
        self.window = check_window(window)
        self.stall_ms = check_stall_ms(stall_ms)   # 0: no stall detection
        self.batch_max = check_batch_max(batch_max)
        pause_ms = int(pause_ms)
        if pause_ms < 0:
            raise ValueError(f"pause_ms must be >= 0, got {pause_ms}")
        self.pause_ms = pause_ms
        self._pid = os.getpid()
        self._epoll = select.epoll()
        self._sched = scheduler_for(policy, self.window, worker_connections)
        self.policy = policy      # "rr" or "least": which scheduler
        self._fdmap = {}          # fd -> (kind, id)
        self._listeners = {}      # lid -> socket (not owned: detached on removal)
        # Edge-triggered listeners: True from an event until accept says EAGAIN.
        self._backlog = {}        # lid -> bool
        self._workers = {}        # slot -> socket (not owned)
        self._peers = {}          # slot -> the worker's end (not owned)
        self._unacked = {}        # slot -> connections sent and not acknowledged
        self._open = {}           # slot -> True while the channel is usable
        self._at_limit = {}       # slot -> True while the worker is at its fd limit
        self._dispatched = {}     # slot -> count
        self._retired = set()     # slots sent END: nothing is taken back from them
        # Stalls (scheduler rules 12 and 13), by slot: when what it has in
        # flight last moved, when it was found stalled (absent: it is not),
        # how many times it was, and how many connections came back from it.
        self._since = {}
        self._stalled_at = {}
        self._probing = set()     # tried again after a stall, with no sign of life yet
        self._stalls = {}
        self._taken_back = {}
        self._next_stall_check = 0.0
        self.stalls = 0
        self.taken_back = 0
        self._closed_slots = []   # slots whose channel broke, for pop_closed()
        self._pending = collections.deque()  # (fd, lid) waiting for credit
        self._paused_until = 0.0
        self.accepted = 0
        self.dispatched = 0
        self.redispatched = 0
        self.pauses = 0
        self._batches = [0] * len(BATCH_BUCKETS)   # sendmsg count by fds sent
        self.last_pause_errno = 0
        # Spare fds (copies of the epoll fd), given up only to take connections
        # back from a dead worker's channel: without them a primary at its fd
        # limit could not receive them, and the kernel would close them.
        self._spare_cap = min(self.window, _MAX_SPARES)
        self._spares = []
        self._refill_spares()
        self._closed = False      # last: __del__ cleans only a fully built object

    # -- registration -----------------------------------------------------
    def add_listener(self, fd):
        """Start dispatching connections from listening socket ``fd``; returns its id.

        ``fd`` stays the caller's: call ``remove_listener`` before closing it.
        """
        self._check()
        lid = next(i for i in range(MAX_LISTENERS + 1) if i not in self._listeners)
        if lid >= MAX_LISTENERS:
            raise ValueError(f"at most {MAX_LISTENERS} listening sockets per primary")
        sock = borrow(fd)
        try:
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        except BaseException:
            sock.detach()
            raise
        self._listeners[lid] = sock
        self._backlog[lid] = True           # it may hold connections already
        self._fdmap[fd] = (_KIND_LISTENER, lid)
        return lid

    def remove_listener(self, lid):
        """Stop accepting on ``lid``; connections waiting for credit on it are closed."""
        self._check()
        if lid not in self._listeners:
            raise KeyError(f"no listener {lid}")
        sock = self._listeners.pop(lid)
        self._backlog.pop(lid)
        fd = sock.detach()
        del self._fdmap[fd]
        self._flush_pending()               # drops what waited for this listener
        self._epoll.unregister(fd)

    def add_worker(self, fd, peer, credit_fd=-1):
        """Register the primary's end of a worker's data channel; returns its slot.

        ``peer`` is the worker's end of the same channel, which the caller keeps
        open for the worker's whole life: the primary closes its copy of each
        connection as soon as the fd is sent (the in-flight message holds the
        connection, so that close is a reference drop, never a TCP teardown),
        and when the worker is gone it reads back from ``peer`` every
        connection the worker never received.

        ``credit_fd``: the Cython build's shared credit page; this twin has
        none and refuses one (``CREDIT_SIZE`` is 0).

        ``fd`` and ``peer`` stay the caller's: close them only after ``remove_worker``.
        """
        self._check()
        _no_credit(credit_fd)
        if peer < 0:
            raise ValueError("peer must be the worker's end of the data channel")
        slot = 0
        while slot in self._workers:
            slot += 1
        sock = borrow(fd)
        try:
            # Its flags are the worker's: left alone (reads use MSG_DONTWAIT).
            peer_sock = socket.socket(fileno=peer)
        except BaseException:
            sock.detach()
            raise
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            sock.detach()
            peer_sock.detach()
            raise
        self._sched.add(slot)               # cannot fail: the slot is free
        self._workers[slot] = sock
        self._peers[slot] = peer_sock
        self._unacked[slot] = 0
        self._open[slot] = True
        self._at_limit[slot] = False
        self._dispatched[slot] = 0
        self._since[slot] = 0.0
        self._stalls[slot] = 0
        self._taken_back[slot] = 0
        self._fdmap[fd] = (_KIND_WORKER, slot)
        return slot

    def subscribe(self, slot, lid):
        """Let the worker in ``slot`` receive connections from listener ``lid``."""
        self._check()
        if lid not in self._listeners:
            raise KeyError(f"no listener {lid}")
        if self._open.get(slot):
            self._sched.subscribe(slot, lid)
            self._flush_pending()

    def unsubscribe(self, slot, lid):
        """Send the worker in ``slot`` no more connections from listener ``lid``
        (it closed its listener; what waits goes to the others)."""
        self._check()
        if lid not in self._listeners:
            raise KeyError(f"no listener {lid}")
        if self._open.get(slot):
            self._sched.unsubscribe(slot, lid)

    def retire_worker(self, slot):
        """Send nothing more to ``slot``; tell it so with an END message.

        Connections already sent stay tracked: the worker still acknowledges
        them, and if it dies first they go to another worker.
        """
        self._check()
        if not self._open.get(slot):
            return
        self._sched.retire(slot)
        self._retired.add(slot)
        try:
            self._workers[slot].send(encode_end())
        except OSError:
            self._close_worker(slot)

    def remove_worker(self, slot):
        """Forget ``slot`` (worker gone); what it never took is read back from its
        end of the channel and re-dispatched."""
        self._check()
        if slot not in self._workers:
            raise KeyError(f"no worker in slot {slot}")
        self._close_worker(slot)
        self._closed_slots = [s for s in self._closed_slots if s != slot]
        del self._workers[slot]
        self._peers.pop(slot).detach()
        del self._unacked[slot]
        del self._open[slot]
        del self._at_limit[slot]
        del self._dispatched[slot]
        self._retired.discard(slot)
        self._probing.discard(slot)
        self._stalled_at.pop(slot, None)
        for counts in (self._since, self._stalls, self._taken_back):
            del counts[slot]
        self._flush_pending()

    def watch(self, fd):
        """Make ``poll`` report ``fd`` when it is readable (control channels, wakeup pipe)."""
        self._check()
        self._epoll.register(fd, select.EPOLLIN)
        self._fdmap[fd] = (_KIND_WATCH, fd)

    def unwatch(self, fd):
        self._check()
        if self._fdmap.get(fd, (None,))[0] == _KIND_WATCH:
            del self._fdmap[fd]
            self._epoll.unregister(fd)

    # -- the loop -----------------------------------------------------------
    def poll(self, timeout_ms):
        """Dispatch until a watched fd is readable or ``timeout_ms`` has passed
        (-1: no limit); return the watched fds that are readable.

        Accepting, dispatching and reading acks all happen inside, so under
        load the caller's loop runs only when it has something to do.  The
        Cython build also returns early when a signal interrupts the wait;
        here PEP 475 retries the wait, so set a wakeup fd with
        ``signal.set_wakeup_fd`` and ``watch`` it to wake both builds.
        """
        self._check()
        deadline = time.monotonic() + timeout_ms / 1000.0 if timeout_ms >= 0 else None
        ready = []
        while True:
            # Connections re-queued by a failed send go out now, not after
            # the next event.
            if self.stall_ms:
                self._check_stalls()
            self._flush_pending()
            if len(self._spares) < self._spare_cap and not self._pending:
                # Taken again only once what they made room for has gone on.
                self._refill_spares()
            self._accept_backlogged()
            now = time.monotonic()
            timeout = -1 if deadline is None else max(0.0, deadline - now)
            if self._paused_until > now:
                pause_left = self._paused_until - now + 0.001
                timeout = pause_left if timeout < 0 else min(timeout, pause_left)
            if self._next_stall_check:
                # A verdict on a stall may change then: wake up to make it.
                left = max(0.0, self._next_stall_check - now) + 0.0005
                timeout = left if timeout < 0 else min(timeout, left)
            try:
                events = self._epoll.poll(timeout)
            except InterruptedError:
                break
            for fd, mask in events:
                kind, ident = self._fdmap.get(fd, (None, None))
                if kind == _KIND_WORKER:
                    self._read_acks(ident, mask)
                elif kind == _KIND_WATCH:
                    ready.append(fd)
                elif kind == _KIND_LISTENER:
                    self._backlog[ident] = True
            if self.stall_ms:
                self._check_stalls()
            self._flush_pending()
            self._accept_backlogged()
            if ready or (deadline is not None and time.monotonic() >= deadline):
                break
        return ready

    def pop_closed(self):
        """Slots whose data channel closed or broke the protocol since the last call."""
        self._check()
        closed, self._closed_slots = self._closed_slots, []
        return closed

    def worker_stats(self, slot):
        """``(dispatched, inflight)`` for one worker (dispatched: sent, less
        what was taken back from its channel)."""
        self._check()
        if slot not in self._workers:
            raise KeyError(f"no worker in slot {slot}")
        return self._dispatched[slot], self._unacked[slot]

    def worker_stalls(self, slot):
        """``(stalled, stalls, taken_back)`` for one worker: whether its loop is
        blocked now (it is sent nothing), how many times it was found so, and
        how many connections were read back from its channel meanwhile."""
        self._check()
        if slot not in self._workers:
            raise KeyError(f"no worker in slot {slot}")
        return (bool(self._open[slot] and slot in self._stalled_at), self._stalls[slot],
                self._taken_back[slot])

    def worker_at_fd_limit(self, slot):
        """True while the worker in ``slot`` says it is at its file-descriptor
        limit (fds sent now would arrive cut off): it is sent nothing meanwhile."""
        self._check()
        if slot not in self._workers:
            raise KeyError(f"no worker in slot {slot}")
        return self._at_limit[slot]

    def worker_open(self, slot):
        """Connections sent to ``slot`` and not reported closed (policy least), else None."""
        self._check()
        if not self._open.get(slot):
            return None
        if isinstance(self._sched, LeastConnectionsScheduler):
            return self._sched.open_connections(slot)
        return None

    def held_fds(self):
        """How many connection fds the primary holds: those waiting for a worker
        (pending).  What was sent is held by its message, not by the primary."""
        self._check()
        return len(self._pending)

    def batch_counts(self):
        """How many sendmsg calls carried 1, 2, 3-4, ... fds: one count per bucket of
        ``wire.BATCH_BUCKETS`` (upper bounds)."""
        self._check()
        return tuple(self._batches)

    def stats(self):
        self._check()
        return {"accepted": self.accepted, "dispatched": self.dispatched,
                "redispatched": self.redispatched, "pending": len(self._pending),
                "pauses": self.pauses, "last_pause_errno": self.last_pause_errno,
                "paused": self._paused_until > time.monotonic(),
                "stalls": self.stalls, "taken_back": self.taken_back,
                "stalled": sum(1 for slot in self._stalled_at if self._open.get(slot))}

    def close(self):
        """Close the epoll fd and every connection the primary still holds.

        Sockets given to ``add_listener``/``add_worker`` are not ours to close.
        Also right in a forked child, which must not keep the primary's copies
        of connections alive.
        """
        if self._closed:
            return
        self._closed = True
        self._release_spares()
        while self._pending:
            os.close(self._pending.popleft()[0])
        for sock in (list(self._listeners.values()) + list(self._workers.values())
                     + list(self._peers.values())):
            sock.detach()
        self._peers.clear()
        self._listeners.clear()
        self._workers.clear()
        self._fdmap.clear()
        self._epoll.close()

    def __del__(self):
        # Like the Cython build's __dealloc__: never close the caller's
        # listener/worker fds (the socket objects would), and do not leak
        # the connections.  A failed __init__ leaves nothing to clean.
        if getattr(self, "_closed", True) is False:
            self.close()

    # -- internals ------------------------------------------------------------
    def _check(self):
        if os.getpid() != self._pid:
            raise RuntimeError("this Dispatcher belongs to the parent process; "
                               "call close() in the child")
        if self._closed:
            raise ValueError("I/O operation on a closed Dispatcher")

    def _refill_spares(self):
        while len(self._spares) < self._spare_cap:
            try:
                self._spares.append(os.dup(self._epoll.fileno()))
            except OSError:
                return                      # at the fd limit: tried again later

    def _release_spares(self):
        while self._spares:
            os.close(self._spares.pop())

    def _accept_backlogged(self):
        # Listeners are edge-triggered: one left with connections when credit
        # ran out gets no new event for them, so accept here once there is
        # credit again (and not while paused).
        if self._paused_until > time.monotonic():
            return
        for lid, backlog in list(self._backlog.items()):
            if backlog and self._sched.available(lid) > 0:
                self._accept_and_dispatch(lid)

    def _accept_and_dispatch(self, lid):
        if self._paused_until > time.monotonic():
            return                          # another listener just ran out of fds
        sock = self._listeners[lid]
        budget = self._sched.available(lid)
        batches = {}
        try:
            while budget > 0:
                try:
                    fd, _ = sock._accept()
                except BlockingIOError:
                    self._backlog[lid] = False   # until the next edge
                    break
                except InterruptedError:
                    continue
                except OSError as exc:
                    if exc.errno in _ACCEPT_SKIP:
                        continue
                    if exc.errno in _ACCEPT_PAUSE:
                        # Out of fds or memory: leave the backlog in the kernel and
                        # wait pause_ms (poll() accepts nothing meanwhile) instead
                        # of spinning.
                        self._paused_until = time.monotonic() + self.pause_ms / 1000.0
                        self.pauses += 1
                        self.last_pause_errno = exc.errno
                        break
                    raise
                self.accepted += 1
                budget -= 1
                # Workers get connections non-blocking, as accept4(SOCK_NONBLOCK)
                # gives them in the Cython build.
                try:
                    os.set_blocking(fd, False)
                except OSError:
                    pass
                slot = self._sched.pick(lid)
                if slot < 0:                # cannot happen: budget came from available()
                    self._pending.append((fd, lid))
                    continue
                batches.setdefault(slot, []).append((fd, lid))
        finally:
            # What was accepted goes out even if accept failed unexpectedly.
            for slot, batch in batches.items():
                self._send(slot, batch)

    def _flush_pending(self):
        if not self._pending:
            return
        batches = {}
        keep = collections.deque()
        while self._pending:
            fd, lid = self._pending.popleft()
            if lid not in self._listeners:
                os.close(fd)                # its listener was removed: nobody can serve it
                continue
            slot = self._sched.pick(lid)
            if slot < 0:
                keep.append((fd, lid))
            else:
                self.redispatched += 1
                batches.setdefault(slot, []).append((fd, lid))
        self._pending = keep
        for slot, batch in batches.items():
            self._send(slot, batch)

    def _send(self, slot, batch):
        sock = self._workers[slot]
        for start in range(0, len(batch), self.batch_max):
            part = batch[start:start + self.batch_max]
            fds = [fd for fd, _ in part]
            payload = encode_fds([lid for _, lid in part])
            try:
                sock.sendmsg([payload], rights(fds))
            except OSError:
                # Give the credit back for what was not sent, park the fds, and
                # treat the channel as dead: a worker that cannot take a
                # message is gone or broken (Node: "refused -> next worker").
                rest = batch[start:]
                self._sched.ack(slot, len(rest))
                self._pending.extendleft(reversed(rest))
                self._close_worker(slot)
                return
            # Sent: the message holds each connection now, and the worker's
            # end (kept open) holds the message until the worker takes it.
            for fd in fds:
                os.close(fd)
            if not self._unacked[slot] and self.stall_ms:
                self._since[slot] = now = time.monotonic()   # its clock starts with the first
                due = now + self._untaken()
                if not self._next_stall_check or self._next_stall_check > due:
                    self._next_stall_check = due
            self._unacked[slot] += len(part)
            self._dispatched[slot] += len(part)
            self.dispatched += len(part)
            self._batches[bisect.bisect_left(BATCH_BUCKETS, len(part))] += 1

    def _read_acks(self, slot, mask):
        sock = self._workers[slot]
        while self._open.get(slot):
            try:
                data = sock.recv(64)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                self._close_worker(slot)
                return
            try:
                kind, count = parse_to_primary(data)
                if kind == MSG_LIMIT:
                    # Before the ACK that gives a cut-off message's credit back.
                    self._set_limit(slot, count == 1)
                    continue
                if kind == MSG_CLOSED:
                    # Policy least's count of open connections; rr refuses it.
                    self._sched.closed(slot, count)
                    continue
                self._sched.ack(slot, count)
            except (ProtocolError, ValueError):
                self._close_worker(slot)
                return
            self._unacked[slot] -= count
            if count and self.stall_ms:
                self._probing.discard(slot)
                if slot in self._stalled_at:
                    self._unstall(slot, False)      # it took something: its loop runs
                elif self._unacked[slot]:
                    self._since[slot] = time.monotonic()   # it moves: the rest's clock restarts

    def _set_limit(self, slot, at_limit):
        # The worker is at its fd limit (or has room again): the scheduler
        # skips it meanwhile (its rule 11).
        if self._at_limit[slot] != at_limit:
            self._at_limit[slot] = at_limit
            self._sched.set_full(slot, at_limit)

    def _close_worker(self, slot):
        """The channel is unusable: stop using it and re-queue what it never took."""
        if not self._open.get(slot):
            return
        self._open[slot] = False
        self._closed_slots.append(slot)
        sock = self._workers[slot]
        fd = sock.fileno()
        self._fdmap.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        self._sched.remove(slot)
        self._unacked[slot] = 0
        self._recover(slot)
        sock.detach()

    def _recover(self, slot):
        """Read back what the worker never received: it waits, in order, on the
        worker's end of the channel, which the caller keeps open for exactly this.

        Safe while the worker still runs (a broken protocol, a stall): each
        message is taken by one reader only, so whatever is read here the
        worker never had.  Returns how many connections the messages read back
        announced (those a cut-off message lost included).
        """
        peer = self._peers[slot]
        found = []
        announced = 0
        self._release_spares()              # room for them even at the fd limit
        try:
            while True:
                try:
                    data, ancdata, flags, _ = peer.recvmsg(
                        RECV_BUF, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
                except InterruptedError:
                    continue
                except OSError:
                    break                   # EAGAIN: all read back
                fds = unpack_fds(ancdata)
                if not data and not fds:
                    break
                try:
                    # Cut off (MSG_CTRUNC): the primary had no room for all of
                    # them even with the spares; the rest are lost, these are not.
                    lids = parse_to_worker(data, flags & socket.MSG_TRUNC, len(fds),
                                           bool(flags & socket.MSG_CTRUNC))
                except ProtocolError:
                    lids = None
                if lids is None:
                    # END, or not what this primary wrote: nothing to route.
                    for fd in fds:
                        os.close(fd)
                    continue
                announced += len(lids)
                found.extend(zip(fds, lids))
        finally:
            # First in the pending queue, in the order they were accepted.
            self._pending.extendleft(reversed(found))
            if not self._pending:
                self._refill_spares()       # else once the pending have gone on (poll)
        return announced

    # -- stalls (scheduler rules 12 and 13) ------------------------------------
    def _check_stalls(self):
        """Find the workers whose loop is blocked (without a page: what they
        were sent waits unread) and those that run again; note when the next
        verdict may change (``_next_stall_check``)."""
        if not self._next_stall_check:
            return
        now = time.monotonic()
        stall = self._untaken()
        probe = STALL_PROBE_MS / 1000.0
        next_check = 0.0
        for slot, is_open in list(self._open.items()):
            if not is_open or slot in self._retired:
                continue
            if slot in self._stalled_at:
                if now >= self._stalled_at[slot] + probe:
                    self._unstall(slot, True)   # no sign either way: try it
                else:
                    if self._unacked[slot] and self._another_can_take(slot):
                        self._take_back(slot)   # none could when it stalled
                    due = self._stalled_at[slot] + probe
                    next_check = due if not next_check else min(next_check, due)
                    continue
            if self._unacked[slot] and now > self._since[slot] + stall:
                self._stall(slot, now)
                due = self._stalled_at.get(slot, now) + probe
            elif self._unacked[slot]:
                due = self._since[slot] + stall + 0.0005
            else:
                continue
            next_check = due if not next_check else min(next_check, due)
        self._next_stall_check = next_check

    def _untaken(self):
        # Seconds a message may wait unread before its worker counts as stalled.
        return self.stall_ms * STALL_UNTAKEN_FACTOR / 1000.0

    def _stall(self, slot, now):
        # Send it nothing, and take back what it has not read.
        self._stalled_at[slot] = now
        if slot not in self._probing:       # else the same stall, still on
            self._stalls[slot] += 1
            self.stalls += 1
        self._sched.set_stalled(slot, True)
        if self._unacked[slot] and self._another_can_take(slot):
            self._take_back(slot)

    def _another_can_take(self, slot):
        # Taking back is for another worker to serve them: with none that
        # may be sent anything, they would only wait in the primary instead.
        # And only with every spare fd in hand (room for a window, all that
        # can wait in a channel): a primary short of fds would receive them
        # cut off, and the kernel would close what did not fit, where in the
        # live worker's channel they are safe.  And only where the others have
        # room for all of them now: what waited in the primary's queue would
        # hold fds it needs to read back a dying worker's channel whole.
        if len(self._spares) < self._spare_cap:
            return False
        room = sum(self.window - self._unacked[other]
                   for other, is_open in self._open.items()
                   if is_open and other != slot and other not in self._retired
                   and other not in self._stalled_at and not self._at_limit[other]
                   and self._unacked[other] < self.window)
        return room >= self._unacked[slot]

    def _take_back(self, slot):
        # What it has not read, read back from its channel to go to another.
        back = self._recover(slot)
        if back:
            try:
                if back > self._unacked[slot]:
                    raise ValueError(back)
                self._sched.withdraw(slot, back)
            except ValueError:
                self._close_worker(slot)    # it had fewer in flight: not our channel
                return
            self._unacked[slot] -= back
            self._dispatched[slot] -= back  # it never got them
            self._taken_back[slot] += back
            self.taken_back += back

    def _unstall(self, slot, probe):
        # probe: with no sign that it runs: what it is sent now comes back if
        # it stays untaken.
        del self._stalled_at[slot]
        if probe:
            self._probing.add(slot)
        else:
            self._probing.discard(slot)
        self._sched.set_stalled(slot, False)
        if self._unacked[slot]:
            self._since[slot] = now = time.monotonic()
            due = now + self._untaken()
            if not self._next_stall_check or self._next_stall_check > due:
                self._next_stall_check = due
