"""Which HTTP/1.1 implementation serves: ``http="auto"`` resolved.

``auto`` is fastfork's engine wherever it covers what was asked, since it is
the faster path (C from the passed fd to the app); otherwise uvicorn's
protocol on httptools, or on h11 where httptools is not installed.  What
makes auto pass the engine over is named (``engine_gap``), so the worker's
start-up line and an error for ``threads=0`` can say why:

- TLS: the engine speaks plain HTTP/1.1 only (uvicorn's protocol runs over
  the loop's TLS transport);
- ``FASTFORK_NO_EXTENSIONS`` set: the compiled parts are not to be used;
- the engine cannot load: not built, httptools missing or older than the
  engine runs on (``fastfork.engine.load``'s error says which).

An explicit ``http`` is taken as given (``engine`` then fails loudly where
it cannot serve).
"""

from typing import Any, Mapping, Optional, Tuple

from ..engine import unavailable
from ..extras import available

CHOICES = ("auto", "httptools", "h11", "engine")
# uvicorn.Config's TLS options: any of them (or an ssl context) asks for TLS.
TLS_OPTIONS = ("ssl_keyfile", "ssl_certfile", "ssl_keyfile_password", "ssl_ca_certs")


def asks_tls(ssl: Any, options: Mapping[str, Any]) -> bool:
    """Is TLS asked for: a server-side context, or one of uvicorn's TLS options?"""
    return ssl is not None or any(options.get(name) for name in TLS_OPTIONS)


def needs_engine(what: str, http: str, gap: Optional[str]) -> str:
    """The error for ``what``, which only the engine serves, resolved to ``http``."""
    return f"{what} needs the engine, " + (f"which cannot serve here: {gap}" if gap
                                           else f"not http={http!r}")


def engine_gap(tls: bool) -> Optional[str]:
    """Why the engine cannot serve a server with these options here, or None."""
    if tls:
        return "TLS (the engine speaks plain HTTP/1.1)"
    return unavailable()


def resolve(http: str, tls: bool) -> Tuple[str, Optional[str]]:
    """``(implementation, why_not_engine)``: ``http`` with ``auto`` made concrete
    (``engine``, ``httptools`` or ``h11``), and why auto passed the engine over
    (None when it did not, or when ``http`` was named)."""
    if http not in CHOICES:
        raise ValueError(f"http must be one of {', '.join(CHOICES)}, got {http!r}")
    if http != "auto":
        return http, None
    gap = engine_gap(tls)
    if gap is None:
        return "engine", None
    return ("httptools" if available("httptools") else "h11"), gap
