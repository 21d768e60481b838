"""The data channel's wire format: written once, here, for both builds.

The data channel is one ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair per worker:
the primary sends batches of accepted connections down it, the worker sends
counts back.  Every message is one datagram (SEQPACKET keeps message
boundaries and order).

    primary -> worker   FDS: u8 type=1, u8 0, u16 count, then count x u16
                             listener id; SCM_RIGHTS carries exactly count fds
    primary -> worker   END: u8 type=2, u8 0, u16 0: nothing more will come
    worker  -> primary  ACK: u8 type=3, u8 0, u16 count received
    worker  -> primary  CLOSED: u8 type=4, u8 0, u16 count: that many of the
                             connections it received are closed now
    worker  -> primary  LIMIT: u8 type=5, u8 0, u16 1: the worker is at its
                             file-descriptor limit, send it nothing; u16 0:
                             it has room again

What releases a connection is the send itself: the primary closes its copy of
each fd right after ``sendmsg`` (the message in flight holds the connection),
and reads back from the worker's end, which it keeps open, whatever a dead
worker never received.  ACK and CLOSED carry *credit*: how many of the
window's connections the worker took (ACK) and, for policy ``least``, how
many of those are closed (CLOSED; under ``rr`` it is a protocol error).  In
the Cython build the counts travel on a shared page instead (``credit``,
``csrc/credit.h``) and an ACK of 0 only wakes a primary that waits for credit.
A count over 65535 goes as several datagrams.

A worker at its fd limit receives an FDS message cut off: the kernel
installs the descriptors it can, in order, closes the rest (those clients
see their connection reset) and sets MSG_CTRUNC.  That message is still the
primary's, well formed: the worker takes all of its connections (its credit
goes back) and counts the cut-off ones lost, and says it is at its limit
(LIMIT 1, or a flag on the shared page) before that credit goes back, so
that the primary sends it nothing until it has room again (LIMIT 0).

This module is the one statement of the format: the pure-Python build
encodes and parses with the functions below, and the Cython build checks its
C constants against these when it loads (``check_build``).

Native byte order: both ends are always on the same machine.
"""

import struct

MSG_FDS = 1
MSG_END = 2
MSG_ACK = 3
MSG_CLOSED = 4
MSG_LIMIT = 5

HEADER = struct.Struct("=BxH")
LID = struct.Struct("=H")
HEADER_SIZE = HEADER.size
LID_SIZE = LID.size

# Linux refuses more than SCM_MAX_FD (253) descriptors in one message.
SCM_MAX_FD = 253
# A count field is a u16: a larger count goes as several messages.
MAX_COUNT = 0xFFFF
# The largest message either end can receive: a full FDS message.
RECV_BUF = HEADER_SIZE + LID_SIZE * SCM_MAX_FD
# Listener ids are bits of a u64 subscription mask in the C scheduler.
MAX_LISTENERS = 64
DEFAULT_BATCH_MAX = 64

# Upper bounds of the batch-size buckets the dispatchers count (fds per
# sendmsg): what the metrics show as a histogram.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, SCM_MAX_FD)

# Upper bounds (seconds) of a worker's loop-lag histogram (how late its tick
# ran, fastfork.worker.liveness), which its heartbeat carries, a count per
# bucket and one more for +Inf, to the primary's metrics.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Credit window: how many connections a worker may hold unacknowledged.
# 8 bounds what a frozen worker can strand (at most 8 connections, and those
# go to another worker as soon as the frozen one is killed) while a busy
# primary still sends up to 8 fds per sendmsg, which is where the per-message
# cost stops mattering (see benchmarks/test_benchmarks_fdpass.py).
DEFAULT_WINDOW = 8

# Stall detection (the scheduler's rules 12 and 13): a worker whose loop has
# not ticked (the Cython build's credit page) for stall_ms, or has left what
# it was sent unread STALL_UNTAKEN_FACTOR times as long, is sent nothing, and
# what waits unread in its channel is taken back and sent to another.  Its
# loop ticks every stall_ms / 3 while it holds connections; the longer wait
# for what is unread is for a loop that was idle (no tick) and is merely not
# scheduled yet on a busy machine.  A stalled worker that shows no sign of
# life for STALL_PROBE_MS is tried again (it may be picked; what it leaves
# unread comes back), since a worker that was idle when it froze has nothing
# to tick.  With it on, a worker takes one message a pass (worker/loopstate.py)
# so that what it has not begun stays take-back-able; with TCP_DEFER_ACCEPT
# (addresses.set_defer_accept) nothing reaches it before its request, so a
# blocked loop holds little more than the request that blocked it.
DEFAULT_STALL_MS = 5
STALL_UNTAKEN_FACTOR = 4
STALL_PROBE_MS = 50


class ProtocolError(Exception):
    """A peer sent something the data-channel protocol does not allow."""


# -- encoding ---------------------------------------------------------------------------

def encode_fds(lids):
    """The FDS message for connections from listeners ``lids`` (their fds go
    as SCM_RIGHTS beside it, in the same order)."""
    return HEADER.pack(MSG_FDS, len(lids)) + b"".join(LID.pack(lid) for lid in lids)


def encode_end():
    """The END message: the primary will send nothing more."""
    return HEADER.pack(MSG_END, 0)


def encode_limit(at_limit):
    """The LIMIT message: the worker is at its fd limit (True) or has room again."""
    return HEADER.pack(MSG_LIMIT, 1 if at_limit else 0)


def encode_count(kind, count):
    """The ACK or CLOSED message that carries ``count``, which must fit one
    (at most MAX_COUNT: a sender splits a larger count over several).  An
    ACK of 0 only wakes the primary."""
    if kind not in (MSG_ACK, MSG_CLOSED):
        raise ValueError(f"message type {kind} carries no count")
    if not 0 <= count <= MAX_COUNT:
        raise ValueError(f"a count of {count} does not fit one message (0..{MAX_COUNT})")
    return HEADER.pack(kind, count)


# -- parsing ----------------------------------------------------------------------------

def parse_to_worker(data, truncated, nfds, cut=False):
    """Check a message the primary sent (as the worker, or the primary reading
    back): the listener ids of an FDS message, in order, or None for END.

    ``truncated``: the kernel cut the message's bytes off (MSG_TRUNC: never
    from this primary); ``nfds``: how many descriptors came with it; ``cut``:
    the kernel cut its descriptors off (MSG_CTRUNC: the receiver is at its fd
    limit), so an FDS message may bring fewer than it announces: all its ids
    are returned, the first ``nfds`` with a descriptor, the rest lost.
    Raises ProtocolError for anything the primary does not send.
    """
    if truncated:
        raise ProtocolError("truncated message on the data channel")
    if len(data) < HEADER.size:
        raise ProtocolError(f"short message ({len(data)} bytes) on the data channel")
    kind, count = HEADER.unpack_from(data)
    if kind == MSG_END:
        if cut:
            raise ProtocolError("truncated message on the data channel")
        if nfds or count:
            raise ProtocolError("END message with a payload")
        return None
    if kind != MSG_FDS:
        raise ProtocolError(f"unknown message type {kind} on the data channel")
    if len(data) != HEADER.size + LID.size * count or (nfds >= count if cut else nfds != count):
        raise ProtocolError(
            f"FDS message announces {count} fds, carries {nfds} in {len(data)} bytes")
    return [LID.unpack_from(data, HEADER.size + i * LID.size)[0] for i in range(count)]


def parse_to_primary(data):
    """Check a message a worker sent: ``(kind, count)`` of an ACK or CLOSED, or
    ``(MSG_LIMIT, 0 or 1)``.  Raises ProtocolError for anything else."""
    if len(data) != HEADER.size:
        raise ProtocolError(f"message of {len(data)} bytes from a worker")
    kind, count = HEADER.unpack(data)
    if kind not in (MSG_ACK, MSG_CLOSED, MSG_LIMIT):
        raise ProtocolError(f"message type {kind} from a worker")
    if kind == MSG_LIMIT and count > 1:
        raise ProtocolError(f"LIMIT message of {count} from a worker")
    return kind, count


def check_build(module, constants):
    """Raise ImportError unless an accelerated build's ``constants`` (name ->
    value, as compiled in) agree with this module's: called when it loads."""
    wrong = [f"{name}={value!r} (wire.py: {globals()[name]!r})"
             for name, value in constants.items() if globals()[name] != value]
    if wrong:
        raise ImportError(f"{module} was built for another wire format: {', '.join(wrong)}")


def _bounded(value, what, low, high=None):
    # The one shape of every check below: an int within [low, high].
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{what} must be {bound}, got {value}")
    return value


def check_batch_max(batch_max):
    return _bounded(batch_max, "batch_max", 1, SCM_MAX_FD)


def check_window(window):
    return _bounded(window, "credit window", 1)


def check_stall_ms(stall_ms):
    """The stall threshold in ms; 0: no stall detection."""
    return _bounded(stall_ms, "stall_ms", 0)


def check_worker_connections(worker_connections):
    """A per-worker cap on open connections (policy least); 0: no cap."""
    return _bounded(worker_connections, "worker_connections", 0)
