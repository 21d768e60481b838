"""``python -m fastfork run MODULE:CALLABLE``: serve an app on all workers, for production.

Everything that can be wrong with the command line, the config file or the
app itself (an option, a missing callable, an import error) is found before
any worker is forked, and reported as one line with exit code 2: the options
become one ``Settings`` (``options.build``), the app is checked
(``apps.check_app``), the addresses are bound in the primary, and only then
does the primary fork.
"""

import argparse
import faulthandler
import logging
import os
import sys

import fastfork

from .. import privileges
from ..operations.status_socket import default_dir, default_path
from ..primary import Cluster
from .. import loops
from . import options
from .apps import AppError, check_app, resolve_app

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
    parser.add_argument("--config", metavar="FILE.toml", default=argparse.SUPPRESS,
                        help="read options from this TOML file instead of ./pyproject.toml")
    options.add_arguments(parser)
    return parser


def serve_worker(settings, binds, app, kind):
    """A worker's whole life: load the app unless preloaded, then serve it."""
    # SIGABRT from the primary's hang detection prints where the loop is stuck.
    faulthandler.enable()
    if app is None:       # not preloaded: import now, so a reload runs the new code
        try:
            app, kind = resolve_app(settings.app, settings.app_type)
        except AppError as exc:
            print(f"fastfork worker {fastfork.worker_id}: {exc}", file=sys.stderr)
            sys.exit(1)
    if kind == "main":
        app(list(binds))
    elif kind in ("asgi", "wsgi"):
        from .. import web
        web.serve(app, *binds, kind=kind, **web_options(settings))
    else:
        fastfork.serve(app, *binds, protocol=(kind == "protocol"), loop=settings.loop)


def web_options(settings):
    """``fastfork.web.serve``'s options from the settings."""
    return {"loop": settings.loop, "threads": settings.threads, "http": settings.http,
            "ws": settings.ws, "lifespan": settings.lifespan, "root_path": settings.root_path,
            "proxy_headers": settings.proxy_headers,
            "forwarded_allow_ips": settings.forwarded_allow_ips,
            "timeout_keep_alive": settings.timeout_keep_alive,
            "timeout_request_head": settings.timeout_request_head,
            "body_buffer": settings.wsgi_body_buffer,
            "limit_concurrency": settings.limit_concurrency or None,
            "access_log": not settings.no_access_log,
            "graceful_timeout": settings.graceful_timeout}


def default_name(spec):
    target = spec.rpartition(":")[0]
    if target.endswith(".py") or os.sep in target:
        return os.path.splitext(os.path.basename(target))[0]
    return target


def parse(argv):
    """The ``Settings`` from argv and the config file; raises ConfigError naming the problem."""
    cli = vars(build_parser().parse_args(argv))
    config_path = cli.pop("config", None)
    settings = options.build(cli, config_path)
    if not settings.app:
        raise options.ConfigError("no app given: python -m fastfork run MODULE:CALLABLE")
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
    cluster = None
    try:
        settings = parse(argv)
        credentials = privileges.resolve_credentials(settings.user, settings.group)
        if settings.preload:
            app, kind = resolve_app(settings.app, settings.app_type)
        else:
            app, kind = None, check_app(settings.app, settings.app_type, credentials)
        # What the workers import must be there before any worker is forked.
        if kind in ("asgi", "wsgi"):
            from ..web import deps
            deps.check(kind, settings.http, settings.ws, settings.loop)
        elif kind != "main":          # main runs a loop of its own choosing
            loops.check(settings.loop)
        if settings.name is None:
            settings = settings.replace(name=default_name(settings.app))
        binds = []
        cluster = Cluster(serve_worker, args=(settings, binds, app, kind), settings=settings)
        # Bind in the primary now: a port in use or a privileged port fails
        # here, once, instead of in every worker; workers share these sockets.
        inherited = cluster.inherited_addresses()
        wanted = list(settings.bind) or inherited or [DEFAULT_BIND]
        for address in wanted:
            cluster.bind(address)
        binds.extend(wanted)
        control = cluster.open_control_socket(settings.control_socket
                                              or default_path(settings.name))
        cluster.open_endpoints()
    # ImportError: an optional part (the web or metrics extra) is missing; the message
    # names the extra to install.
    except (options.ConfigError, AppError, ImportError, ValueError, OSError) as exc:
        # OSError's str() would prefix "[Errno N]" to a message that already says it all.
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"fastfork run: error: {text}", file=sys.stderr)
        if cluster is not None:
            cluster.close()       # no socket file or bound port left behind
        return EXIT_USAGE
    # Logging starts once nothing can fail any more: bad input gets its one line only.
    setup_logging(settings.log_level)
    log = logging.getLogger("fastfork")
    for address in set(wanted) & set(inherited):
        log.info("using the socket systemd passed for %s", address)
    log.info(
        "primary %d serving %s (%s) on %s with %d workers, policy %s (%s dispatcher); "
        "status: python -m fastfork status%s",
        cluster.pid, settings.app, kind, ", ".join(cluster.status()["primary"]["addresses"]),
        cluster.size, cluster.policy, cluster.implementation,
        "" if os.path.dirname(control) == os.path.abspath(default_dir())
        else f" --socket {control}")
    return cluster.run()


if __name__ == "__main__":
    sys.exit(main())
