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
raise ValueError saying what is wrong; ``Settings`` reports it as
``SettingError`` naming the field.
"""

import dataclasses
import re
import types
from typing import Any, Mapping, Optional, Tuple, Union

from .addresses import parse_address, parse_networks
from .handoff.wire import (DEFAULT_BATCH_MAX, DEFAULT_STALL_MS, DEFAULT_WINDOW, check_batch_max,
                           check_window)
from .cpus import parse_workers
from .loops import LOOPS

POLICIES = ("rr", "least", "none", "reuseport")
# The policies under which the primary accepts and its dispatcher hands out
# connections (the others let the workers accept by themselves).
DISPATCHED = ("rr", "least")
APP_TYPES = ("auto", "asgi", "wsgi", "stream", "protocol", "main")
LOG_LEVELS = ("debug", "info", "warning", "error")


class SettingError(ValueError):
    """A setting has a value it cannot take; ``name`` is the field, ``reason`` why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


# -- converters: what a person or a program gives -> the setting -------------------
def _address(value):
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address (HOST:PORT or unix:PATH)")
    parse_address(value)
    return value


def _addresses(value):
    values = [value] if isinstance(value, str) else list(value or ())
    return tuple(_address(v) for v in values)


def _seconds(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{value!r} must be zero or more seconds")
    return seconds


def _address_or_none(value):
    return None if value is None else _address(value)


def _networks(value):
    values = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    parse_networks(values)           # a bad one fails here, with its own message
    return tuple(values)


def _seconds_or_off(value):
    return 0.0 if value is None else _seconds(value)


def _count(value):
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a whole number") from None
    if isinstance(value, bool) or isinstance(value, float) and count != value or count < 0:
        raise ValueError(f"{value!r} must be a whole number >= 0")
    return count


def _positive(value):
    count = _count(value)
    if count < 1:
        raise ValueError(f"{value!r} must be 1 or more")
    return count


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(value):
    """Bytes from ``536870912``, ``"512M"``, ``"512MiB"``, ``"1.5G"`` (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(str(value)) if isinstance(value, (str, float)) else None
    if not match:
        raise ValueError(f"{value!r} is not a size (bytes, or a number with K, M or G)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))


def _workers(value):
    if isinstance(value, str) and value.strip().lower() == "max":
        return "max"          # resolved by the primary: usable_cpus() where it runs
    return parse_workers(value)


def _choice(choices):
    def convert(value):
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return convert


def _flag(value):
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _name(value):
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
        raise ValueError(f"{value!r} is not a name")
    return str(value)


def _text_or_empty(value):
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _path(value):
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a path")
    return value


def _app(value):
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("app must be a string like 'module:callable'")
    return value


def _argv(value):
    return tuple(str(v) for v in value) if value else None


def _env(value):
    return types.MappingProxyType({str(k): str(v) for k, v in dict(value or {}).items()})


def _tristate(value):
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{value!r} is not True, False or None")
    return value


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
        None, _app, "MODULE:CALLABLE or path/to/app.py:CALLABLE (fastfork run only)",
        cli=False)
    bind: Tuple[str, ...] = _setting(
        (), _addresses, "address to serve: HOST:PORT, [V6]:PORT or unix:PATH; repeat for "
        "several (default 127.0.0.1:8000, or the sockets systemd passed)", metavar="ADDRESS",
        repeat=True)
    workers: Union[int, str] = _setting(
        "max", _workers, "number of workers, or 'max' for one per usable core (CPU affinity "
        "and cgroup quota) (default max)", metavar="N|max")
    policy: str = _setting(
        "rr", _choice(POLICIES), "rr: the primary accepts and hands each connection to the "
        "next worker with room; least: to the worker with the fewest open connections "
        "(asyncio workers only); none: workers accept on the shared socket; reuseport: one "
        "SO_REUSEPORT socket per worker (default rr)", metavar="|".join(POLICIES))
    app_type: str = _setting(
        "auto", _choice(APP_TYPES), "what CALLABLE is: asgi: an ASGI app (FastAPI, Starlette, "
        "async def app(scope, receive, send)); wsgi: a WSGI app (Flask, Django, "
        "app(environ, start_response)); both need pip install 'fastfork[web]'; stream: an "
        "asyncio client callback (reader, writer); protocol: an asyncio protocol factory; "
        "main: called as CALLABLE(addresses) in each worker and serves by itself; auto: tell "
        "from the callable (default auto)", metavar="|".join(APP_TYPES))
    preload: bool = _setting(
        False, _flag, "import the app once in the primary before forking (shared memory, "
        "faster starts; a reload then does not pick up new code)", flag=True)
    window: int = _setting(
        DEFAULT_WINDOW, check_window, f"connections a worker may hold unacknowledged "
        f"(rr and least policies; default {DEFAULT_WINDOW})", metavar="N")
    worker_connections: int = _setting(
        0, _count, "least policy: most connections a worker may have open; when every "
        "worker has this many, new ones wait in the kernel's backlog (0: no cap)",
        metavar="N")
    batch_max: int = _setting(DEFAULT_BATCH_MAX, check_batch_max, cli=False)
    stall_ms: int = _setting(
        DEFAULT_STALL_MS, _count, "rr and least: a worker whose event loop is blocked this "
        "many ms (a synchronous call in an async handler) is sent nothing until it runs "
        "again, and what it was sent and has not taken goes to another worker; 0 disables "
        f"(default {DEFAULT_STALL_MS})", metavar="MS")
    stall_log_ms: int = _setting(
        100, _count, "a worker logs, at most once in 10 s, where its event loop was (file "
        "and line) when it was blocked this many ms; 0 disables (default 100)",
        "operations", "MS")

    # -- operations ------------------------------------------------------------------
    graceful_timeout: float = _setting(
        30.0, _seconds, "seconds a stopping worker may take to finish its open connections "
        "before SIGKILL (default 30)", "operations", "SECONDS")
    # Off for the library (a blocking worker sends no heartbeat to miss); on
    # for `fastfork run`, whose workers all serve from an event loop.
    timeout: float = _setting(
        0.0, _seconds_or_off, "a worker whose event loop sends no heartbeat for this long is "
        "killed (SIGABRT, then SIGKILL) and replaced; 0 disables (default 30)",
        "operations", "SECONDS", cli_default=30.0)
    wait_ready: bool = _setting(
        False, _flag, "during a reload, a new worker is ready when it calls "
        "fastfork.ready(), not when it listens", "operations", flag=True)
    ready_timeout: float = _setting(
        30.0, _seconds, "a reload gives up on a new worker not ready within this many "
        "seconds, keeping the old one (default 30)", "operations", "SECONDS")
    max_requests: int = _setting(
        0, _count, "replace a worker after it got this many connections (0: never)",
        "operations", "N")
    max_requests_jitter: int = _setting(
        0, _count, "add 0..N at random to each worker's --max-requests so they do not all "
        "recycle together", "operations", "N")
    max_memory: int = _setting(
        0, parse_size, "replace a worker whose RSS grows over this, e.g. 512M (0: no limit)",
        "operations", "SIZE")
    shutdown_delay: float = _setting(
        0.0, _seconds, "on SIGTERM, keep serving this many seconds (readiness already "
        "answers 503) before draining, so that a load balancer stops sending first; like "
        "a Kubernetes preStop sleep (default 0)", "operations", "SECONDS")

    loop: str = _setting(
        "auto", _choice(LOOPS), "event loop of the workers (every app type but main, which "
        "runs its own): uvloop (required: pip install 'fastfork[uvloop]'), asyncio, or auto "
        "(uvloop when installed) (default auto)", "serving", "|".join(LOOPS))

    # -- HTTP apps (asgi, wsgi), served by uvicorn's protocols --------------------------
    http: str = _setting(
        "auto", _choice(("auto", "httptools", "h11")), "HTTP/1.1 parser: httptools, h11, or "
        "auto (httptools when installed) (default auto)", "http apps", "auto|httptools|h11")
    ws: str = _setting(
        "auto", _choice(("auto", "websockets", "wsproto", "none")), "WebSocket "
        "implementation, or none (default auto)", "http apps", "auto|websockets|wsproto|none")
    lifespan: str = _setting(
        "auto", _choice(("auto", "on", "off")), "ASGI lifespan events, once per worker "
        "(default auto: when the app supports them)", "http apps", "auto|on|off")
    threads: int = _setting(
        10, _positive, "threads per worker that run a WSGI app's calls (default 10)",
        "http apps", "N")
    root_path: str = _setting(
        "", _text_or_empty, "the ASGI root_path (the app is mounted under this URL prefix)",
        "http apps", "PATH")
    proxy_headers: bool = _setting(
        False, _flag, "trust X-Forwarded-For/-Proto from --forwarded-allow-ips for the "
        "client address and scheme", "http apps", flag=True)
    forwarded_allow_ips: str = _setting(
        "127.0.0.1", _text_or_empty, "peers whose X-Forwarded-* headers are trusted, "
        "comma-separated, or * (default 127.0.0.1)", "http apps", "IPS")
    timeout_keep_alive: float = _setting(
        5.0, _seconds, "close a keep-alive connection idle this long (default 5)",
        "http apps", "SECONDS")
    timeout_request_head: float = _setting(
        60.0, _seconds, "close a connection whose request head (request line and headers) "
        "has not all arrived this long after the connection opened, or after the first byte "
        "of a request on a keep-alive connection; a 408 answers a partial head (0: no "
        "deadline) (default 60, as nginx's client_header_timeout)", "http apps", "SECONDS")
    wsgi_body_buffer: int = _setting(
        1 << 20, parse_size, "a WSGI app's request body is read on the event loop, up to "
        "this much, before a --threads thread runs the app, so that a slow upload does not "
        "hold a thread (0: off) (default 1M)", "http apps", "SIZE")
    limit_concurrency: int = _setting(
        0, _count, "answer 503 beyond this many connections and tasks per worker "
        "(0: no limit)", "http apps", "N")
    no_access_log: bool = _setting(
        False, _flag, "no access log (one line per request, naming the worker)", "http apps",
        flag=True)

    # -- behind a load balancer ---------------------------------------------------------
    proxy_protocol: bool = _setting(
        False, _flag, "every connection starts with a PROXY protocol header (v1 or v2, as "
        "HAProxy's send-proxy writes): the app sees the client's address", "proxy", flag=True)
    proxy_allow_from: Tuple[str, ...] = _setting(
        ("127.0.0.1", "::1"), _networks, "peers allowed to send PROXY headers: addresses or "
        "networks, comma-separated, or '*' (default 127.0.0.1,::1); others are closed",
        "proxy", "NETWORKS")

    # -- observability ---------------------------------------------------------------
    metrics: Optional[str] = _setting(
        None, _address_or_none, "serve Prometheus metrics at http://ADDRESS/metrics, and "
        "/livez and /readyz, from the primary (needs pip install 'fastfork[metrics]')",
        "observability", "ADDRESS")
    health: Optional[str] = _setting(
        None, _address_or_none, "serve only /livez and /readyz at ADDRESS (no extra needed)",
        "observability", "ADDRESS")

    # -- crash loop ------------------------------------------------------------------
    respawn: bool = _setting(True, _flag, cli=False)
    min_uptime: float = _setting(
        1.0, _seconds, "a worker dying sooner than this after starting counts toward the "
        "crash loop (default 1)", "crash loop", "SECONDS")
    max_restarts: int = _setting(
        10, _positive, "this many quick deaths in a row at one worker slot are a crash loop: "
        "while other workers serve, the slot keeps re-forking every --backoff-max seconds "
        "(degraded); when none serves, stop (exit code 3) (default 10)", "crash loop", "N")
    backoff_base: float = _setting(
        0.1, _seconds, "first delay before re-forking after a quick death; doubles each "
        "time (default 0.1)", "crash loop", "SECONDS")
    backoff_max: float = _setting(
        2.0, _seconds, "longest delay between re-forks of a slot, and how often a slot in a "
        "crash loop is retried (default 2)", "crash loop", "SECONDS")

    # -- privileges ------------------------------------------------------------------
    user: Optional[str] = _setting(
        None, _name, "workers drop to this user (name or uid) after fork, before any app "
        "code; the primary keeps its privileges to bind", "privileges", "USER")
    group: Optional[str] = _setting(
        None, _name, "workers drop to this group (default: the user's group)", "privileges",
        "GROUP")

    # -- status ------------------------------------------------------------------------
    name: Optional[str] = _setting(
        None, _name, "name of this app for `fastfork status` (default: the app's module "
        "name)", "status", "NAME")
    control_socket: Optional[str] = _setting(
        None, _path, "path of the control socket `fastfork status` talks to (default "
        "DIR/NAME.sock; see `fastfork status --help`)", "status", "PATH")
    log_level: str = _setting(
        "info", _choice(LOG_LEVELS), "primary and worker log level (default info)",
        "status", "LEVEL")

    # -- how workers start (Python API only) -------------------------------------------
    argv: Optional[Tuple[str, ...]] = _setting(None, _argv, cli=False)  # Node form: the exec'd argv
    env: Mapping[str, str] = _setting({}, _env, cli=False)      # Node form: extra environment
    pure: Optional[bool] = _setting(None, _tristate, cli=False)  # None: FASTFORK_NO_EXTENSIONS

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            try:
                converted = field.metadata["convert"](value)
            except ValueError as exc:
                raise SettingError(field.name, str(exc)) from None
            object.__setattr__(self, field.name, converted)
        if self.worker_connections and self.policy != "least":
            # Only least counts open connections; a cap rr cannot keep must not
            # look as if it were kept.
            raise SettingError("worker_connections",
                               f"needs policy least (policy is {self.policy})")

    def replace(self, **changes: Any) -> "Settings":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)


FIELDS = {field.name: field for field in dataclasses.fields(Settings)}
