"""Fixtures shared by the microbenchmarks: channels and listeners.

Which implementation runs is the ``impl`` fixture of the root conftest.py,
the same one the tests use: it never falls back silently to the twin, so a
benchmark never measures the twin twice.
"""

import socket

import pytest


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
