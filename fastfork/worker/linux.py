"""The few Linux calls the standard library does not expose."""

import ctypes
import ctypes.util
import os

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_parent_death_signal(signum):
    """Have the kernel send ``signum`` to this process when its parent dies.

    Survives exec, so it also covers workers started in the Node form.
    """
    if _libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
