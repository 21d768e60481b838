"""The operator's side of a running primary: what an operator's tool talks to.

* ``status_socket``: the Unix socket ``fastfork status`` asks (server and client);
* ``endpoint``: the HTTP health (``/livez``, ``/readyz``) and ``/metrics`` endpoint;
* ``metrics``: the ``prometheus_client`` collector of a cluster;
* ``oneshot``: the one-request-one-answer server both sockets are made of.

The channels between the primary and its workers are ``fastfork.handoff``'s.
"""
