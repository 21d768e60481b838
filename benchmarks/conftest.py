"""Fixtures shared by the microbenchmarks: which implementation, and channels."""

import socket

import pytest

from fastfork import _impl


def load_impl(name):
    """``(dispatch_module, scheduler_module)`` for ``"c"`` or ``"py"``.

    ``"c"`` never falls back silently: with ``filterwarnings = error`` a missing
    extension fails the test, so a benchmark never measures the twin twice.
    """
    return _impl.load(pure=(name == "py"))


@pytest.fixture(params=["c", "py"], ids=["c-dispatch", "py-dispatch"])
def impl(request):
    """The Cython hot path and its pure-Python twin: ``(dispatch, scheduler)``."""
    return load_impl(request.param)


@pytest.fixture
def channel():
    """A data channel: ``(primary_end, worker_end)`` SEQPACKET sockets, closed after."""
    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield pair
    for sock in pair:
        sock.close()


@pytest.fixture
def listener():
    """A loopback listening socket with room for every client a round connects."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    yield sock
    sock.close()
