"""The hand-off between the primary and its workers: everything both ends share.

Each worker has two channels to the primary, made before it is forked:

* the **data channel** (``wire``: its format, written once), down which the
  primary passes accepted connections (``fdpass``: SCM_RIGHTS) and up which
  credit comes back, through a page of counters the two share (``credit``)
  or in ACK messages;
* the **control channel** (``control``): JSON messages both ways.

The data channel's two ends are the hot path, built twice with the same
interface: in Cython (``_c``) and in pure Python (``_py``), each with a
``dispatcher`` (the primary's end: accept, pick a worker, pass the fd), a
``receiver`` (the worker's end) and a ``scheduler`` (which worker gets the
next connection: pure logic).  ``backend`` is the one place that chooses
(``FASTFORK_NO_EXTENSIONS=1``: the twin).  ``csrc/`` at the top of the
repository holds the C the Cython build links (``fdpass.c``, ``credit.h``).
"""
