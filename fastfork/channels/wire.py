"""The data channel's wire format, shared by both implementations.

The data channel is one ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair per worker:
the primary sends batches of accepted connections down it, the worker sends
acknowledgements back.  Every message is one datagram (SEQPACKET keeps message
boundaries and order, so an acknowledgement of ``n`` always means "the oldest
``n`` connections you sent me").

    primary -> worker   FDS: u8 type=1, u8 0, u16 count, then count x u16
                             listener id; SCM_RIGHTS carries exactly count fds
    primary -> worker   END: u8 type=2, u8 0, u16 0: nothing more will come
    worker  -> primary  ACK: u8 type=3, u8 0, u16 count received
    worker  -> primary  CLOSED: u8 type=4, u8 0, u16 count: that many of the
                             connections it acknowledged are closed now

ACK is sent on arrival and stays the only thing that releases the primary's
copy of a connection (a worker that dies before acknowledging loses nothing).
CLOSED exists for policy ``least``, whose scheduler counts each worker's open
connections (sent minus reported closed); a worker sends it only under that
policy, batched (one datagram per event-loop iteration), and never for more
than it acknowledged.  Under ``rr`` a CLOSED is a protocol error.  A count
over 65535 goes as several datagrams, as for ACK.

Native byte order: both ends are always on the same machine.
"""

import struct

MSG_FDS = 1
MSG_END = 2
MSG_ACK = 3
MSG_CLOSED = 4

HEADER = struct.Struct("=BxH")
LID = struct.Struct("=H")

# Linux refuses more than SCM_MAX_FD (253) descriptors in one message.
SCM_MAX_FD = 253
DEFAULT_BATCH_MAX = 64

# Upper bounds of the batch-size buckets the dispatchers count (fds per
# sendmsg): what the metrics show as a histogram.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, SCM_MAX_FD)

# Credit window: how many connections a worker may hold unacknowledged.
# 8 bounds what a frozen worker can strand (at most 8 connections, and those
# go to another worker as soon as the frozen one is killed) while a busy
# primary still sends up to 8 fds per sendmsg, which is where the per-message
# cost stops mattering (see benchmarks/test_benchmarks_fdpass.py).
DEFAULT_WINDOW = 8


class ProtocolError(Exception):
    """A peer sent something the data-channel protocol does not allow."""


def check_batch_max(batch_max):
    batch_max = int(batch_max)
    if not 1 <= batch_max <= SCM_MAX_FD:
        raise ValueError(f"batch_max must be in 1..{SCM_MAX_FD}, got {batch_max}")
    return batch_max


def check_window(window):
    window = int(window)
    if window < 1:
        raise ValueError(f"credit window must be >= 1, got {window}")
    return window


def check_worker_connections(worker_connections):
    """A per-worker cap on open connections (policy least); 0: no cap."""
    worker_connections = int(worker_connections)
    if worker_connections < 0:
        raise ValueError(f"worker_connections must be >= 0, got {worker_connections}")
    return worker_connections
