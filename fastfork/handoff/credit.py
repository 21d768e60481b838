"""The page of counters a worker shares with the primary (the Cython build's
credit; ``csrc/credit.h`` says what is on it and why it is safe).

The primary makes one per worker before forking it: a memfd, so that a
worker started by exec (the Node form) can map it from an inherited fd as a
forked one does.  The dispatcher and the worker's Receiver each map it
themselves (in C: Python's mmap would keep a dup of the fd open) and the fd
is closed once both have.
"""

import os


def create(size):
    """A new zeroed page of ``size`` bytes, as a close-on-exec memfd."""
    fd = os.memfd_create("fastfork-credit", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd
