"""The worker side: what runs in each forked worker process.

* ``boot``: everything a worker does before the app runs (both ways it starts).
* ``runtime``: the link to the primary (control channel thread, messages, stop).
* ``listener``: a shared address in a worker; blocking ``accept()``.
* ``aio``: asyncio servers on the shared address, heartbeats, the drain.
* ``tracking``: open connections counted for the drain, closes reported for least.
* ``loops``: which event loop serves (``--loop``: asyncio or uvloop).

Nothing here imports the package face (``fastfork/__init__.py``): the face
asks ``runtime.current()`` who this process is.
"""
