"""Every setting of a fastfork primary: its default, its meaning and its check, once.

``Settings`` is immutable and validated when it is built: from keyword
arguments (``Cluster(policy="none", window=4)`` builds one), or by
``fastfork run`` from its command line, the config file and these defaults
(``fastfork.cli.options``, which reads the option table off these fields).
The primary receives it whole and never re-checks a value.

Each field's metadata says how ``fastfork run`` shows it: its help text, its
group in ``--help``, whether it is a switch or may be repeated, and
``cli=False`` for the ones only the Python API has.  Converters accept what a
person writes (``"512M"``, ``"30"``, ``"max"``) as well as Python values, and
raise ValueError saying what is wrong (they are in ``fastfork.converters``);
``Settings`` reports it as ``SettingError`` naming the field.  The spellings
uvicorn and gunicorn give the same settings are in ``fastfork.cli.aliases``.

Just over 400 lines on purpose: it is the one table of every option (one
field each, with its help), and the generated reference, ``--help`` and the
config file all read it; split across files, a reader could no longer see
every setting in one place, which is this file's whole job.
"""

import dataclasses
from typing import Any, Mapping, Optional, Tuple, Union

from . import converters as c
from .converters import SettingError, parse_size
from .handoff.wire import (DEFAULT_BATCH_MAX, DEFAULT_STALL_MS, DEFAULT_WINDOW, check_batch_max,
                           check_window)
from .loops import LOOPS

POLICIES = ("rr", "least", "none", "reuseport")
# The policies under which the primary accepts and its dispatcher hands out
# connections (the others let the workers accept by themselves).
DISPATCHED = ("rr", "least")
PRIMARY_SCHEDS = ("auto", "batch", "other")
APP_TYPES = ("auto", "asgi", "wsgi", "stream", "protocol", "main")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "json")
# gunicorn's server hooks (``-c gunicorn.conf.py``), called where gunicorn calls
# them (``fastfork.primary.hooks``).
HOOKS = ("on_starting", "when_ready", "pre_fork", "post_fork", "post_worker_init",
         "worker_int", "worker_abort", "worker_exit", "child_exit", "on_reload", "on_exit",
         "nworkers_changed")


def _setting(default, convert, help="", group="serving", metavar=None, *, cli=True,
             flag=False, repeat=False, cli_default=dataclasses.MISSING):
    metadata = {"convert": convert, "help": help, "group": group, "metavar": metavar,
                "cli": cli, "flag": flag, "repeat": repeat,
                "cli_default": default if cli_default is dataclasses.MISSING else cli_default}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: convert(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a primary runs; see each field's help (``python -m fastfork run --help``)."""

    # -- serving ---------------------------------------------------------------------
    app: Optional[str] = _setting(
        None, c.app, "MODULE:CALLABLE or path/to/app.py:CALLABLE (fastfork run only)",
        cli=False)
    bind: Tuple[str, ...] = _setting(
        (), c.addresses, "address to serve: HOST:PORT, [V6]:PORT or unix:PATH; repeat for "
        "several (default 127.0.0.1:8000, or the sockets systemd passed)", metavar="ADDRESS",
        repeat=True)
    workers: Union[int, str] = _setting(
        "max", c.workers, "number of workers, or 'max' for one per usable core (CPU affinity "
        "and cgroup quota) (default max)", metavar="N|max")
    policy: str = _setting(
        "rr", c.choice(POLICIES), "rr: the primary accepts and hands each connection to the "
        "next worker with room; least: to the worker with the fewest open connections "
        "(asyncio workers only); none: workers accept on the shared socket; reuseport: one "
        "SO_REUSEPORT socket per worker (default rr)", metavar="|".join(POLICIES))
    app_type: str = _setting(
        "auto", c.choice(APP_TYPES), "what CALLABLE is: asgi: an ASGI app (FastAPI, Starlette, "
        "async def app(scope, receive, send)); wsgi: a WSGI app (Flask, Django, "
        "app(environ, start_response)); both need pip install 'fastfork[web]'; stream: an "
        "asyncio client callback (reader, writer); protocol: an asyncio protocol factory; "
        "main: called as CALLABLE(addresses) in each worker and serves by itself; auto: tell "
        "from the callable (default auto)", metavar="|".join(APP_TYPES))
    preload: bool = _setting(
        False, c.flag, "import the app once in the primary before forking (shared memory, "
        "faster starts; a reload then does not pick up new code)", flag=True)
    factory: bool = _setting(
        False, c.flag, "CALLABLE is a factory: call it with no arguments to get the app",
        flag=True)
    # Off for the library (its protocols may have the server speak first);
    # on for `fastfork run`, whose apps speak HTTP.
    defer_accept: bool = _setting(
        False, c.flag, "accept a TCP connection only once its first bytes arrive "
        "(TCP_DEFER_ACCEPT): a connection waits in the kernel, not in a worker, until its "
        "request comes, so a worker whose loop blocks holds only requests it has begun; one "
        "that sends nothing is accepted after about a second.  For protocols in which the "
        "client speaks first, as HTTP does (default on)", flag=True, cli_default=True)
    backlog: int = _setting(
        2048, c.positive, "most connections waiting to be accepted, per address (default "
        "2048)", metavar="N")
    window: int = _setting(
        DEFAULT_WINDOW, check_window, f"connections a worker may hold unacknowledged "
        f"(rr and least policies; default {DEFAULT_WINDOW})", metavar="N")
    worker_connections: int = _setting(
        0, c.count, "least policy: most connections a worker may have open; when every "
        "worker has this many, new ones wait in the kernel's backlog (0: no cap)",
        metavar="N")
    batch_max: int = _setting(
        DEFAULT_BATCH_MAX, check_batch_max, "most connections passed to a worker in one "
        f"sendmsg (default {DEFAULT_BATCH_MAX})", cli=False)
    stall_ms: int = _setting(
        DEFAULT_STALL_MS, c.count, "rr and least: a worker whose event loop is blocked this "
        "many ms (a synchronous call in an async handler) is sent nothing until it runs "
        "again, and what it was sent and has not taken goes to another worker; while on, a "
        "worker takes new connections one batch per pass of its loop; 0 disables "
        f"(default {DEFAULT_STALL_MS})", metavar="MS")
    primary_sched: str = _setting(
        "auto", c.choice(PRIMARY_SCHEDS), "rr and least: the primary's scheduling policy. "
        "batch: SCHED_BATCH, so that waking up to accept never preempts a worker in the "
        "middle of a request (it waits for other processes too: beside CPU-bound ones, a "
        "time slice of a few ms); other: SCHED_OTHER, as any process; auto: batch while "
        "the workers are behind (connections wait unread in their channels, or their "
        "cores are busy), other when not.  Workers keep the policy the primary started "
        "with, and one set with chrt or systemd is kept (default auto)",
        metavar="auto|batch|other")
    stall_log_ms: int = _setting(
        100, c.count, "a worker logs, at most once in 10 s, where its event loop was (file "
        "and line) when it was blocked this many ms; 0 disables (default 100)",
        "operations", "MS")

    # -- operations ------------------------------------------------------------------
    graceful_timeout: float = _setting(
        30.0, c.seconds, "seconds a stopping worker may take to finish its open connections "
        "before SIGKILL (default 30)", "operations", "SECONDS")
    # Off for the library (a blocking worker sends no heartbeat to miss); on
    # for `fastfork run`, whose workers all serve from an event loop.
    timeout: float = _setting(
        0.0, c.seconds_or_off, "a worker whose event loop sends no heartbeat for this long is "
        "killed (SIGABRT, then SIGKILL) and replaced; 0 disables (default 30)",
        "operations", "SECONDS", cli_default=30.0)
    wait_ready: bool = _setting(
        False, c.flag, "during a reload, a new worker is ready when it calls "
        "fastfork.ready(), not when it listens", "operations", flag=True)
    ready_timeout: float = _setting(
        30.0, c.seconds, "a reload gives up on a new worker not ready within this many "
        "seconds, keeping the old one (default 30)", "operations", "SECONDS")
    max_requests: int = _setting(
        0, c.count, "replace a worker after it answered this many requests (HTTP apps; "
        "other apps: after it got this many connections) (0: never)", "operations", "N")
    max_requests_jitter: int = _setting(
        0, c.count, "add 0..N at random to each worker's --max-requests so they do not all "
        "recycle together", "operations", "N")
    max_memory: int = _setting(
        0, parse_size, "replace a worker whose RSS grows over this, e.g. 512M (0: no limit)",
        "operations", "SIZE")
    shutdown_delay: float = _setting(
        0.0, c.seconds, "on SIGTERM, keep serving this many seconds (readiness already "
        "answers 503) before draining, so that a load balancer stops sending first; like "
        "a Kubernetes preStop sleep (default 0)", "operations", "SECONDS")

    loop: str = _setting(
        "auto", c.choice(LOOPS), "event loop of the workers (every app type but main, which "
        "runs its own): uvloop (required: pip install 'fastfork[uvloop]'), asyncio, or auto "
        "(uvloop when installed) (default auto)", "serving", "|".join(LOOPS))

    # -- development -------------------------------------------------------------------
    reload: bool = _setting(
        False, c.flag, "watch the app's files and reload every worker, one at a time, new "
        "before old, when one changes; code that fails to import keeps the old workers "
        "(needs pip install 'fastfork[reload]')", "development", flag=True)
    reload_dir: Tuple[str, ...] = _setting(
        (), c.paths, "with --reload: watch this directory; repeat for several (default: the "
        "current directory, and the app file's if it is elsewhere)", "development", "DIR",
        repeat=True)
    reload_include: Tuple[str, ...] = _setting(
        (), c.patterns, "with --reload: also watch files matching this glob pattern; repeat "
        "for several (default *.py)", "development", "PATTERN", repeat=True)
    reload_exclude: Tuple[str, ...] = _setting(
        (), c.patterns, "with --reload: ignore files matching this glob pattern, or this "
        "directory; repeat for several (default .*, .py[cod], .sw.*, ~*)", "development",
        "PATTERN|DIR", repeat=True)
    reload_delay: float = _setting(
        0.25, c.seconds, "with --reload: reload once the files have been quiet this long, so "
        "that one save of several files is one reload (default 0.25)", "development",
        "SECONDS")

    # -- loading the app ---------------------------------------------------------------
    chdir: Optional[str] = _setting(
        None, c.path, "change to this directory before loading the app (it goes first on "
        "the module path too)", "loading the app", "DIR")
    app_dir: Optional[str] = _setting(
        None, c.path, "look for the app's module in this directory (default: the current "
        "one)", "loading the app", "DIR")
    pythonpath: Tuple[str, ...] = _setting(
        (), c.paths, "more directories on the module path, comma-separated",
        "loading the app", "DIRS")
    env_file: Optional[str] = _setting(
        None, c.path, "set environment variables from this dotenv file (KEY=VALUE lines) "
        "before the app is imported; variables already set win", "loading the app", "FILE")
    raw_env: Tuple[str, ...] = _setting(
        (), c.assignments, "set this environment variable before the app is imported; "
        "repeat for several", "loading the app", "KEY=VALUE", repeat=True)

    # -- HTTP apps (asgi, wsgi), served by uvicorn's protocols --------------------------
    http: str = _setting(
        "auto", c.choice(("auto", "httptools", "h11", "engine")), "HTTP/1.1 server: engine "
        "(fastfork's own, in C), uvicorn's protocol on httptools or h11, or auto (the engine "
        "where it can serve, else httptools when installed; the engine does not do TLS) "
        "(default auto)", "http apps", "auto|httptools|h11|engine")
    ws: str = _setting(
        "auto", c.choice(("auto", "websockets", "wsproto", "none")), "WebSocket "
        "implementation, or none (default auto)", "http apps", "auto|websockets|wsproto|none")
    lifespan: str = _setting(
        "auto", c.choice(("auto", "on", "off")), "ASGI lifespan events, once per worker "
        "(default auto: when the app supports them)", "http apps", "auto|on|off")
    threads: int = _setting(
        10, c.count, "threads per worker that run a WSGI app's calls (with the "
        "engine, fed from C: one of them while the calls never wait, one each once they do); "
        "0: on the loop thread, no pool (the engine only; for apps that do not block) "
        "(default 10)",
        "http apps", "N")
    root_path: str = _setting(
        "", c.text_or_empty, "the ASGI root_path (the app is mounted under this URL prefix)",
        "http apps", "PATH")
    proxy_headers: bool = _setting(
        False, c.flag, "trust X-Forwarded-For/-Proto from --forwarded-allow-ips for the "
        "client address and scheme", "http apps", flag=True)
    forwarded_allow_ips: str = _setting(
        "127.0.0.1", c.text_or_empty, "peers whose X-Forwarded-* headers are trusted, "
        "comma-separated, or * (default 127.0.0.1)", "http apps", "IPS")
    timeout_keep_alive: float = _setting(
        5.0, c.seconds, "close a keep-alive connection idle this long (0: keep none, each "
        "closes after its answer) (default 5)",
        "http apps", "SECONDS")
    timeout_request_head: float = _setting(
        60.0, c.seconds, "close a connection whose request head (request line and headers) "
        "has not all arrived this long after the connection opened, or after the first byte "
        "of a request on a keep-alive connection; a 408 answers a partial head (0: no "
        "deadline) (default 60, as nginx's client_header_timeout)", "http apps", "SECONDS")
    wsgi_body_buffer: int = _setting(
        1 << 20, parse_size, "a WSGI app's request body is read on the event loop, up to "
        "this much, before a --threads thread runs the app, so that a slow upload does not "
        "hold a thread; a larger one is read by the app as it arrives (0: every one is); "
        "with --threads 0 the largest body taken, 413 past it (default 1M)", "http apps",
        "SIZE")
    header_map: str = _setting(
        "drop", c.choice(("drop", "refuse", "dangerous")), "what a WSGI app's environ does "
        "with a request header whose name has an underscore, which would share its HTTP_ key "
        "with the dashed name a proxy sets (X_Forwarded_For and X-Forwarded-For): drop it, "
        "refuse the request (400), or map it as any other (dangerous); gunicorn's setting "
        "(default drop)", "http apps", "drop|refuse|dangerous")
    wsgi_sched_batch: bool = _setting(
        False, c.flag, "run a worker with a WSGI pool under SCHED_BATCH, so that its thread "
        "woken while another holds the GIL waits for its turn instead of preempting that one: "
        "fewer context switches, but a worker that waits for the CPU behind other processes "
        "(its p99 latency 1.7x, and 3-5x beside CPU-bound processes, in our measurements; "
        "the engine; default off)", "http apps", flag=True)
    limit_concurrency: int = _setting(
        0, c.count, "answer 503 beyond this many connections and tasks per worker "
        "(0: no limit)", "http apps", "N")
    no_access_log: bool = _setting(
        False, c.flag, "no access log (one line per request, naming the worker)", "http apps",
        flag=True)
    headers: Tuple[Tuple[str, str], ...] = _setting(
        (), c.headers, "add this header to every response; repeat for several",
        "http apps", "NAME:VALUE", repeat=True)
    server_header: bool = _setting(
        True, c.flag, "send a Server header (default on)", "http apps", flag=True)
    date_header: bool = _setting(
        True, c.flag, "send a Date header (default on)", "http apps", flag=True)
    h11_max_incomplete_event_size: Optional[int] = _setting(
        None, c.size_or_none, "h11 parser: largest request head, in bytes (default h11's, "
        "16K)", "http apps", "SIZE")
    ws_max_size: int = _setting(
        16 * 1024 * 1024, c.parse_size, "largest WebSocket message (default 16M)",
        "http apps", "SIZE")
    ws_max_queue: int = _setting(
        32, c.positive, "WebSocket messages queued for the app (default 32)", "http apps", "N")
    ws_ping_interval: Optional[float] = _setting(
        20.0, c.seconds_or_none, "WebSocket ping interval (default 20)", "http apps",
        "SECONDS")
    ws_ping_timeout: Optional[float] = _setting(
        20.0, c.seconds_or_none, "WebSocket ping timeout (default 20)", "http apps",
        "SECONDS")
    ws_per_message_deflate: bool = _setting(
        True, c.boolean, "WebSocket per-message-deflate compression (default true)",
        "http apps", "true|false")

    # -- TLS, terminated in each worker ------------------------------------------------
    ssl_certfile: Optional[str] = _setting(
        None, c.path, "serve HTTPS (TLS) with this PEM certificate (chain); each worker reads "
        "it as it starts, so a reload (SIGHUP) serves a renewed one", "tls", "FILE")
    ssl_keyfile: Optional[str] = _setting(
        None, c.path, "the certificate's PEM private key (default: in --ssl-certfile)", "tls",
        "FILE")
    ssl_keyfile_password: Optional[str] = _setting(
        None, c.text_or_none, "password of an encrypted --ssl-keyfile", "tls", "PASSWORD")
    ssl_version: int = _setting(
        17, c.ssl_version, "ssl.PROTOCOL_* number or name, as uvicorn takes it: 2 or 17 "
        "negotiate the highest version both sides have (from --ssl-min-version up); 3, 4, 5 "
        "pin TLS 1.0, 1.1, 1.2 (default 17, PROTOCOL_TLS_SERVER)", "tls", "N")
    ssl_min_version: Optional[str] = _setting(
        None, c.tls_version, "lowest TLS version a client may use: TLSv1.2 or TLSv1.3 "
        "(TLSv1, TLSv1.1 are deprecated) (default TLSv1.2)", "tls", "VERSION")
    ssl_cert_reqs: int = _setting(
        0, c.cert_reqs, "client certificates: 0 none asked, 1 optional, 2 required; 1 and 2 "
        "verify them against --ssl-ca-certs (default 0)", "tls", "0|1|2")
    ssl_ca_certs: Optional[str] = _setting(
        None, c.path, "PEM file of the CA certificates that client certificates are verified "
        "against", "tls", "FILE")
    ssl_ciphers: Optional[str] = _setting(
        None, c.text_or_none, "OpenSSL cipher list for TLS 1.2 and below (default: "
        "Python's)", "tls", "CIPHERS")

    # -- behind a load balancer ---------------------------------------------------------
    proxy_protocol: bool = _setting(
        False, c.flag, "every connection starts with a PROXY protocol header (v1 or v2, as "
        "HAProxy's send-proxy writes): the app sees the client's address", "proxy", flag=True)
    proxy_allow_from: Tuple[str, ...] = _setting(
        ("127.0.0.1", "::1"), c.networks, "peers allowed to send PROXY headers: addresses or "
        "networks, comma-separated, or '*' (default 127.0.0.1,::1); others are closed",
        "proxy", "NETWORKS")

    # -- observability ---------------------------------------------------------------
    metrics: Optional[str] = _setting(
        None, c.address_or_none, "serve Prometheus metrics at http://ADDRESS/metrics, and "
        "/livez and /readyz, from the primary (needs pip install 'fastfork[metrics]')",
        "observability", "ADDRESS")
    health: Optional[str] = _setting(
        None, c.address_or_none, "serve only /livez and /readyz at ADDRESS (no extra needed)",
        "observability", "ADDRESS")

    # -- crash loop ------------------------------------------------------------------
    respawn: bool = _setting(
        True, c.flag, "re-fork a worker that died unexpectedly (default true)", cli=False)
    min_uptime: float = _setting(
        1.0, c.seconds, "a worker dying sooner than this after starting counts toward the "
        "crash loop (default 1)", "crash loop", "SECONDS")
    max_restarts: int = _setting(
        10, c.positive, "this many quick deaths in a row at one worker slot are a crash loop: "
        "while other workers serve, the slot keeps re-forking every --backoff-max seconds "
        "(degraded); when none serves, stop (exit code 3) (default 10)", "crash loop", "N")
    backoff_base: float = _setting(
        0.1, c.seconds, "first delay before re-forking after a quick death; doubles each "
        "time (default 0.1)", "crash loop", "SECONDS")
    backoff_max: float = _setting(
        2.0, c.seconds, "longest delay between re-forks of a slot, and how often a slot in a "
        "crash loop is retried (default 2)", "crash loop", "SECONDS")

    # -- privileges ------------------------------------------------------------------
    user: Optional[str] = _setting(
        None, c.name, "workers drop to this user (name or uid) after fork, before any app "
        "code; the primary keeps its privileges to bind", "privileges", "USER")
    group: Optional[str] = _setting(
        None, c.name, "workers drop to this group (default: the user's group)", "privileges",
        "GROUP")

    # -- status ------------------------------------------------------------------------
    name: Optional[str] = _setting(
        None, c.name, "name of this app for `fastfork status` (default: the app's module "
        "name)", "status", "NAME")
    control_socket: Optional[str] = _setting(
        None, c.path, "path of the control socket `fastfork status` talks to (default "
        "DIR/NAME.sock; see `fastfork status --help`)", "status", "PATH")
    pidfile: Optional[str] = _setting(
        None, c.path, "write the primary's pid to this file (removed at exit)", "status",
        "FILE")

    # -- logging -----------------------------------------------------------------------
    log_level: str = _setting(
        "info", c.lower_choice(LOG_LEVELS), "primary and worker log level, any case "
        "(default info)", "logging", "LEVEL")
    log_config: Optional[str] = _setting(
        None, c.path, "logging configuration, as uvicorn reads it: a .json or .yaml "
        "dictConfig file (YAML needs PyYAML), or an INI file for logging.config.fileConfig",
        "logging", "FILE")
    error_logfile: Optional[str] = _setting(
        None, c.path, "write the primary's and workers' log (their stderr) to this file; "
        "- is stderr", "logging", "FILE")
    access_logfile: Optional[str] = _setting(
        None, c.path, "write the access log to this file, in --access-logformat; - is stdout",
        "logging", "FILE")
    access_logformat: Optional[str] = _setting(
        None, c.text_or_none, "access log lines in gunicorn's atoms, e.g. '%%(h)s "
        "\"%%(r)s\" %%(s)s %%(b)s %%(D)s' (default gunicorn's)", "logging", "FORMAT")
    log_format: str = _setting(
        "text", c.lower_choice(LOG_FORMATS), "text, or json: every log line of the primary "
        "and the workers (uvicorn's access lines too) is one JSON object with time, level, "
        "logger, message, pid and worker (the worker's index; null in the primary)",
        "logging", "FORMAT")
    use_colors: Optional[bool] = _setting(
        None, c.tristate, "colors in the log (default: when it is a terminal)", "logging",
        flag=True)

    # -- how workers start (Python API only) -------------------------------------------
    argv: Optional[Tuple[str, ...]] = _setting(
        None, c.argv, "Node form: the command a worker execs (default: this program again, "
        "sys.orig_argv)", cli=False)
    env: Mapping[str, str] = _setting(
        {}, c.env, "Node form: environment variables added for the exec'd workers", cli=False)
    pure: Optional[bool] = _setting(
        None, c.tristate, "true: the pure-Python dispatcher; false: the Cython one; none: "
        "the Cython one unless FASTFORK_NO_EXTENSIONS=1", cli=False)
    hooks: Any = _setting(
        {}, c.hooks(HOOKS), "gunicorn's server hooks: name -> callable (on_starting, "
        "post_fork, ...)", cli=False)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            try:
                converted = field.metadata["convert"](value)
            except ValueError as exc:
                raise SettingError(field.name, str(exc)) from None
            object.__setattr__(self, field.name, converted)
        self._check_tls()
        if self.reload and self.preload:
            raise SettingError("reload", "cannot be used with preload (--preload): the app is "
                                         "then imported once in the primary, so no reload "
                                         "would run the code that changed")
        if self.threads == 0 and self.wsgi_body_buffer == 0:
            raise SettingError("wsgi_body_buffer", "must be more than 0 with threads 0 "
                                                   "(--threads 0): a WSGI request's body is "
                                                   "then read whole before the call, and a "
                                                   "limit of 0 answers every body 413")
        if self.worker_connections and self.policy != "least":
            # Only least counts open connections; a cap rr cannot keep must not
            # look as if it were kept.
            raise SettingError("worker_connections",
                               f"needs policy least (policy is {self.policy}); for a cap "
                               f"on each worker's connections under any policy (gunicorn's "
                               f"worker_connections), use --limit-concurrency")

    def _check_tls(self):
        if not self.ssl_certfile:
            given = [name for name in ("ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs",
                                       "ssl_ciphers", "ssl_min_version")
                     if getattr(self, name) is not None] + (
                ["ssl_cert_reqs"] if self.ssl_cert_reqs else [])
            if given:
                raise SettingError(given[0], "needs ssl_certfile (--ssl-certfile): the "
                                             "certificate to serve")
        elif self.ssl_cert_reqs and not self.ssl_ca_certs:
            raise SettingError("ssl_cert_reqs", "client certificates are verified against "
                                                "ssl_ca_certs (--ssl-ca-certs): give the CA "
                                                "file")
        elif self.http == "engine":
            raise SettingError("http", "the engine does not do TLS yet: serve --ssl-certfile "
                                       "with --http httptools (or auto)")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)


FIELDS = {field.name: field for field in dataclasses.fields(Settings)}
