"""uvicorn's and gunicorn's spellings of fastfork's settings, and the flags that mean nothing here.

So that ``uvicorn main:app --port 9000 --workers 4`` and ``gunicorn -w 4 -b
:9000 mysite.wsgi`` work with only the program's name changed.  Nothing here
holds a default or a check: every spelling sets a ``Settings`` field, whose
declaration (``fastfork.settings``) says the rest.

* ``ALIASES``: more flags for a field (``-w`` is ``--workers``).  Every switch
  also has its opposite, ``--no-X`` (or ``--X`` for a field named ``no_X``):
  ``--no-server-header``, ``--access-log``, ``--no-proxy-headers``.
* ``add_arguments``/``translate``: flags that set a field in other words
  (``--host``/``--port``/``--uds``/``--fd`` are ``--bind``; ``--interface`` is
  ``--app-type``; ``-k``/``--worker-class``; ``--reuse-port``).
* ``REFUSED``: a flag that has no meaning here, and fastfork's way instead;
  ``refuse`` raises it as one line before anything starts.  ``unknown`` says
  "did you mean" for a flag nobody has.
"""

import argparse
import difflib

from .options import ConfigError

ALIASES = {
    "bind": ("-b",),
    "workers": ("-w",),
    "timeout": ("-t", "--timeout-worker-healthcheck"),
    "graceful_timeout": ("--timeout-graceful-shutdown", "--workers-kill-timeout"),
    "root_path": ("--url-path-prefix",),       # granian's
    "chdir": ("--working-dir",),               # granian's
    "threads": ("--blocking-threads",),        # granian's, for a WSGI app
    "max_requests": ("--limit-max-requests",),
    "max_requests_jitter": ("--limit-max-requests-jitter",),
    "timeout_keep_alive": ("--keep-alive",),
    "headers": ("--header",),
    "name": ("-n",),
    "user": ("-u",),
    "group": ("-g",),
    "pidfile": ("-p", "--pid", "--pid-file"),
    "error_logfile": ("--log-file",),
    "raw_env": ("-e", "--env"),
    # gunicorn's TLS options (uvicorn's are the fields' own names)
    "ssl_certfile": ("--certfile", "--ssl-certificate"),     # --ssl-certificate: granian's
    "ssl_keyfile": ("--keyfile",),
    "ssl_ca_certs": ("--ca-certs",),
    "ssl_cert_reqs": ("--cert-reqs",),
    "ssl_ciphers": ("--ciphers",),
}

_TLS_DONE = ("not needed: asyncio's TLS transport does the handshake as each connection is "
             "attached, and ends a connection closed without TLS's close alert as a close")
_SYSLOG = "log to stderr (--error-logfile FILE) and let systemd's journal or syslog collect it"
_LIMITS = ("the request head is limited by --h11-max-incomplete-event-size (with --http h11) "
           "and --timeout-request-head")
REFUSED = {
    # uvicorn
    "--http2": "HTTP/2 is not supported: serve HTTP/2 from the proxy in front",
    "--reset-contextvars": "not supported: each request runs in a copy of the worker's context",
    # gunicorn
    "--reload-engine": "not needed: --reload watches the files with watchfiles (inotify)",
    "--reload-extra-file": "spelled --reload-dir DIR and --reload-include PATTERN here",
    "--ssl-context": "not supported: the context is built from --ssl-certfile, --ssl-keyfile "
                     "and the other --ssl-* options",
    "--do-handshake-on-connect": _TLS_DONE, "--suppress-ragged-eofs": _TLS_DONE,
    "-D": "not supported: run fastfork under systemd (see README 'Under systemd')",
    "--daemon": "not supported: run fastfork under systemd (see README 'Under systemd')",
    "--statsd-host": "not supported: serve Prometheus metrics with --metrics ADDRESS",
    "--statsd-prefix": "not supported: serve Prometheus metrics with --metrics ADDRESS",
    "--dogstatsd-tags": "not supported: serve Prometheus metrics with --metrics ADDRESS",
    "--worker-tmp-dir": "not needed: workers send heartbeats to the primary (see --timeout)",
    "--capture-output": "not needed: --error-logfile takes the workers' stderr too",
    "-R": "not needed: forked workers inherit stdout and stderr",
    "--enable-stdio-inheritance": "not needed: forked workers inherit stdout and stderr",
    "--spew": "not supported: use python -X importtime or a profiler",
    "--paste": "not supported: give the app as MODULE:CALLABLE",
    "--paster": "not supported: give the app as MODULE:CALLABLE",
    "--initgroups": "not needed: --user sets the user's groups",
    "-m": "not supported: set the umask in the service (systemd's UMask=)",
    "--umask": "not supported: set the umask in the service (systemd's UMask=)",
    "--logger-class": "not supported: configure logging with --log-config FILE",
    "--log-config-dict": "not supported: give the dict as a JSON file to --log-config",
    "--log-config-json": "not supported here: give the JSON file to --log-config",
    "--log-syslog": _SYSLOG, "--log-syslog-to": _SYSLOG, "--log-syslog-prefix": _SYSLOG,
    "--log-syslog-facility": _SYSLOG,
    "--disable-redirect-access-to-syslog": _SYSLOG,
    "--limit-request-line": _LIMITS, "--limit-request-fields": _LIMITS,
    "--limit-request-field_size": _LIMITS, "--limit-request-field-size": _LIMITS,
    "--sendfile": "not supported: responses are written by uvicorn's protocols",
    "--no-sendfile": "not needed: responses are written by uvicorn's protocols",
    "--strip-header-spaces": "not supported: uvicorn's parsers refuse such headers",
    "--preload-app": "spelled --preload here",
    # granian
    "--workers-lifetime": "not supported: recycle workers with --max-requests or --max-memory",
}

# -k/--worker-class: what a gunicorn worker class becomes here.
UVICORN_WORKERS = {"uvicorn.workers.UvicornWorker": None, "uvicorn_worker.UvicornWorker": None,
                   "uvicorn.workers.UvicornH11Worker": "h11",
                   "uvicorn_worker.UvicornH11Worker": "h11"}
THREAD_WORKERS = ("sync", "gthread", "gunicorn.workers.sync.SyncWorker",
                  "gunicorn.workers.gthread.ThreadWorker")
INTERFACES = {"auto": "auto", "asgi3": "asgi", "asgi2": "asgi", "asgi": "asgi", "wsgi": "wsgi"}
# uvicorn: an --fd wins over --uds, which wins over --host/--port.
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


def negation(name):
    """The opposite of switch ``--name``: ``--no-name``, or ``--X`` for ``no-X``."""
    return name[3:] if name.startswith("no-") else "no-" + name


def add_arguments(parser):
    """The flags that set a field in other words (see ``translate``)."""
    group = parser.add_argument_group("as uvicorn and gunicorn spell them")
    group.add_argument("--host", default=argparse.SUPPRESS,
                       help=f"with --port: --bind HOST:PORT (default {DEFAULT_HOST})")
    group.add_argument("--port", default=argparse.SUPPRESS,
                       help=f"with --host: --bind HOST:PORT (default {DEFAULT_PORT})")
    group.add_argument("--uds", metavar="PATH", default=argparse.SUPPRESS,
                       help="--bind unix:PATH")
    group.add_argument("--fd", metavar="N", default=argparse.SUPPRESS,
                       help="serve the listening socket open at file descriptor N "
                            "(--bind fd://N)")
    group.add_argument("--interface", default=argparse.SUPPRESS,
                       metavar="|".join(INTERFACES), help="--app-type asgi, wsgi or auto")
    group.add_argument("-k", "--worker-class", metavar="CLASS", default=argparse.SUPPRESS,
                       help="gunicorn's: uvicorn.workers.UvicornWorker (UvicornH11Worker: "
                            "--http h11), or sync/gthread for a WSGI app (served on "
                            "--threads threads)")
    group.add_argument("--reuse-port", action="store_true", default=argparse.SUPPRESS,
                       help="--policy reuseport")
    group.add_argument("--check-config", action="store_true", default=argparse.SUPPRESS,
                       help="check the options and the app, then exit (0: all good)")
    group.add_argument("--print-config", action="store_true", default=argparse.SUPPRESS,
                       help="print every setting as it would run, then exit")
    group.add_argument("--version", action="store_true", default=argparse.SUPPRESS,
                       help="print the versions of fastfork and uvicorn, then exit")


def translate(cli, notes):
    """Replace the uvicorn/gunicorn spellings in ``cli`` (parsed options, as written)
    by the fields they set; raises ConfigError.  ``notes`` gets lines for the log."""
    host, port = cli.pop("host", None), cli.pop("port", None)
    uds, fd = cli.pop("uds", None), cli.pop("fd", None)
    address = None
    if fd is not None:
        if not str(fd).isdigit():
            raise ConfigError(f"argument --fd: {fd!r} is not a file descriptor number")
        address = f"fd://{fd}"
    elif uds is not None:
        address = f"unix:{uds}"
    elif host is not None or port is not None:
        host = DEFAULT_HOST if host is None else host
        if port is None:
            port = DEFAULT_PORT
        elif not str(port).isdigit():
            raise ConfigError(f"argument --port: {port!r} is not a port number")
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if address is not None:
        cli["bind"] = list(cli.get("bind") or []) + [address]
    interface = cli.pop("interface", None)
    if interface is not None:
        if interface not in INTERFACES:
            raise ConfigError(f"argument --interface: {interface!r} is not one of "
                              f"{', '.join(INTERFACES)}")
        cli.setdefault("app_type", INTERFACES[interface])
    if cli.pop("reuse_port", False):
        cli["policy"] = "reuseport"
    worker_class = cli.pop("worker_class", None)
    if worker_class is not None:
        cli.update(worker_class_settings(worker_class, "argument --worker-class", notes))


def worker_class_settings(name, where, notes):
    """The settings a gunicorn worker class means here; ConfigError for the others."""
    if name in UVICORN_WORKERS:
        return {"http": UVICORN_WORKERS[name]} if UVICORN_WORKERS[name] else {}
    if name in THREAD_WORKERS:
        notes.append(f"worker class {name}: a WSGI app is served on each worker's event loop, "
                     f"its calls run on --threads threads")
        return {}
    raise ConfigError(f"{where}: {name!r} is not supported: fastfork workers serve from an "
                      f"asyncio event loop (uvicorn's protocols); give an ASGI app, or a WSGI "
                      f"app with --threads N")


def refuse(argv):
    """Raise ConfigError for the first flag in ``argv`` that means nothing here."""
    for token in argv:
        if token == "--":
            return
        name = token.split("=", 1)[0]
        if name in REFUSED:
            raise ConfigError(f"{name} is {REFUSED[name]}"
                              if REFUSED[name].startswith(("not ", "spelled "))
                              else f"{name} is not supported: {REFUSED[name]}")


def unknown(tokens, known):
    """ConfigError for arguments nobody took, with the closest known flag."""
    flag = next((t for t in tokens if t.startswith("-")), None)
    if flag is None:
        return ConfigError(f"unrecognized arguments: {' '.join(tokens)}")
    name = flag.split("=", 1)[0]
    close = difflib.get_close_matches(name, [k for k in known if k.startswith("--")], n=1,
                                      cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else " (see fastfork run --help)"
    return ConfigError(f"unrecognized arguments: {name}{hint}")
