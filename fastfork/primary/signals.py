"""The signals the primary handles, and installing its handlers.

The handlers only record the signal (as gunicorn's arbiter does);
``signal.set_wakeup_fd`` wakes the primary's loop, which then calls one
``handle_<signal>`` method each.  A forked worker resets them all.
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

    def install(self, wakeup_fd):
        """Record every handled signal here; wake the loop through ``wakeup_fd``."""
        def record(signum, frame):
            self._pending.append(signum)

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
