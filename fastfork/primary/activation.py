"""systemd socket activation: use the sockets systemd bound instead of binding."""

import os
import socket

# Inherited sockets start at fd 3 (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3


def inherited_sockets(environ=None):
    """Sockets passed by systemd socket activation, as ``{(family, sockaddr): socket}``.

    Reads and removes ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES`` (so that
    workers and their children do not take the sockets for their own); the
    sockets count only when ``LISTEN_PID`` is this process.
    """
    environ = os.environ if environ is None else environ
    pid = environ.pop("LISTEN_PID", None)
    count = environ.pop("LISTEN_FDS", None)
    environ.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None or pid.strip() != str(os.getpid()):
        return {}
    try:
        count = int(count)
    except ValueError:
        raise ValueError(f"LISTEN_FDS={count!r} is not a number") from None
    sockets = {}
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ValueError(f"LISTEN_FDS: fd {fd} is not a socket ({exc.strerror})") from None
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"LISTEN_FDS: fd {fd} is not a stream socket")
        sock.set_inheritable(False)
        sock.setblocking(False)
        bound = sock.getsockname()
        sockaddr = bound if sock.family == socket.AF_UNIX else bound[:2]
        sockets[(sock.family, sockaddr)] = sock
    return sockets
