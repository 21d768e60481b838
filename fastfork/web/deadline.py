"""A deadline for each request head, around uvicorn's HTTP protocol classes.

uvicorn closes a keep-alive connection idle ``timeout_keep_alive`` seconds
after a response, but nothing bounds how long a request head may take to
arrive: a connection that sends nothing, or a head sent a byte at a time
(slowloris), is held for ever, and with it a slot of ``limit_concurrency``
and the worker's fds.  ``with_head_deadline`` subclasses the protocol class
(httptools' or h11's, uvicorn 0.30 to 0.55: both keep ``self.cycle`` for the
request being answered, and call ``on_response_complete`` after each) so that:

* The clock starts at ``connection_made``, and after a response at the first
  byte of the next request: until then the connection is idle keep-alive,
  which uvicorn's own ``timeout_keep_alive`` timer closes (it is cancelled by
  that same first byte, so there is no moment that neither timer covers).
  Starting at the response would cut ``--timeout-keep-alive`` short whenever
  it is set longer than the head deadline.
* It stops when the protocol has a complete head: a new ``cycle`` object, an
  upgrade to a WebSocket (the protocol leaves uvicorn's ``connections``), or
  the connection closing (a 400 from the parser).  Pipelined requests whose
  heads are already parsed need no clock.
* At the deadline the connection is closed: with a ``408 Request Timeout``
  (``Connection: close``) when part of a request arrived, as nginx's
  ``client_header_timeout`` and gunicorn do, so that a real but slow client
  sees why (and browsers retry a 408); silently when nothing arrived, where
  there is no request to answer.  ``on_timeout`` counts it.
"""

REASON = b"Request Timeout"
BODY = b"the request head did not arrive in time\n"


def with_head_deadline(protocol_class, timeout, on_timeout):
    """A subclass of ``protocol_class`` with the head deadline (see the module docstring)."""

    class HeadDeadline(protocol_class):
        # Class defaults: no __init__ of ours (its signature is uvicorn's to change).
        _ff_timer = None         # the TimerHandle while a head is awaited and begun
        _ff_waiting = False      # awaiting a head: after connection_made or a response
        _ff_cycle = None         # self.cycle when the wait began; a new one is a full head
        _ff_partial = False      # bytes of the awaited head have arrived

        def connection_made(self, transport):
            super().connection_made(transport)
            self._ff_wait(None)
            self._ff_timer = self.loop.call_later(timeout, self._ff_expired)

        def data_received(self, data):
            if self._ff_waiting:
                self._ff_partial = True
                if self._ff_timer is None:      # the first byte after a response
                    self._ff_timer = self.loop.call_later(timeout, self._ff_expired)
            super().data_received(data)
            if self._ff_waiting and (self.cycle is not self._ff_cycle
                                     or self not in self.connections
                                     or self.transport.is_closing()):
                self._ff_waiting = False
                self._ff_cancel()

        def on_response_complete(self):
            super().on_response_complete()
            cycle = self.cycle
            # A pipelined request may already have its head (a new cycle,
            # not answered yet): the next wait begins after its response.
            if not self.transport.is_closing() and (cycle is None or cycle.response_complete):
                self._ff_wait(cycle)

        def connection_lost(self, exc):
            self._ff_waiting = False
            self._ff_cancel()
            super().connection_lost(exc)

        def _ff_wait(self, cycle):
            self._ff_cancel()
            self._ff_waiting, self._ff_cycle, self._ff_partial = True, cycle, False

        def _ff_cancel(self):
            if self._ff_timer is not None:
                self._ff_timer.cancel()
                self._ff_timer = None

        def _ff_expired(self):
            self._ff_timer = None
            self._ff_waiting = False
            if self.transport.is_closing():
                return
            on_timeout()
            if self._ff_partial:
                head = [b"HTTP/1.1 408 ", REASON, b"\r\n"]
                for name, value in self.server_state.default_headers:
                    head += [name, b": ", value, b"\r\n"]
                head.append(b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                            b"connection: close\r\n\r\n" % len(BODY))
                self.transport.write(b"".join(head) + BODY)
            self.transport.close()

    HeadDeadline.__name__ = HeadDeadline.__qualname__ = f"HeadDeadline{protocol_class.__name__}"
    return HeadDeadline
