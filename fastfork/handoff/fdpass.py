"""SCM_RIGHTS in Python: the file descriptors that came with a ``recvmsg``.

The Cython build does the same in ``csrc/fdpass.c``; this is the one Python
version, used by the control channel and by the pure-Python data channel.
"""

import array
import socket

_INT = array.array("i").itemsize


def cmsg_space(max_fds):
    """The ``ancbufsize`` that ``recvmsg`` needs for ``max_fds`` descriptors."""
    return socket.CMSG_SPACE(max_fds * _INT)


def unpack_fds(ancdata):
    """The descriptors in ``recvmsg``'s ancillary data, in order (the caller owns them)."""
    fds = []
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            arr = array.array("i")
            # A truncated control message may end in a partial int: drop it.
            arr.frombytes(cdata[:len(cdata) - len(cdata) % _INT])
            fds.extend(arr)
    return fds


def rights(fds):
    """``sendmsg`` ancillary data that passes ``fds`` (nothing for no fds)."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
