"""Where the primary blocks, in ``Dispatcher.poll``, the GIL goes to whoever
needs it, and only then.

The Cython build releases the GIL around ``epoll_wait`` while the process has
another Python thread, and keeps it when the poller is the only one (nobody
could take it, so the release would be pure cost).  Both halves are checked
here: another thread runs while ``poll`` waits (both builds), and a process
with a single thread still has its wait ended by a signal whose handler's
exception propagates.
"""

import os
import subprocess
import sys
import threading
import time

import pytest

from tests.implementations import Impl

DEADLINE = 5.0


def wchan_readable():
    """Whether /proc shows where a sleeping thread waits (some kernels hide it)."""
    parked = threading.Event()
    done = threading.Event()
    thread = threading.Thread(target=lambda: (parked.set(), done.wait()))
    thread.start()
    try:
        parked.wait()
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            with open(f"/proc/self/task/{thread.native_id}/wchan") as f:
                if f.read().strip() not in ("", "0"):
                    return True
        return False
    except OSError:
        return False
    finally:
        done.set()
        thread.join()


def test_other_threads_run_while_poll_waits(impl):
    if not wchan_readable():
        pytest.skip("/proc/<tid>/wchan is hidden here: cannot see where a thread waits")
    d = impl.backend.dispatcher.Dispatcher()
    r, w = os.pipe()
    wchan = f"/proc/self/task/{threading.get_native_id()}/wchan"
    seen = []

    def waker():
        # Wakes the poller only once it is inside epoll_wait: only a released
        # GIL lets this thread run then.
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            with open(wchan) as f:
                if "epoll" in f.read():
                    seen.append(True)
                    break
        os.write(w, b"x")

    thread = threading.Thread(target=waker)
    try:
        d.watch(r)
        thread.start()
        ready = d.poll(3 * DEADLINE * 1000)
        thread.join(DEADLINE)
        assert seen, "the poller was never seen inside epoll_wait"
        assert ready == [r], "poll() kept the GIL while another thread needed it"
    finally:
        thread.join()
        d.close()
        os.close(r)
        os.close(w)


SOLE_THREAD = """
import signal, threading
from fastfork.handoff._c import dispatcher as _cdispatch

class Boom(Exception):
    pass

def handler(signum, frame):
    raise Boom()

assert threading.active_count() == 1
signal.signal(signal.SIGALRM, handler)
d = _cdispatch.Dispatcher()
signal.setitimer(signal.ITIMER_REAL, 0.05)
try:
    d.poll(-1)
except Boom:
    print("interrupted", flush=True)
"""


def test_c_poll_with_the_only_thread_is_ended_by_a_signal():
    # The one thread keeps the GIL in epoll_wait; SIGALRM must still end the
    # wait (EINTR) and the handler's exception come out of poll(-1).
    impl = Impl("c")
    impl.backend                               # fails (or skips) without the build
    out = subprocess.run([sys.executable, "-c", SOLE_THREAD], env=impl.env(),
                         capture_output=True, text=True, timeout=DEADLINE * 2)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "interrupted\n"
