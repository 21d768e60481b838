"""fastfork's optional parts, each a pip extra: the one place that imports one
or names the extra to install.

The core (the primary, the hand-off, the worker runtime) needs nothing beyond
the standard library.  Everything else is asked for with ``require`` as soon
as a setting says it will be used, before any worker is forked, so a missing
package is one clear line instead of a traceback in every worker.
"""

import importlib

# Which extra brings each optional package (pyproject.toml's
# [project.optional-dependencies] says the same from the other side).
EXTRAS = {
    "uvicorn": "web", "httptools": "web", "h11": "web", "websockets": "web", "a2wsgi": "web",
    "wsproto": "wsproto",
    "uvloop": "uvloop",
    "prometheus_client": "metrics",
    "watchfiles": "reload",
}


def hint(extra):
    """The command that installs ``extra``."""
    return f"pip install 'fastfork[{extra}]'"


class MissingExtraError(ImportError):
    """A package of an optional extra is missing; the message names the extra
    to install (``extra``) and the package (``package``, also ImportError's ``name``)."""

    def __init__(self, package, purpose, cause=None, extra=None):
        self.package = package
        self.extra = extra or EXTRAS.get(package, package)
        who = "fastfork.web" if self.extra == "web" else "fastfork"
        super().__init__(
            f"{who} needs the {package!r} package to {purpose}, but it cannot be imported "
            f"({cause or 'not installed'}); install the {self.extra} extra: {hint(self.extra)}",
            name=package)


def require(module, purpose, extra=None):
    """Import ``module`` (``purpose`` says what for, in the error) or raise
    ``MissingExtraError`` naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.partition(".")[0], purpose, exc, extra) from exc


def available(module):
    """Can ``module`` be imported?"""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
