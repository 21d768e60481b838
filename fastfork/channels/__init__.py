"""How the primary and its workers talk (and how an operator talks to the primary).

* ``wire``: the data channel's format (connections primary -> worker, acks back);
  its hot path is in ``fastfork._core``.
* ``control``: the control channel, JSON messages both ways, one per worker.
* ``fdpass``: SCM_RIGHTS unpacking, shared by the Python ends.
* ``status_socket``: the Unix socket ``fastfork status`` asks a running primary on.
"""
