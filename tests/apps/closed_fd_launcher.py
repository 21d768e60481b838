"""Run a program with some of fds 0-2 closed: ``closed_fd_launcher.py FDS PROGRAM ARGS...``.

``FDS`` is a comma-separated list (``1``, ``2``, ``0,1``): as a shell's ``>&-``
or a daemon launcher that closes what it does not need.
"""

import os
import sys

for fd in sys.argv[1].split(","):
    os.close(int(fd))
os.execv(sys.argv[2], sys.argv[2:])
