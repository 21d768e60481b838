"""The two errors the web layer raises before it serves anything."""

EXTRA_HINT = "pip install 'fastfork[web]'"


class NotAnAppError(ValueError):
    """The object given to ``fastfork.web`` is neither an ASGI nor a WSGI app."""


class MissingExtraError(ImportError):
    """A package of the ``web`` extra is missing; the message names the extra to install."""

    def __init__(self, package, purpose, cause=None):
        self.package = package
        message = (f"fastfork.web needs the {package!r} package to {purpose}, but it cannot "
                   f"be imported ({cause or 'not installed'}); install the web extra: "
                   f"{EXTRA_HINT}")
        super().__init__(message, name=package)
