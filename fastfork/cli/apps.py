"""Loading the app ``fastfork run`` serves, and telling what kind of callable it is.

Everything that can be wrong with the app itself (a missing callable, an
import error, a callable fastfork cannot serve, a package its kind needs) is
found here and reported as one line.  With ``--preload`` the primary imports
the app before any fork.  Without it the primary never holds the app's code:
each worker imports it (``load_in_worker``), which is what lets a reload pick
up new code, and the first one tells the primary what it found
(``fastfork.cli.startup``); ``--check-config`` imports it once in a
short-lived checking child (``check_app``).
"""

import asyncio
import importlib
import importlib.util
import inspect
import os
import signal
import sys

from .. import privileges


class AppError(Exception):
    """The app cannot be loaded or is not something fastfork can serve."""


# gunicorn's MODULE form: ``mysite.wsgi`` is ``mysite.wsgi:application``.
DEFAULT_CALLABLE = "application"


def load_app(spec, factory=False):
    """Import ``MODULE:CALLABLE`` or ``path/to/app.py:CALLABLE`` and return the callable.

    ``MODULE`` alone means ``MODULE:application`` (gunicorn's form);
    ``MODULE:make()``, or ``factory=True`` (uvicorn's ``--factory``), calls
    the callable with no arguments and returns what it returns."""
    target, sep, attr = spec.rpartition(":")
    if not sep and spec and not spec.endswith(".py") and os.sep not in spec:
        target, attr = spec, DEFAULT_CALLABLE
    elif not sep or not target or not attr:
        raise AppError(f"app {spec!r} is not MODULE:CALLABLE or path/to/app.py:CALLABLE")
    if attr.endswith("()"):
        attr, factory = attr[:-2], True
    if target.endswith(".py") or os.sep in target:
        module = _import_file(target)
    else:
        module = _import_module(target)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            hint = ("" if sep else f" (MODULE alone means MODULE:{DEFAULT_CALLABLE}, as in "
                                   f"gunicorn: give MODULE:CALLABLE)")
            raise AppError(f"{module.__name__} ({_where(module)}) has no {attr!r}{hint}") from None
    if not callable(obj):
        raise AppError(f"{spec} is a {type(obj).__name__}, not a callable")
    if factory:
        try:
            obj = obj()
        except Exception as exc:
            raise AppError(f"{import_failure(spec + ' (a factory)', exc, 'calling')}") from None
        if not callable(obj):
            raise AppError(f"the factory {spec} returned a {type(obj).__name__}, "
                           f"not a callable")
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
        raise AppError(import_failure(name, exc)) from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:       # SystemExit too: the app's import must not exit us
        raise AppError(import_failure(name, exc)) from None


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
    except KeyboardInterrupt:
        del sys.modules[name]
        raise
    except BaseException as exc:
        del sys.modules[name]
        raise AppError(import_failure(path, exc)) from None
    return module


def import_failure(name, exc, doing="importing"):
    # Name the innermost line of the app's own code, not importlib's.
    tb, where = exc.__traceback__, ""
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if "importlib" not in filename:
            where = f" ({filename}, line {tb.tb_lineno})"
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
    return f"{doing} {name} failed: {type(exc).__name__}: {exc}{where}"


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
            web_kind, _ = classify(app)
        except NotAnAppError as exc:
            raise AppError(f"{spec}: --app-type {app_type}: {exc}") from None
        if app_type == "wsgi" and web_kind == "asgi":
            # Served as WSGI it would answer every request with a 500.
            raise AppError(f"{spec}: --app-type wsgi, but it is an ASGI app (async, takes "
                           f"scope, receive, send): give --app-type asgi, or leave it out")
    return app_type


def resolve_app(spec, app_type, factory=False):
    app = load_app(spec, factory)
    return app, app_kind(app, app_type, spec)


def check_kind(settings, kind):
    """What serving an app of ``kind`` needs, checked now: AppError, or ImportError
    naming the extra to install, or ValueError."""
    if kind in ("asgi", "wsgi"):
        from ..web import deps
        deps.check(kind, settings.http, settings.ws, settings.loop)
    elif kind != "main":          # main runs a loop of its own choosing
        from .. import loops
        loops.check(settings.loop)
    if settings.ssl_certfile and kind == "main":
        raise AppError("--ssl-certfile: an app of type main serves its sockets itself, so "
                       "it cannot be given TLS here")


def load_in_worker(settings, runtime):
    """In a worker, the app not preloaded: import it, check it, and tell the primary
    (``runtime.loaded``) its kind or, exiting, the one line saying why not."""
    runtime.loading = True            # a stop meanwhile ends this worker at once
    try:
        app, kind = resolve_app(settings.app, settings.app_type, settings.factory)
        check_kind(settings, kind)
    except (AppError, ImportError, ValueError) as exc:
        runtime.loaded(error=str(exc))
        sys.exit(1)
    except Exception as exc:
        runtime.loaded(error=f"checking {settings.app} failed: {type(exc).__name__}: {exc}")
        sys.exit(1)
    runtime.loaded(kind)
    return app, kind


def check_app(spec, app_type, credentials, factory=False):
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
                message = "ok " + resolve_app(spec, app_type, factory)[1]
            except AppError as exc:
                message = str(exc)
            except BaseException as exc:
                message = f"checking {spec} failed: {type(exc).__name__}: {exc}"
            os.write(write_fd, message.encode("utf-8", "replace")[:60000])
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    try:
        while True:
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except BaseException:       # Ctrl-C while the app imports: no checking child left
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    message = b"".join(chunks).decode()
    if not message:
        raise AppError(f"importing {spec} ended the checking process "
                       f"(exit status {os.waitstatus_to_exitcode(status)})")
    if not message.startswith("ok "):
        raise AppError(message)
    return message[3:]
