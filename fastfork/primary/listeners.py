"""The listening addresses the primary owns, and what each policy gives a worker.

* ``rr`` and ``least``: the primary listens and its dispatcher accepts; a
  worker is subscribed to the listener and gets connections over its data
  channel (the dispatcher's scheduler is what tells the two apart).
* ``none``: the primary listens; each worker gets a copy of the listening
  socket and accepts on it itself (the kernel picks the worker).
* ``reuseport``: the primary holds the port with a bound, non-listening
  ``SO_REUSEPORT`` socket; each worker gets a listening socket of its own in
  the same group (the kernel hashes connections over them).

Sockets passed by systemd (socket activation), or open at a file descriptor
named with ``fd://N`` (uvicorn's ``--fd``), are used instead of binding.
"""

import errno
import logging
import socket

from ..addresses import (bind_listener, describe, file_identity, set_defer_accept, set_nodelay,
                         unlink_if_same)
from ..settings import DISPATCHED
from .activation import inherited_sockets

log = logging.getLogger("fastfork")


class SharedListener:
    """A listening address owned by the primary, shared by the workers that asked for it."""

    inherited = False        # passed by systemd: never unlinked by us

    def __init__(self, family, sockaddr, sock, lid):
        self.family = family
        self.sock = sock
        self.lid = lid       # the dispatcher's listener id (rr, least), else -1
        bound = sock.getsockname()
        self.sockaddr = bound if family == socket.AF_UNIX else bound[:2]
        self.display = describe(family, self.sockaddr)
        # The socket file as bound: removed at the end only if still this one.
        self.identity = file_identity(bound) if family == socket.AF_UNIX else None


class Listeners:
    """Every address of one primary, keyed by ``(family, sockaddr)`` as asked."""

    def __init__(self, policy, defer_accept=False):
        self.policy = policy
        self.defer_accept = defer_accept  # TCP_DEFER_ACCEPT on each TCP listener
        self._shared = {}
        self._reserved = []               # reuseport: bound, not listening, holds the port
        self._inherited = inherited_sockets()   # systemd: (family, sockaddr) -> socket
        self._adopted = {}                # fd://N: (family, sockaddr) -> N

    def adopt(self, fd):
        """Serve the listening socket open at ``fd`` (``fd://N``) as if systemd had
        passed it; returns its address, for ``get``."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise OSError(exc.errno, f"fd://{fd} is not an open socket ({exc.strerror})") from None
        if sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise OSError(errno.EINVAL, f"fd://{fd} is not a stream socket")
        sock.set_inheritable(False)
        sock.setblocking(False)
        bound = sock.getsockname()
        key = (sock.family, bound if sock.family == socket.AF_UNIX else bound[:2])
        self._inherited[key] = sock
        self._adopted[key] = fd
        return describe(*key)

    def addresses(self):
        return [shared.display for shared in self._shared.values()]

    def inherited_addresses(self):
        return [describe(family, sockaddr) for family, sockaddr in self._inherited]

    def get(self, family, sockaddr, backlog, dispatcher):
        """The shared listener for an address, bound (or taken from systemd) on first use."""
        key = (family, sockaddr)
        shared = self._shared.get(key)
        if shared is not None:
            return shared
        if family == socket.AF_UNIX and self.policy == "reuseport":
            raise OSError(errno.EINVAL,
                          f"policy reuseport needs a TCP address, not unix:{sockaddr}")
        if key in self._inherited and self.policy == "reuseport":
            raise OSError(errno.EINVAL, f"policy reuseport cannot share the socket systemd passed "
                                        f"for {describe(family, sockaddr)}; use rr or none")
        if self.policy == "reuseport":
            # Hold the port with a bound, non-listening socket: it joins the
            # reuseport group but never receives connections.
            sock = bind_listener(family, sockaddr, backlog, reuseport=True, listen=False)
            self._reserved.append(sock)
            shared = SharedListener(family, sockaddr, sock, -1)
        else:
            inherited = self._inherited.pop(key, None)
            sock = inherited or bind_listener(family, sockaddr, backlog,
                                              defer_accept=self.defer_accept)
            if inherited is not None:
                set_nodelay(inherited)
                if self.defer_accept:
                    set_defer_accept(inherited)
            lid = dispatcher.add_listener(sock.fileno()) if self.policy in DISPATCHED else -1
            shared = SharedListener(family, sockaddr, sock, lid)
            if inherited is not None:
                shared.inherited = True
                log.info("using the socket %s for %s", f"at fd {self._adopted[key]}"
                         if key in self._adopted else "systemd passed", shared.display)
        self._shared[key] = shared
        return shared

    def grant(self, slot, family, sockaddr, backlog, dispatcher):
        """Let the worker in ``slot`` serve an address: ``(shared, fds, own)``:
        the fds to pass it (none under rr/least), and a socket made for it alone
        (reuseport), which the caller closes once it is sent."""
        shared = self.get(family, sockaddr, backlog, dispatcher)
        if self.policy in DISPATCHED:
            dispatcher.subscribe(slot, shared.lid)
            return shared, [], None
        if self.policy == "none":
            return shared, [shared.sock.fileno()], None
        own = bind_listener(family, shared.sockaddr, backlog, reuseport=True,
                            defer_accept=self.defer_accept)
        return shared, [own.fileno()], own

    def close(self, dispatcher):
        """Stop listening: nothing more is accepted; unix socket files are removed."""
        for shared in self._shared.values():
            if shared.lid >= 0:
                dispatcher.remove_listener(shared.lid)
            shared.sock.close()
            if shared.family == socket.AF_UNIX and not shared.inherited:
                unlink_if_same(shared.sockaddr, shared.identity)
        self._shared.clear()
        for sock in self._reserved:
            sock.close()
        self._reserved = []

    def close_all(self, dispatcher):
        """``close``, and the systemd sockets never used."""
        self.close(dispatcher)
        for sock in self._inherited.values():
            sock.close()
        self._inherited = {}

    def close_in_child(self):
        """In a forked worker: drop the primary's copies, touching no file."""
        for shared in self._shared.values():
            shared.sock.close()
        for sock in self._reserved + list(self._inherited.values()):
            sock.close()
