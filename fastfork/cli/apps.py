"""Loading the app ``fastfork run`` serves, and telling what kind of callable it is.

Everything that can be wrong with the app itself (a missing callable, an
import error, a callable fastfork cannot serve) is found here, before any
worker is forked.  Without ``--preload`` the app is imported once in a
short-lived checking child (``check_app``) so that the primary stays small and
never holds the app's code, and then in each worker, which is what lets a
reload pick up new code.
"""

import asyncio
import importlib
import importlib.util
import inspect
import os
import sys

from .. import privileges


class AppError(Exception):
    """The app cannot be loaded or is not something fastfork can serve."""


def load_app(spec):
    """Import ``MODULE:CALLABLE`` or ``path/to/app.py:CALLABLE`` and return the callable."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise AppError(f"app {spec!r} is not MODULE:CALLABLE or path/to/app.py:CALLABLE")
    if target.endswith(".py") or os.sep in target:
        module = _import_file(target)
    else:
        module = _import_module(target)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppError(f"{module.__name__} ({_where(module)}) has no {attr!r}") from None
    if not callable(obj):
        raise AppError(f"{spec} is a {type(obj).__name__}, not a callable")
    return obj


def _where(module):
    return getattr(module, "__file__", None) or "built-in"


def _import_module(name):
    # `python -m fastfork` puts the current directory on sys.path; the
    # `fastfork` script does not, and users expect their app to be found there.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name or name.startswith(exc.name + "."):
            raise AppError(f"no module named {exc.name!r} (searched from {os.getcwd()})") from None
        raise AppError(_import_failure(name, exc)) from None
    except BaseException as exc:       # SystemExit too: the app's import must not exit us
        raise AppError(_import_failure(name, exc)) from None


def _import_file(path):
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise AppError(f"no such file: {path}")
    name = os.path.splitext(os.path.basename(full))[0]
    # Like `python path/app.py`: the file's directory comes first on sys.path,
    # so the app's sibling modules import as they would there.
    sys.path.insert(0, os.path.dirname(full))
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        raise AppError(_import_failure(path, exc)) from None
    return module


def _import_failure(name, exc):
    # Name the innermost line of the app's own code, not importlib's.
    tb, where = exc.__traceback__, ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "importlib" not in filename:
            where = f" ({filename}, line {tb.tb_lineno})"
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
    return f"importing {name} failed: {type(exc).__name__}: {exc}{where}"


def app_kind(app, app_type, spec):
    """What the callable is (asgi, wsgi, stream, protocol, main), checked against
    ``--app-type``.  ``auto`` goes by the parameters' names, the conventions the
    frameworks keep: ``(environ, start_response)`` is WSGI, ``(scope, receive,
    send)`` ASGI, any other two a stream callback."""
    if isinstance(app, type) and issubclass(app, asyncio.BaseProtocol):
        detected = "protocol"
    else:
        detected = None
        try:
            params = [p for p in inspect.signature(app).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            params = None
        names = [p.name for p in params] if params is not None else []
        if names[:2] == ["environ", "start_response"]:
            detected = "wsgi"
        elif len(names) == 3 and names[0] == "scope":
            detected = "asgi"
        elif params is not None and len(params) == 2:
            detected = "stream"
    if app_type == "auto":
        if detected is None:
            raise AppError(f"cannot tell what kind of callable {spec} is; "
                           f"give --app-type asgi, wsgi, stream, protocol or main")
        return detected
    if app_type in ("asgi", "wsgi"):
        from ..web.detect import classify
        from ..web.errors import NotAnAppError
        try:
            classify(app)
        except NotAnAppError as exc:
            raise AppError(f"{spec}: --app-type {app_type}: {exc}") from None
    return app_type


def resolve_app(spec, app_type):
    app = load_app(spec)
    return app, app_kind(app, app_type, spec)


def check_app(spec, app_type, credentials):
    """Load the app in a forked child that reports back, then exits: errors
    show before any worker starts, and the primary never imports the app."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            message = ""
            try:
                if any(x is not None for x in credentials[:2]):
                    privileges.drop_privileges(*credentials)   # import as the workers will
                message = "ok " + resolve_app(spec, app_type)[1]
            except AppError as exc:
                message = str(exc)
            except BaseException as exc:
                message = f"checking {spec} failed: {type(exc).__name__}: {exc}"
            os.write(write_fd, message.encode("utf-8", "replace")[:60000])
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode()
    if not message:
        raise AppError(f"importing {spec} ended the checking process "
                       f"(exit status {os.waitstatus_to_exitcode(status)})")
    if not message.startswith("ok "):
        raise AppError(message)
    return message[3:]
