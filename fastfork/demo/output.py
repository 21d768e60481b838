"""The demo's printing: plain lines, colors on a terminal, one lock shared with fork.

Both the cluster's thread and the client's print, and the primary forks
while the client may be printing, so printing and forking share one lock
(``OUTPUT_LOCK``, taken around every fork): a child never starts with
stdout's buffer locked by a thread it does not have.
"""

import os
import sys
import threading

OUTPUT_LOCK = threading.Lock()
_fork_hooks_installed = False


def install_fork_hooks():
    global _fork_hooks_installed
    if not _fork_hooks_installed:
        _fork_hooks_installed = True
        os.register_at_fork(before=OUTPUT_LOCK.acquire,
                            after_in_parent=OUTPUT_LOCK.release,
                            after_in_child=OUTPUT_LOCK.release)



def count(number, noun):
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


_WORKER_COLORS = (36, 33, 35, 32, 34, 31)


class Output:
    """Plain lines on stdout; ANSI colors only on a terminal and unless --no-color."""

    def __init__(self, color):
        self.color = color
        self.reader_gone = False
        self.on_reader_gone = None      # called once if stdout's reader goes away

    def line(self, text=""):
        with OUTPUT_LOCK:
            if self.reader_gone:
                return
            try:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                # `python -m fastfork demo | head`: nobody reads any more.  Send
                # stdout to /dev/null (so no later flush fails) and end the demo.
                self.reader_gone = True
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
                if self.on_reader_gone is not None:
                    self.on_reader_gone()

    def error(self, text):
        with OUTPUT_LOCK:
            sys.stdout.flush()
            sys.stderr.write(f"fastfork demo: error: {text}\n")
            sys.stderr.flush()

    def _paint(self, code, text):
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def heading(self, text):
        return self._paint(1, text)

    def dim(self, text):
        return self._paint(2, text)

    def worker(self, worker_id, index, text=None):
        return self._paint(_WORKER_COLORS[index % len(_WORKER_COLORS)],
                           text or f"worker {worker_id}")
