"""Request header names with an underscore, for WSGI apps: gunicorn's ``header_map``.

WSGI puts each request header in the environ as ``HTTP_`` and its name
upper-cased with ``-`` turned into ``_``, so ``X-Forwarded-For`` and
``X_Forwarded_For`` are both ``HTTP_X_FORWARDED_FOR``.  A proxy that sets a
header for the app (``X-Forwarded-For``, an authenticated ``X-Remote-User``)
and strips the client's copy of it passes ``X_Remote_User`` through, and the
app reads the client's value: alone, or joined to the proxy's with a comma.
gunicorn 22 stopped mapping such names by default (its ``header_map``), and
nginx drops them before they reach a backend (``underscores_in_headers off``):

- ``drop`` (the default): a header whose name has an underscore is not in
  the environ;
- ``refuse``: a request that carries one is answered 400 and not served;
- ``dangerous``: it is mapped as every other is (what fastfork did before,
  and gunicorn before 22).

An ASGI app sees each name as sent (no two names meet in one key), so this
is for WSGI apps only, on every path that builds an environ: the engine's
(``fastfork/engine/_c/wsgi.pxi``, which refuses while it parses the head) and
the adapter's (``fastfork.web.wsgi``, on uvicorn's protocols and for a body
the engine streams to it).
"""

from typing import List, Optional, Tuple

MODES = ("drop", "refuse", "dangerous")
DEFAULT = "drop"
# The answer to a refused request, on every path (the engine has its own copy
# of the words in limits.pxi, checked equal by the tests).
REFUSED = "Invalid HTTP Header Name: a name with an underscore"

Headers = List[Tuple[bytes, bytes]]


def check(mode: object) -> str:
    """``mode`` if it is one of ``MODES``; else a ValueError that lists them."""
    if mode not in MODES:
        raise ValueError(f"header_map must be one of {', '.join(MODES)} (what a WSGI app's "
                         f"environ does with a header name that has an underscore), "
                         f"got {mode!r}")
    return str(mode)


def apply(headers: Headers, mode: str) -> Optional[Headers]:
    """The headers a WSGI environ is built from under ``mode``: ``headers``
    themselves, those without an underscore in the name (drop), or None if the
    request is to be refused."""
    if mode == "dangerous" or not any(b"_" in name for name, _ in headers):
        return headers
    if mode == "refuse":
        return None
    return [(name, value) for name, value in headers if b"_" not in name]
