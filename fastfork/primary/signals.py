"""The signals the primary handles, and installing its handlers.

``signal.set_wakeup_fd`` writes one byte, the signal's number, for every
signal delivered, and wakes the primary's loop; the loop hands those bytes to
``arrived`` and then calls one ``handle_<signal>`` method per signal.  The
bytes are what is counted, not the Python-level handler (a no-op here):
Python runs that handler once for any number of the same signal that arrived
before the main thread got to it, so two SIGTTOU in a row would remove one
worker.  (The kernel, too, keeps one of a signal sent twice before the
process ran at all.)  A forked worker resets them all.
"""

import signal

HANDLED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT,
           signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)


class SignalQueue:
    """Signals received and not yet acted on, in order."""

    def __init__(self):
        self._pending = []
        self._saved = {}
        self._saved_wakeup = None

    def push(self, signum):
        self._pending.append(signum)

    def pop_all(self):
        while self._pending:
            yield self._pending.pop(0)

    def arrived(self, data):
        """Bytes read from the wakeup fd: one signal number each (0: a plain wake-up)."""
        self._pending.extend(byte for byte in data if byte)

    def install(self, wakeup_fd):
        """Handle every signal in HANDLED; each one delivered writes its number to
        ``wakeup_fd`` (for ``arrived``), which wakes the loop."""
        def record(signum, frame):
            pass        # counted from the wakeup fd (see the module's docstring)

        for sig in HANDLED:
            self._saved[sig] = signal.signal(sig, record)
        self._saved_wakeup = signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False)

    def restore(self):
        """Put back the handlers (and wakeup fd) there were before ``install``."""
        if not self._saved:
            return
        signal.set_wakeup_fd(self._saved_wakeup)
        for sig, handler in self._saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._saved = {}


def reset_in_child():
    """In a forked worker: default handlers, no wakeup fd; SIGINT ignored.

    Ctrl-C reaches the whole process group; the primary coordinates the
    shutdown, so workers must not die of KeyboardInterrupt first.
    """
    signal.set_wakeup_fd(-1)
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
