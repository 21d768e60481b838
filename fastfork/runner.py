"""``python -m fastfork run MODULE:CALLABLE``: serve an app on all workers, for production.

Everything that can be wrong with the command line, the config file or the
app itself (an option, a missing callable, an import error) is found before
any worker is forked, and reported as one line with exit code 2.  Without
``--preload`` the app is imported once in a short-lived checking child (so
that the primary stays small and never holds the app's code) and then in
each worker, which is what lets a reload pick up new code.
"""

import argparse
import asyncio
import faulthandler
import importlib
import importlib.util
import inspect
import logging
import os
import sys

import fastfork

from . import config, primary, privileges
from .control_socket import default_dir, default_path

EXIT_USAGE = 2
DEFAULT_BIND = "127.0.0.1:8000"

EPILOG = """\
signals to the primary:
  SIGHUP            rolling reload: replace the workers one at a time, new before old
  SIGTTIN/SIGTTOU   one worker more / one fewer
  SIGTERM/SIGINT    graceful stop (a second one kills the workers at once)
  SIGQUIT           stop now

exit codes: 0 stopped cleanly, 1 forced stop, 2 bad option or app (nothing started),
3 crash loop (workers kept dying right after start).

Options may also be set in pyproject.toml as [tool.fastfork] (keys as the long
options, e.g. max-requests = 1000, bind = ["0.0.0.0:80"]) or in the TOML file
given with --config; command-line options win.
"""


class AppError(Exception):
    """The app cannot be loaded or is not something fastfork can serve."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line naming the problem; the usage text would bury it.
        raise config.ConfigError(message)


def build_parser():
    parser = _Parser(
        prog="python -m fastfork run",
        description="Serve an asyncio app on every core: one primary owns the ports and "
                    "hands connections to N forked workers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", nargs="?", default=argparse.SUPPRESS,
                        help="MODULE:CALLABLE or path/to/app.py:CALLABLE (or `app` in the config)")
    parser.add_argument("--config", metavar="FILE.toml", default=argparse.SUPPRESS,
                        help="read options from this TOML file instead of ./pyproject.toml")
    config.add_arguments(parser)
    return parser


# -- the app ------------------------------------------------------------------------
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
    """What the callable is (stream, protocol, main), checked against ``--app-type``."""
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
            raise AppError(f"{spec} looks like a WSGI app; fastfork does not serve WSGI apps "
                           f"directly yet (see 'In production' in the README)")
        if len(names) == 3 and names[0] == "scope":
            raise AppError(f"{spec} looks like an ASGI app; fastfork does not serve ASGI apps "
                           f"directly yet (see 'In production' in the README)")
        if params is not None and len(params) == 2:
            detected = "stream"
    if app_type == "auto":
        if detected is None:
            raise AppError(f"cannot tell what kind of callable {spec} is; "
                           f"give --app-type stream, protocol or main")
        return detected
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


# -- the worker ------------------------------------------------------------------------
def serve_worker(settings, binds, app, kind):
    """A worker's whole life: load the app unless preloaded, then serve it."""
    # SIGABRT from the primary's hang detection prints where the loop is stuck.
    faulthandler.enable()
    if app is None:       # not preloaded: import now, so a reload runs the new code
        try:
            app, kind = resolve_app(settings["app"], settings["app_type"])
        except AppError as exc:
            print(f"fastfork worker {fastfork.worker_id}: {exc}", file=sys.stderr)
            sys.exit(1)
    if kind == "main":
        app(list(binds))
    else:
        fastfork.serve(app, *binds, protocol=(kind == "protocol"))


# -- the primary ------------------------------------------------------------------------
def default_name(spec):
    target = spec.rpartition(":")[0]
    if target.endswith(".py") or os.sep in target:
        return os.path.splitext(os.path.basename(target))[0]
    return target


def parse(argv):
    """Settings from argv and the config file; raises ConfigError naming the problem."""
    cli = vars(build_parser().parse_args(argv))
    config_path = cli.pop("config", None)
    settings = config.resolve(cli, config_path)
    if not settings.get("app"):
        raise config.ConfigError("no app given: python -m fastfork run MODULE:CALLABLE")
    return settings


def setup_logging(level):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s fastfork[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger("fastfork")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        settings = parse(argv)
        credentials = privileges.resolve_credentials(settings["user"], settings["group"])
        if settings["preload"]:
            app, kind = resolve_app(settings["app"], settings["app_type"])
        else:
            app, kind = None, check_app(settings["app"], settings["app_type"], credentials)
        name = settings["name"] or default_name(settings["app"])
        binds = []
        cluster = primary.Cluster(
            serve_worker, settings["workers"], args=(settings, binds, app, kind),
            policy=settings["policy"], window=settings["window"],
            graceful_timeout=settings["graceful_timeout"], min_uptime=settings["min_uptime"],
            max_restarts=settings["max_restarts"], backoff_base=settings["backoff_base"],
            backoff_max=settings["backoff_max"], timeout=settings["timeout"],
            max_requests=settings["max_requests"],
            max_requests_jitter=settings["max_requests_jitter"],
            max_memory=settings["max_memory"], wait_ready=settings["wait_ready"],
            ready_timeout=settings["ready_timeout"], user=settings["user"],
            group=settings["group"], name=name)
        # Bind in the primary now: a port in use or a privileged port fails
        # here, once, instead of in every worker; workers share these sockets.
        inherited = cluster.inherited_addresses()
        wanted = settings["bind"] or inherited or [DEFAULT_BIND]
        for address in wanted:
            cluster.bind(address)
        binds.extend(wanted)
        control = cluster.open_control_socket(settings["control_socket"] or default_path(name))
    except (config.ConfigError, AppError, ValueError, OSError) as exc:
        # OSError's str() would prefix "[Errno N]" to a message that already says it all.
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"fastfork run: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    # Logging starts once nothing can fail any more: bad input gets its one line only.
    setup_logging(settings["log_level"])
    log = logging.getLogger("fastfork")
    for address in set(wanted) & set(inherited):
        log.info("using the socket systemd passed for %s", address)
    log.info(
        "primary %d serving %s (%s) on %s with %d workers, policy %s (%s dispatcher); "
        "status: python -m fastfork status%s",
        cluster.pid, settings["app"], kind, ", ".join(cluster.status()["primary"]["addresses"]),
        cluster.size, cluster.policy, cluster.implementation,
        "" if os.path.dirname(control) == os.path.abspath(default_dir()) else f" --socket {control}")
    return cluster.run()


if __name__ == "__main__":
    sys.exit(main())
