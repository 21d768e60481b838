"""The worker side: what runs in each forked worker process.

* ``boot``: everything a worker does before the app runs (both ways it starts).
* ``runtime``: the link to the primary (control channel thread, messages, stop).
* ``listener``: a shared address in a worker; blocking ``accept()``.
* ``aio``: asyncio servers on the shared address, heartbeats, the drain.
* ``connection``: one passed connection up to the app's protocol; open
  connections counted for the drain, closes reported for least.
* ``proxy_protocol``: PROXY v1/v2 headers, read before the app sees a connection.

A connection's path through a worker, each step a public method of the next:
the data channel -> ``Receiver.receive`` (``fastfork.handoff``) ->
``WorkerRuntime.pump`` -> ``Listener.deliver`` -> ``Server.attach`` (or the
queue of a blocking ``Listener.accept``) -> ``Connection.protocol`` -> the app;
on fastfork's engine, ``Listener.deliver`` -> the engine's ``Gate.take``, the
connection counted by the server's one ``GateOwner``.

Nothing here imports the package face (``fastfork/__init__.py``): the face
asks ``runtime.current()`` who this process is.
"""
