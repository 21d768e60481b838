"""Start a program the way systemd socket activation does: ``ops_systemd.py PROGRAM ARGS...``.

Binds a listening socket on 127.0.0.1 (a free port) as fd 3, prints
``EVENT {"event": "activated", "address": ...}``, sets ``LISTEN_FDS=1`` and
``LISTEN_PID`` to its own pid, and execs PROGRAM (which keeps the pid).
"""

import json
import os
import socket
import sys

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
host, port = sock.getsockname()
if sock.fileno() == 3:              # the usual case: 0-2 are taken, so it got 3
    os.set_inheritable(sock.detach(), True)
else:
    os.dup2(sock.fileno(), 3)      # dup2 makes fd 3 inheritable
    sock.close()
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
# One write for the whole line (see cluster_app.py's emit()).
sys.stdout.write("EVENT " + json.dumps({"event": "activated", "address": f"{host}:{port}"}) + "\n")
sys.stdout.flush()
os.execv(sys.argv[1], sys.argv[1:])
