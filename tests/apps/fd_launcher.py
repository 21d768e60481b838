"""Start a program with a listening socket open at fd 3: ``fd_launcher.py PROGRAM ARGS...``.

As a supervisor that binds for its child (uvicorn's ``--fd 3``): binds 127.0.0.1 on
a free port, prints ``EVENT {"event": "bound", "address": ...}``, and execs PROGRAM.
"""

import json
import os
import socket
import sys

sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
host, port = sock.getsockname()
if sock.fileno() == 3:
    os.set_inheritable(sock.detach(), True)
else:
    os.dup2(sock.fileno(), 3)
    sock.close()
sys.stdout.write("EVENT " + json.dumps({"event": "bound", "address": f"{host}:{port}"}) + "\n")
sys.stdout.flush()
os.execv(sys.argv[1], sys.argv[1:])
