"""The status socket (``--control-socket``): how ``fastfork status`` asks a running primary.

A Unix stream socket created with mode 0600 (in a directory only its owner
can enter, for the default location), and every peer checked with
``SO_PEERCRED``: only the primary's own user and root may ask, whatever the
file's mode became.  A client sends one JSON line, ``{"cmd": "status"}``, and
gets one JSON line back; then the primary closes the connection.

The primary never waits on a client (see ``oneshot``, which serves it).
"""

import errno
import json
import os
import socket
import stat
import struct

from ..addresses import file_identity, unlink_if_same
from .oneshot import BACKLOG, MAX_REQUEST, OneShotServer

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class StatusError(Exception):
    """A control request failed: no primary there, refused, or a bad answer."""


def default_dir():
    """Where control sockets live unless ``--control-socket`` says otherwise.

    ``$FASTFORK_RUN_DIR``; else ``/run/fastfork`` for root, else
    ``$XDG_RUNTIME_DIR/fastfork``, else ``/tmp/fastfork-UID``.
    """
    explicit = os.environ.get("FASTFORK_RUN_DIR")
    if explicit:
        return explicit
    if os.getuid() == 0:
        return "/run/fastfork"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "fastfork")
    return f"/tmp/fastfork-{os.getuid()}"


def default_path(name):
    """The control socket of the primary called ``name`` (``--name``)."""
    return os.path.join(default_dir(), f"{name}.sock")


def peer_credentials(sock):
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket,
    as they were when it connected (``SO_PEERCRED``)."""
    return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))


def peer_allowed(peer_uid, owner_uid):
    """Only the primary's own user and root may use its control socket."""
    return peer_uid == owner_uid or peer_uid == 0


def _ensure_private_dir(path):
    # Create our own directory 0700; an existing one must be ours and not
    # writable by others, or another user could swap the socket under us.
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        pass
    info = os.stat(path)
    if info.st_uid != os.getuid():
        raise OSError(errno.EPERM, f"control socket directory {path} belongs to uid "
                                   f"{info.st_uid}, not to this user ({os.getuid()})")
    if info.st_mode & 0o022:
        raise OSError(errno.EPERM, f"control socket directory {path} is writable by others "
                                   f"(mode {info.st_mode & 0o777:o})")


class StatusServer(OneShotServer):
    """The listening control socket, served from the primary's loop.

    ``commands`` maps a command name to a function returning a JSON-able
    answer; ``watch(fd)``/``unwatch(fd)`` register fds with the primary's
    loop, which calls ``handle(fd)`` when one is readable.
    """

    def __init__(self, path, commands, watch, unwatch):
        self.path = os.path.abspath(path)
        self.owner_uid = os.getuid()
        self._commands = dict(commands)
        self._pid = os.getpid()
        if os.path.dirname(self.path) == os.path.abspath(default_dir()):
            _ensure_private_dir(os.path.dirname(self.path))
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)   # born 0600: no window where others may connect
        try:
            sock.bind(self.path)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot create control socket {self.path}: "
                                     f"{os.strerror(exc.errno)}") from None
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._identity = file_identity(self.path)   # removed at the end only if still ours
        sock.listen(BACKLOG)
        sock.setblocking(False)
        super().__init__(sock, watch, unwatch)

    def _remove_stale(self):
        if not os.path.lexists(self.path):
            return
        try:
            answer = request(self.path, "status", timeout=2.0)
        except StatusError:
            answer = None
        if answer is not None:
            pid = answer.get("primary", {}).get("pid")
            raise OSError(errno.EADDRINUSE, f"control socket {self.path} is in use by a running "
                                            f"primary (pid {pid}); give this one another --name "
                                            f"or --control-socket")
        if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise OSError(errno.EEXIST,
                          f"control socket path {self.path} exists and is not a socket")
        os.unlink(self.path)     # left by a primary that was killed

    def admit(self, conn):
        _, uid, _ = peer_credentials(conn)
        if peer_allowed(uid, self.owner_uid):
            return None
        return _encode({"error": f"permission denied: uid {uid} is neither the "
                                 f"primary's user ({self.owner_uid}) nor root"})

    def complete(self, buffer):
        return b"\n" in buffer

    def respond(self, request):
        return _encode(answer_line(request.split(b"\n", 1)[0], self._commands))

    def too_large(self):
        return _encode({"error": f"a request line is longer than {MAX_REQUEST} bytes; "
                                 f"{USAGE}"})

    def failure(self, exc):
        return _encode({"error": f"the primary failed to answer: {exc!r}"})

    def close(self, unlink=True):
        """Stop serving; ``unlink=False`` in a forked worker (the path is the primary's)."""
        super().close(unwatch=unlink)
        if unlink and os.getpid() == self._pid:
            unlink_if_same(self.path, self._identity)


USAGE = 'a request is one JSON line like {"cmd": "status"}'


def answer_line(line, commands):
    """The answer (a JSON-able dict) to one request ``line`` (bytes, no newline).

    An operator's tool may send anything: bytes that are not UTF-8, JSON of
    any shape (a list, a string, ``{"cmd": {}}``), nesting deeper than the
    recursion limit.  Each gets ``{"error": ...}``; nothing here raises, since
    an exception would end the primary's loop and with it every worker.
    """
    try:
        message = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):    # UnicodeDecodeError is a ValueError
        return {"error": f"not a JSON line; {USAGE}"}
    command = message.get("cmd") if isinstance(message, dict) else None
    if not isinstance(command, str):
        return {"error": f"no command string in the line; {USAGE}"}
    handler = commands.get(command)
    if handler is None:
        shown = command if len(command) <= 40 else command[:40] + "..."
        return {"error": f"unknown command {shown!r}; commands: {', '.join(commands)}"}
    return handler()


def _encode(answer):
    # Answers are small (a status is ~150 bytes a worker).
    return json.dumps(answer).encode() + b"\n"


def request(path, command="status", timeout=5.0):
    """Ask the primary at ``path``; returns its answer (a dict) or raises StatusError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise StatusError(f"no control socket at {path}: is the primary running?") from None
        except ConnectionRefusedError:
            raise StatusError(f"nothing answers at {path}: the primary is gone") from None
        except PermissionError:
            raise StatusError(f"permission denied on {path}: run as the primary's user "
                               f"or root") from None
        try:
            sock.sendall(json.dumps({"cmd": command}).encode() + b"\n")
        except BrokenPipeError:
            pass     # a refused peer is answered and closed at once: read why
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise StatusError(f"the primary at {path} did not answer within {timeout}s") from None
    except OSError as exc:
        raise StatusError(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(data.decode("utf-8"))
    except ValueError:
        raise StatusError(f"the primary at {path} closed the connection without an answer"
                           if not data else f"bad answer from {path}") from None
    if isinstance(answer, dict) and "error" in answer:
        raise StatusError(answer["error"])
    return answer
