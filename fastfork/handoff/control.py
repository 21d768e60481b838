"""The control channel: JSON messages between the primary and one worker.

One ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair per worker, separate from the
data channel so that the hot path never parses JSON.  Each datagram is one
UTF-8 JSON object with a string field ``"t"`` naming its type; a datagram may
carry file descriptors (the listening socket, for the ``none`` and
``reuseport`` policies).  Messages are limited to ``MAX_MESSAGE`` bytes.

    worker -> primary: online, listen, ready, heartbeat, msg, stopping
    primary -> worker: config, listening, listen_error, msg, stop
"""

import json
import os
import socket

from .fdpass import cmsg_space, rights, unpack_fds

MAX_MESSAGE = 64 * 1024
MAX_FDS = 4

_CMSG_SPACE = cmsg_space(MAX_FDS)


class MessageError(ValueError):
    """A message on the control channel is malformed, too large or unexpected."""


def encode(message):
    """``message`` (a dict with a string ``"t"``) as one datagram's bytes."""
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise MessageError(f"a control message is a dict with a string 't', got {message!r:.80}")
    try:
        data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise MessageError(f"message is not JSON-serializable: {exc}") from None
    if len(data) > MAX_MESSAGE:
        raise MessageError(f"message of {len(data)} bytes is over the {MAX_MESSAGE}-byte limit")
    return data


def decode(data, truncated=False):
    """Parse one datagram; raise MessageError naming what is wrong with it."""
    if truncated or len(data) > MAX_MESSAGE:
        raise MessageError(f"message over the {MAX_MESSAGE}-byte limit")
    try:
        message = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise MessageError("message is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise MessageError(f"message is not valid JSON ({exc.msg} at byte {exc.pos})") from None
    except (ValueError, RecursionError) as exc:
        # Well-formed JSON json.loads still refuses: a number over Python's
        # int digit limit (ValueError), nesting deeper than the recursion
        # limit (RecursionError).  A worker must not crash the primary with it.
        raise MessageError(f"message is not acceptable JSON ({exc})") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise MessageError("message is not a JSON object with a string 't' field")
    return message


class ControlChannel:
    """One end of a control channel.  Thread-safe for one sender and one reader."""

    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()

    def send(self, message, fds=(), wait=True):
        """Send one message; ``wait=False``: raise BlockingIOError rather than
        wait while the reader is behind (the channel's queue is full)."""
        self.sock.sendmsg([encode(message)], rights(fds), 0 if wait else socket.MSG_DONTWAIT)

    def recv(self):
        """Receive one message: ``(message, fds)``, or ``(None, [])`` at EOF.

        Raises BlockingIOError on a non-blocking socket with nothing to read,
        and MessageError (after closing any fds it carried) on a bad message.
        """
        data, ancdata, flags, _ = self.sock.recvmsg(MAX_MESSAGE + 1, _CMSG_SPACE)
        fds = unpack_fds(ancdata)
        if not data and not fds:
            return None, []
        try:
            if flags & socket.MSG_CTRUNC:
                raise MessageError(f"message carries more than {MAX_FDS} file descriptors")
            return decode(data, truncated=bool(flags & socket.MSG_TRUNC)), fds
        except MessageError:
            for fd in fds:
                os.close(fd)
            raise

    def close(self):
        self.sock.close()
