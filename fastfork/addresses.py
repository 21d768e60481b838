"""Listening addresses: parse what a user writes, bind what the primary owns."""

import ipaddress
import os
import socket
from typing import Any, Iterable, List, Optional, Tuple, Union, cast

DEFAULT_BACKLOG = 2048

# What a user may write for an address (see parse_address), and what it parses to.
Address = Union[int, str, Tuple[str, Union[int, str]]]
SockAddr = Union[str, Tuple[Any, ...]]     # a path, or (host, port[, flowinfo, scope_id])
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def parse_address(address: Address) -> Tuple[socket.AddressFamily, SockAddr]:
    """Normalize ``address`` to ``(family, sockaddr)``.

    Accepted forms: a port number (all IPv4 interfaces, as Node's
    ``listen(3000)``), ``"host:port"``, ``"[v6]:port"``, ``(host, port)``,
    and ``"unix:/path"``; gunicorn's ``"tcp://host:port"`` and
    ``"unix://path"`` too.  ``"fd://N"`` (a socket already open, see
    ``fd_of``) has no address until the socket is looked at: ValueError here.
    """
    port: Union[int, str]
    if isinstance(address, bool):
        raise ValueError(f"not an address: {address!r}")
    if isinstance(address, int):
        address = ("0.0.0.0", address)
    elif isinstance(address, str):
        scheme, sep, rest = address.partition("://")
        if sep and scheme == "tcp":
            address = rest
        elif sep and scheme == "unix":
            address = "unix:" + rest
        elif sep:
            raise ValueError(f"address {address!r} is not HOST:PORT or unix:PATH (no "
                             f"{scheme}:// here: give {_without_scheme(rest)})")
        if address.startswith("unix:"):
            path = address[5:]
            if not path:
                raise ValueError("unix: address needs a path, e.g. unix:/run/app.sock")
            return socket.AF_UNIX, path
        host, sep, port = address.rpartition(":")
        if not sep:
            raise ValueError(f"address {address!r} is not HOST:PORT or unix:PATH")
        address = (host.strip("[]") or "0.0.0.0", port)
    if not (isinstance(address, (tuple, list)) and len(address) == 2):
        raise ValueError(f"not an address: {address!r}")
    host, port = address
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValueError(f"port must be a number, got {port!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    host = str(host or "0.0.0.0")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, port)


def _without_scheme(rest: str) -> str:
    host_port = rest.split("/", 1)[0]
    return host_port if ":" in host_port.rpartition("]")[2] else f"{host_port or 'HOST'}:PORT"


def fd_of(address: object) -> Optional[int]:
    """The file descriptor of an ``"fd://N"`` address (uvicorn's ``--fd``, gunicorn's
    ``--bind fd://N``), or None for any other address."""
    if not isinstance(address, str) or not address.startswith("fd://"):
        return None
    text = address[5:]
    if not text.isdigit():
        raise ValueError(f"address {address!r}: fd:// needs a file descriptor number")
    return int(text)


def parse_networks(values: Iterable[str]) -> List[Network]:
    """``ip_network`` objects from ``"127.0.0.1"``, ``"10.0.0.0/8"``, ``"::1"``, ``"*"``."""
    networks: List[Network] = []
    for value in values:
        if value == "*":
            networks += [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
            continue
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network (like 10.0.0.0/8), "
                             f"nor '*'") from None
    return networks


def describe(family: int, sockaddr: SockAddr) -> str:
    """How an address is shown to people: ``127.0.0.1:8000``, ``[::1]:80``, ``unix:/x``."""
    if family == socket.AF_UNIX:
        return f"unix:{sockaddr}"
    host, port = cast(Tuple[Any, ...], sockaddr)[:2]
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


# Seconds a connection that has sent nothing waits in the kernel before it is
# accepted all the same (the kernel rounds it to its SYN-ACK retransmissions).
DEFER_ACCEPT_SECONDS = 1


def set_defer_accept(sock: socket.socket) -> None:
    """Accept a TCP connection only once its first bytes have arrived
    (``TCP_DEFER_ACCEPT``, nginx's ``deferred``): for protocols in which the
    client speaks first, as HTTP and TLS do.  A connection then never waits
    inside a worker for a request that has not come: it waits in the
    kernel, where it is nobody's yet, so a worker whose loop blocks holds
    only requests it has begun.  A client that sends nothing is accepted
    after about ``DEFER_ACCEPT_SECONDS`` all the same.  No-op for unix
    sockets."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS)


def set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on a TCP listener, as gunicorn sets it on its own: Linux
    copies it to every connection accepted from it, so the workers need not
    set it on each (``fastfork.engine``'s gate checks the first).  No-op for
    unix sockets."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def bind_listener(family: int, sockaddr: SockAddr, backlog: int = DEFAULT_BACKLOG,
                  reuseport: bool = False, listen: bool = True,
                  defer_accept: bool = False) -> socket.socket:
    """A bound, non-blocking, close-on-exec listening socket.

    ``defer_accept``: see ``set_defer_accept``.

    Raises OSError with the address in its message (``EADDRINUSE``,
    ``EACCES``, ``EADDRNOTAVAIL``...), errno preserved.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if family == socket.AF_UNIX:
            _remove_stale_unix_socket(cast(str, sockaddr))
        sock.bind(sockaddr)
        set_nodelay(sock)
        if defer_accept:
            set_defer_accept(sock)
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        # A host name that does not resolve is a socket.gaierror, whose errno
        # (EAI_NONAME...) os.strerror does not know: its own text says it.
        reason = (exc.strerror if isinstance(exc, socket.gaierror) or not exc.errno
                  else os.strerror(exc.errno)) or exc
        raise OSError(exc.errno, f"cannot listen on {describe(family, sockaddr)}: "
                                 f"{reason}") from None
    except BaseException:
        sock.close()         # e.g. OverflowError for a backlog no C int holds
        raise
    return sock


def file_identity(path: str) -> Optional[Tuple[int, int]]:
    """``(st_dev, st_ino)`` of the file at ``path`` (not followed), or None."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):     # gone, or an abstract name (a NUL byte)
        return None
    return st.st_dev, st.st_ino


def unlink_if_same(path: str, identity: Optional[Tuple[int, int]]) -> None:
    """Remove the socket file this process bound at ``path`` (``identity`` taken
    then), unless another file took the path since: a newer primary bound
    there (a deploy removed ours and started it), and its file is not ours."""
    if identity is not None and file_identity(path) == identity:
        try:
            os.unlink(path)
        except OSError:
            pass


def _remove_stale_unix_socket(path: str) -> None:
    """Unlink ``path`` if it is a socket file nobody listens on any more.

    A primary killed with SIGKILL leaves its socket file behind, and bind()
    would then fail with "address in use" forever.  A live socket (connect
    succeeds) or any other kind of file is left alone, so bind reports it.
    """
    import stat
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except OSError:
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    except OSError:
        pass
    finally:
        probe.close()
