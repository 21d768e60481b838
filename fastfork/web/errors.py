"""The two errors the web layer raises before it serves anything."""

EXTRA_HINT = "pip install 'fastfork[web]'"


class NotAnAppError(ValueError):
    """The object given to ``fastfork.web`` is neither an ASGI nor a WSGI app."""


class MissingExtraError(ImportError):
    """A package of an optional extra (``web``, ``uvloop``) is missing; the message
    names the extra to install."""

    def __init__(self, package, purpose, cause=None, extra="web"):
        self.package = package
        self.extra = extra
        who = "fastfork.web" if extra == "web" else "fastfork"
        message = (f"{who} needs the {package!r} package to {purpose}, but it cannot "
                   f"be imported ({cause or 'not installed'}); install the {extra} extra: "
                   f"pip install 'fastfork[{extra}]'")
        super().__init__(message, name=package)
