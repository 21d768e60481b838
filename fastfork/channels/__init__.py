"""How an operator talks to a running primary.

* ``status_socket``: the Unix socket ``fastfork status`` asks a running primary on.
* ``oneshot``: the one-request server the health and metrics endpoints use.

The channels between the primary and its workers are ``fastfork.handoff``'s.
"""
