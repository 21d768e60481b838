"""X-Forwarded-For and -Proto for a WSGI app the engine calls on the loop thread.

Every other app gets them from uvicorn's ``ProxyHeadersMiddleware``, which
``uvicorn.Config.load`` wraps around it (a WSGI app on the thread pool is
adapted to ASGI first, so it is wrapped too).  A WSGI app on the loop thread
is called by the engine with an environ built from the request's scope: the
same middleware is run on that scope first.  So the trust rules
(``forwarded_allow_ips``: addresses, networks, ``*``) are uvicorn's, in every
supported version, with no copy of them here.  The middleware rewrites the
scope in place and then awaits the app it wraps, which here returns at once:
its coroutine ends on the first step, on the loop thread.
"""

from typing import Any, Callable, Optional


async def _nothing(scope: Any, receive: Any, send: Any) -> None:
    return None


def scope_filter(config: Any) -> Optional[Callable[[Any], None]]:
    """``apply(scope)`` for ``uvicorn.Config`` ``config``, or None without
    ``proxy_headers``."""
    if not config.proxy_headers:
        return None
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
    middleware = ProxyHeadersMiddleware(_nothing, trusted_hosts=config.forwarded_allow_ips)

    def apply(scope: Any) -> None:
        step = middleware(scope, None, None)
        try:
            step.send(None)
        except StopIteration:
            return
        step.close()
        raise RuntimeError("uvicorn's ProxyHeadersMiddleware awaited something: it cannot "
                           "run on the loop thread before a WSGI call")
    return apply
