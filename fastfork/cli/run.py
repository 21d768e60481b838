"""``python -m fastfork run MODULE:CALLABLE``: serve an app on all workers, for production.

Everything that can be wrong with the command line, the config file or the
app itself (an option, a missing callable, an import error) is reported as
one line with exit code 2, and nothing is left running: the options become
one ``Settings`` (``options.build``) and the addresses are bound in the
primary before any fork; the app is imported once per worker, as uvicorn
does, and the first worker that has imported it says what it is or why it
cannot be served (``startup.Gate``): an error stops the workers and ends
the run with that line.  With ``--preload`` the primary imports it before
forking.
"""

import argparse
import faulthandler
import logging
import os
import sys

import fastfork

from .. import privileges, tls
from ..operations.status_socket import default_dir, default_path
from ..primary import Cluster
from ..primary.hooks import HookFailed, Hooks
from ..worker import runtime as worker_runtime
from . import aliases, envfile, gunicorn_config, logs, options, startup
from .apps import AppError, check_app, check_kind, load_in_worker, resolve_app

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130         # Ctrl-C before a worker loaded the app (128 + SIGINT)
DEFAULT_BIND = "127.0.0.1:8000"

EPILOG = """\
signals to the primary:
  SIGHUP            rolling reload: replace the workers one at a time, new before old
  SIGTTIN/SIGTTOU   one worker more / one fewer
  SIGTERM/SIGINT    graceful stop (a second one kills the workers at once)
  SIGQUIT           stop now

exit codes: 0 stopped cleanly, 1 forced stop, 2 bad option or app (nothing served),
3 crash loop (workers kept dying right after start), 130 stopped before a worker
had loaded the app.

Options may also be set in pyproject.toml as [tool.fastfork] (keys as the long
options, e.g. max-requests = 1000, bind = ["0.0.0.0:80"]) or in the TOML file
given with --config; command-line options win.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line naming the problem; the usage text would bury it.
        raise options.ConfigError(message)


def build_parser():
    parser = _Parser(
        prog="python -m fastfork run",
        description="Serve an asyncio app on every core: one primary owns the ports and "
                    "hands connections to N forked workers.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", nargs="?", default=argparse.SUPPRESS,
                        help="MODULE:CALLABLE or path/to/app.py:CALLABLE (or `app` in the config)")
    parser.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="read options from this TOML file instead of ./pyproject.toml, or "
                             "from this gunicorn config file (Python: settings and server "
                             "hooks; ./gunicorn.conf.py is read when there is one)")
    options.add_arguments(parser, aliases.ALIASES, aliases.negation)
    aliases.add_arguments(parser)
    return parser


def serve_worker(settings, binds, app, kind, hooks):
    """A worker's whole life: load the app unless preloaded, then serve it."""
    # SIGABRT from the primary's hang detection prints where the loop is stuck.
    faulthandler.enable()
    hooks.forked(fastfork.worker_id, fastfork.worker_index)
    try:
        if app is None:       # not preloaded: import now, so a reload runs the new code
            app, kind = load_in_worker(settings, worker_runtime.runtime())
        hooks.app_loaded()
        if kind == "main":
            app(list(binds))
            return
        try:
            # Each worker reads the files anew: a reload serves a renewed certificate.
            context = tls.from_settings(settings)
        except tls.TLSError as exc:
            print(f"fastfork worker {fastfork.worker_id}: {exc}", file=sys.stderr)
            sys.exit(1)
        if kind in ("asgi", "wsgi"):
            from .. import web
            web.serve(app, *binds, kind=kind, ssl=context, **web_options(settings))
        else:
            fastfork.serve(app, *binds, protocol=(kind == "protocol"), loop=settings.loop,
                           ssl=context)
    finally:
        hooks.exited()


def web_options(settings):
    """``fastfork.web.serve``'s options from the settings."""
    options = {"loop": settings.loop, "threads": settings.threads, "http": settings.http,
               "ws": settings.ws, "lifespan": settings.lifespan, "root_path": settings.root_path,
               "proxy_headers": settings.proxy_headers,
               "forwarded_allow_ips": settings.forwarded_allow_ips,
               "timeout_keep_alive": settings.timeout_keep_alive,
               "timeout_request_head": settings.timeout_request_head,
               "body_buffer": settings.wsgi_body_buffer,
               "sched_batch": settings.wsgi_sched_batch, "header_map": settings.header_map,
               "limit_concurrency": settings.limit_concurrency or None,
               "access_log": not settings.no_access_log,
               "graceful_timeout": settings.graceful_timeout,
               "backlog": settings.backlog, "log_level": settings.log_level,
               "headers": [list(header) for header in settings.headers],
               "server_header": settings.server_header, "date_header": settings.date_header,
               "h11_max_incomplete_event_size": settings.h11_max_incomplete_event_size,
               "ws_max_size": settings.ws_max_size, "ws_max_queue": settings.ws_max_queue,
               "ws_ping_interval": settings.ws_ping_interval,
               "ws_ping_timeout": settings.ws_ping_timeout,
               "ws_per_message_deflate": settings.ws_per_message_deflate,
               "use_colors": settings.use_colors}
    if settings.log_config:
        options["log_config"] = settings.log_config
    if (settings.access_logfile or settings.access_logformat) and not settings.no_access_log:
        options["access_log_format"] = settings.access_logformat
        options["access_log_file"] = settings.access_logfile
    return options


def default_name(spec):
    target = spec.rpartition(":")[0] or spec     # MODULE alone: gunicorn's MODULE:application
    if target.endswith(".py") or os.sep in target:
        return os.path.splitext(os.path.basename(target))[0]
    return target


def parse(argv):
    """The ``Settings`` from argv and the config file; raises ConfigError naming the problem."""
    return parse_all(argv)[0]


def parse_all(argv):
    """``(settings, notes, actions)``: the settings; lines for the log; the flags that
    only ask something (--check-config, --print-config, --version)."""
    aliases.refuse(argv)
    parser = build_parser()
    namespace, extra = parser.parse_known_args(argv)
    if extra:
        raise aliases.unknown(extra, parser._option_string_actions)
    cli = vars(namespace)
    actions = {name: cli.pop(name, False) for name in ("check_config", "print_config", "version")}
    notes = []
    aliases.translate(cli, notes)
    config_path = cli.pop("config", None)
    python_config = None
    if config_path is not None and not config_path.endswith(".toml"):
        python_config = config_path
    elif config_path is None and os.path.isfile(gunicorn_config.DEFAULT_FILE):
        python_config = gunicorn_config.DEFAULT_FILE      # as gunicorn reads it
        notes.append(f"reading {python_config} (gunicorn's config file)")
    tables = [gunicorn_config.read(python_config, notes)] if python_config else []
    if config_path is not None and config_path == python_config:
        settings = options.build(cli, tables=tables, toml=False)    # that file only
    else:
        settings = options.build(cli, config_path, tables=tables)
    if not settings.reload and (settings.reload_dir or settings.reload_include
                                or settings.reload_exclude):
        notes.append("--reload-dir, --reload-include and --reload-exclude do nothing without "
                     "--reload")
    if not settings.app and not actions["version"]:
        raise options.ConfigError("no app given: python -m fastfork run MODULE:CALLABLE")
    return settings, notes, actions


def prepare_environment(settings):
    """What must hold before the app is imported (gunicorn's and uvicorn's order):
    --chdir, then the module path (--app-dir, --pythonpath), then the environment
    (--env-file, --env); the checking child and every worker inherit it."""
    if settings.chdir:
        try:
            os.chdir(settings.chdir)
        except OSError as exc:
            raise options.ConfigError(f"argument --chdir: cannot enter {settings.chdir}: "
                                      f"{exc.strerror}") from None
        sys.path.insert(0, os.getcwd())
    for directory in reversed((settings.app_dir,) + settings.pythonpath if settings.app_dir
                              else settings.pythonpath):
        sys.path.insert(0, os.path.abspath(directory))
    try:
        envfile.apply(settings.env_file, settings.raw_env)
    except envfile.EnvFileError as exc:
        raise options.ConfigError(str(exc)) from None


def versions():
    from importlib.metadata import PackageNotFoundError, version
    try:
        uvicorn = f", uvicorn {version('uvicorn')}"
    except PackageNotFoundError:
        uvicorn = ""
    return f"fastfork {fastfork.__version__}{uvicorn}, Python {sys.version.split()[0]}"


def print_settings(settings):
    for name in settings.__dataclass_fields__:
        if name not in ("argv", "env", "pure", "batch_max"):
            value = getattr(settings, name)
            if name == "hooks":
                value = sorted(value)
            elif name == "ssl_keyfile_password" and value is not None:
                value = "(hidden)"
            print(f"{name:<28} = {value!r}")


def socket_name(settings, explicit_name, cluster):
    """The control socket's name: --name as given, else the module's name and the first
    address, so that two apps called main:app on two ports do not collide."""
    if explicit_name:
        return settings.name
    addresses = cluster.status()["primary"]["addresses"]
    return f"{settings.name}@{addresses[0].replace('/', '_') if addresses else '-'}"


def write_pidfile(path):
    try:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    except OSError as exc:
        raise options.ConfigError(f"cannot write the pid file {path}: {exc.strerror}") from None


def remove_pidfile(path):
    try:
        with open(path) as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(path)
    except OSError:
        pass


class Start:
    """What a start took so far, given back if it stops before the primary runs."""

    def __init__(self):
        self.cluster = None
        self.pidfile = None

    def close(self):
        if self.cluster is not None:
            self.cluster.close()       # no socket file or bound port left behind
        if self.pidfile is not None:
            remove_pidfile(self.pidfile)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    start = Start()
    try:
        return _main(argv, start)
    except BrokenPipeError:
        # `fastfork run --print-config | head`: the reader has what it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        # Ctrl-C before the workers started (while the app is checked, say):
        # nothing to drain, and a traceback would say nothing useful.
        start.close()
        return EXIT_INTERRUPTED
    finally:
        if start.pidfile is not None:
            remove_pidfile(start.pidfile)


def _main(argv, start):
    try:
        settings, notes, actions = parse_all(argv)
        if actions["version"]:
            print(versions())
            return 0
        if actions["print_config"]:
            print_settings(settings)
            sys.stdout.flush()
            return 0
        prepare_environment(settings)
        logs.check(settings)
        if settings.access_logformat:
            from ..web.access import check_format
            check_format(settings.access_logformat)
        credentials = privileges.resolve_credentials(settings.user, settings.group)
        app, kind = None, None       # the workers import it (see the module's docstring)
        if settings.preload:
            app, kind = resolve_app(settings.app, settings.app_type, settings.factory)
        elif actions["check_config"]:
            kind = check_app(settings.app, settings.app_type, credentials, settings.factory)
        if kind is not None:
            check_kind(settings, kind)
        if settings.ssl_certfile:
            tls.from_settings(settings)   # the files and the password, once, before any fork
        reloader = None
        if settings.reload:
            from .reloader import Reloader
            reloader = Reloader(settings, lambda: cluster.request_reload())
        if actions["check_config"]:
            print(f"fastfork run: {settings.app} ({kind}): the configuration is good")
            return 0
        explicit_name = settings.name is not None
        if not explicit_name:
            settings = settings.replace(name=default_name(settings.app))
        binds = []
        hooks = Hooks(settings.hooks)
        cluster = start.cluster = Cluster(serve_worker, args=(settings, binds, app, kind, hooks),
                                          settings=settings)
        hooks.attach(cluster)                 # on_starting
        # Bind in the primary now: a port in use or a privileged port fails
        # here, once, instead of in every worker; workers share these sockets.
        inherited = cluster.inherited_addresses()
        wanted = []
        for address in list(settings.bind) or inherited or [DEFAULT_BIND]:
            bound = cluster.bind(address, settings.backlog)
            # Workers ask for an address as given (port 0 too); fd://N as the socket says.
            wanted.append(bound if address.startswith("fd://") else address)
        binds.extend(wanted)
        control = cluster.open_control_socket(
            settings.control_socket
            or default_path(socket_name(settings, explicit_name, cluster)))
        cluster.open_endpoints()
        if settings.pidfile:
            write_pidfile(settings.pidfile)
            start.pidfile = settings.pidfile
        # Logging starts once nothing else can fail: bad input gets its one line only
        # (until a worker has loaded the app, the primary's log is held).
        logs.setup(settings, hold=kind is None)
    # ImportError: an optional part (the web or metrics extra) is missing; the message
    # names the extra to install.
    except (options.ConfigError, AppError, ImportError, ValueError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            raise                     # stdout closed early: not an error of the input
        # OSError's str() would prefix "[Errno N]" to a message that already says it all.
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"fastfork run: error: {text}", file=sys.stderr)
        start.close()
        return EXIT_USAGE
    except HookFailed as exc:
        print(f"fastfork run: error: {exc}", file=sys.stderr)
        start.close()
        return EXIT_USAGE
    log = logging.getLogger("fastfork")
    for note in notes:
        log.info("%s", note)
    for address in set(wanted) & set(inherited):
        log.info("using the socket systemd passed for %s", address)

    def serving(kind):
        logs.release()
        log.info(
            "primary %d serving %s (%s) on %s with %d workers, policy %s (%s dispatcher); "
            "status: python -m fastfork status%s",
            cluster.pid, settings.app, kind, ", ".join(cluster.status()["primary"]["addresses"]),
            cluster.size, cluster.policy, cluster.implementation,
            "" if os.path.dirname(control) == os.path.abspath(default_dir())
            else f" --socket {control}")
        if gate is not None and reloader is not None:
            # Only now: a thread that imports (watchfiles does, as it starts) while
            # the workers are forked leaves them a module lock held forever.
            reloader.start()

    gate = None
    if kind is None:
        gate = startup.Gate(cluster, settings.app, serving)
    else:
        serving(kind)
    try:
        hooks.ready()                         # when_ready: bound, before the first fork
    except HookFailed as exc:
        logs.release()
        log.error("%s; stopping", exc)
        start.close()
        return EXIT_USAGE
    if reloader is not None and gate is None:
        reloader.start()                      # a thread of the primary, never a worker's
    try:
        code = cluster.run()
    finally:
        if reloader is not None:
            reloader.stop()
        logs.release(write=gate is None or gate.error is None)
    if gate is not None and gate.error is not None:
        # As bad input before any fork: the one line, every worker gone already.
        print(f"fastfork run: error: {gate.error}", file=sys.stderr)
        return EXIT_USAGE
    if gate is not None and gate.kind is None:
        return EXIT_INTERRUPTED               # stopped while the workers were importing
    hooks.exiting()                           # on_exit
    return code


if __name__ == "__main__":
    sys.exit(main())
