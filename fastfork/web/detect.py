"""Tell an ASGI app from a WSGI app by its calling convention, never by its class name.

ASGI 3 is ``async def app(scope, receive, send)`` (a coroutine function, or an
object whose ``__call__`` is one: Starlette, FastAPI, Django's ASGIHandler,
a2wsgi's middleware).  ASGI 2 (uvicorn still serves it) is a class built with
``App(scope)`` whose instances have ``async def __call__(self, receive, send)``.
WSGI is ``app(environ, start_response)``: a plain function, or an object with a
synchronous two-parameter ``__call__`` (Flask, Django's WSGIHandler).
"""

import functools
import inspect
from typing import Any, Optional, Tuple

from .errors import NotAnAppError

ASGI, WSGI = "asgi", "wsgi"
_ASGI_SHAPE = "an ASGI app (async def app(scope, receive, send))"
_WSGI_SHAPE = "a WSGI app (def app(environ, start_response))"


def detect(app: object) -> str:
    """``"asgi"`` or ``"wsgi"``; raises ``NotAnAppError`` (a ``ValueError``) otherwise."""
    return classify(app)[0]


def classify(app: object) -> Tuple[str, Optional[str]]:
    """``(kind, interface)``: kind as ``detect``; interface is uvicorn's name for
    the ASGI flavour (``"asgi3"``/``"asgi2"``), None for WSGI."""
    if isinstance(app, str):
        raise NotAnAppError(f"got the string {app!r}, not an app: pass the app object itself "
                            f"(import it first), which must be {_ASGI_SHAPE} or {_WSGI_SHAPE}")
    if not callable(app):
        raise NotAnAppError(f"{describe(app)} is not callable, so it is neither "
                            f"{_ASGI_SHAPE} nor {_WSGI_SHAPE}")
    if inspect.isclass(app):
        # An ASGI 2 application class: App(scope) -> instance with async __call__(receive, send).
        call = getattr(app, "__call__", None)
        if _is_coroutine_function(call) and _positional(call) in (2, 3) \
                and _positional(app) == 1:
            return ASGI, "asgi2"
        raise NotAnAppError(f"{describe(app)} is a class, not an app: pass an instance or "
                            f"the app object, which must be {_ASGI_SHAPE} or {_WSGI_SHAPE}")
    target = app if _is_function(app) else type(app).__call__
    count = _positional(app)
    if _is_coroutine_function(target):
        if count == 3:
            return ASGI, "asgi3"
        raise NotAnAppError(f"{describe(app)} takes {_count(count)}, so it is neither "
                            f"{_ASGI_SHAPE}, which takes exactly 3, nor {_WSGI_SHAPE}, "
                            f"which is not async")
    if count == 2:
        return WSGI, None
    if count == 3:
        # A synchronous callable returning the ASGI coroutine (a thin middleware
        # that does `return self.app(scope, receive, send)`): WSGI never takes 3.
        return ASGI, "asgi3"
    raise NotAnAppError(f"{describe(app)} takes {_count(count)}, so it is neither "
                        f"{_ASGI_SHAPE} nor {_WSGI_SHAPE}")


def _is_function(obj: Any) -> bool:
    return inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj) \
        or isinstance(obj, functools.partial)


def _is_coroutine_function(obj: Any) -> bool:
    while isinstance(obj, functools.partial):
        obj = obj.func
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None))


def _positional(obj: Any) -> Optional[int]:
    """How many positional arguments ``obj(...)`` takes (its minimum when it has
    defaults or *args, unless that is below what it accepts); None if unknown."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = signature.parameters.values()
    positional = [p for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        # def __call__(self, *args): accepts anything; judge by what it requires.
        required = [p for p in positional if p.default is p.empty]
        return len(required) if required else None
    return len(positional)


def _count(count: Optional[int]) -> str:
    if count is None:
        return "an unknown number of arguments"
    return f"{count} positional argument{'' if count == 1 else 's'}"


def describe(obj: object) -> str:
    """A short phrase naming what ``obj`` is, for error messages."""
    if obj is None:
        return "None"
    if inspect.isclass(obj):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if inspect.iscoroutinefunction(obj) or inspect.isfunction(obj) or inspect.ismethod(obj):
        kind = "coroutine function" if inspect.iscoroutinefunction(obj) else "function"
        try:
            signature = str(inspect.signature(obj))
        except (TypeError, ValueError):
            signature = "(...)"
        return f"the {kind} {obj.__module__}.{obj.__qualname__}{signature}"
    text = repr(obj)
    if len(text) > 60:
        text = text[:57] + "..."
    cls = type(obj)
    return f"{text} (an instance of {cls.__module__}.{cls.__qualname__})"
