"""The errors the web layer raises before it serves anything."""

from ..extras import MissingExtraError, hint

EXTRA_HINT = hint("web")

__all__ = ["EXTRA_HINT", "MissingExtraError", "NotAnAppError"]


class NotAnAppError(ValueError):
    """The object given to ``fastfork.web`` is neither an ASGI nor a WSGI app."""
