"""Start a program as SCHED_BATCH, as ``chrt --batch 0 PROGRAM ARGS...`` would:
``batch_launcher.py PROGRAM ARGS...``.  An operator's own choice of policy."""

import os
import sys

os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
os.execv(sys.argv[1], sys.argv[1:])
