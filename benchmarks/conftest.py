"""Fixtures shared by the microbenchmarks (channels and listeners) and by the
smoke tests of the load scripts (``run_script``).

Which implementation runs is the ``impl`` fixture of the root conftest.py,
the same one the tests use: it never falls back silently to the twin, so a
benchmark never measures the twin twice.
"""

import os
import signal
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.fixture
def run_script():
    """``run_script(argv, timeout=50)``: run a load script (``argv`` after the
    interpreter, from the checkout's root) in a session of its own, on the
    Cython build, and return ``(returncode, stdout, stderr)``; the session is
    killed if it outlives ``timeout``."""
    def run(argv, timeout=50):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("FASTFORK_NO_EXTENSIONS", None)
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode, stdout, stderr
    return run
