"""Options of ``python -m fastfork run``: one table for the command line and TOML files.

Every option is declared once in ``OPTIONS``; the argument parser and the
TOML reader are both built from it, so a setting means the same thing
wherever it is written.  Precedence: built-in default < ``[tool.fastfork]``
in ``./pyproject.toml`` (or the file given with ``--config``) < command line.
"""

import argparse
import os
import re

try:
    import tomllib
except ImportError:          # Python < 3.11
    tomllib = None

from .addresses import parse_address
from .cpus import parse_workers
from .primary import POLICIES

APP_TYPES = ("auto", "stream", "protocol", "main")


class ConfigError(ValueError):
    """A setting is wrong; the message names it and says why."""


# -- converters: text or TOML value -> setting; ValueError says what is wrong --------
def _address(value):
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address (HOST:PORT or unix:PATH)")
    parse_address(value)
    return value


def _seconds(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{value!r} must be zero or more seconds")
    return seconds


def _count(value):
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a whole number") from None
    if isinstance(value, float) and count != value or count < 0:
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
        return "max"
    return parse_workers(value)


def _choice(choices):
    def convert(value):
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return convert


def _text(value):
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
        raise ValueError(f"{value!r} is not a name")
    return str(value)


def _path(value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a path")
    return value


class Option:
    def __init__(self, name, convert, default, help, group, metavar=None, flag=False,
                 repeat=False):
        self.name = name                    # as on the command line, without "--"
        self.dest = name.replace("-", "_")
        self.convert = convert
        self.default = default
        self.help = help
        self.group = group
        self.metavar = metavar
        self.flag = flag                    # --preload: a switch, true/false in TOML
        self.repeat = repeat                # --bind A --bind B; a list in TOML


OPTIONS = [
    Option("bind", _address, None, "address to serve: HOST:PORT, [V6]:PORT or unix:PATH; "
           "repeat for several (default 127.0.0.1:8000, or the sockets systemd passed)",
           "serving", "ADDRESS", repeat=True),
    Option("workers", _workers, "max", "number of workers, or 'max' for one per usable core "
           "(CPU affinity and cgroup quota) (default max)", "serving", "N|max"),
    Option("policy", _choice(POLICIES), "rr", "rr: the primary accepts and hands each "
           "connection to the next worker with room; none: workers accept on the shared "
           "socket; reuseport: one SO_REUSEPORT socket per worker (default rr)",
           "serving", "|".join(POLICIES)),
    Option("app-type", _choice(APP_TYPES), "auto", "what CALLABLE is: stream: an asyncio "
           "client callback (reader, writer); protocol: an asyncio protocol factory; main: "
           "called as CALLABLE(addresses) in each worker and serves by itself; auto: tell from "
           "the callable (default auto)", "serving", "|".join(APP_TYPES)),
    Option("preload", bool, False, "import the app once in the primary before forking "
           "(shared memory, faster starts; a reload then does not pick up new code)",
           "serving", flag=True),
    Option("window", _positive, 8, "connections a worker may hold unacknowledged "
           "(rr policy; default 8)", "serving", "N"),
    Option("graceful-timeout", _seconds, 30.0, "seconds a stopping worker may take to finish "
           "its open connections before SIGKILL (default 30)", "operations", "SECONDS"),
    Option("timeout", _seconds, 30.0, "a worker whose event loop sends no heartbeat for this "
           "long is killed (SIGABRT, then SIGKILL) and replaced; 0 disables (default 30)",
           "operations", "SECONDS"),
    Option("wait-ready", bool, False, "during a reload, a new worker is ready when it calls "
           "fastfork.ready(), not when it listens", "operations", flag=True),
    Option("ready-timeout", _seconds, 30.0, "a reload gives up on a new worker not ready "
           "within this many seconds, keeping the old one (default 30)", "operations",
           "SECONDS"),
    Option("max-requests", _count, 0, "replace a worker after it got this many connections "
           "(0: never)", "operations", "N"),
    Option("max-requests-jitter", _count, 0, "add 0..N at random to each worker's "
           "--max-requests so they do not all recycle together", "operations", "N"),
    Option("max-memory", parse_size, 0, "replace a worker whose RSS grows over this, e.g. 512M "
           "(0: no limit)", "operations", "SIZE"),
    Option("min-uptime", _seconds, 1.0, "a worker dying sooner than this after starting "
           "counts toward the crash loop (default 1)", "crash loop", "SECONDS"),
    Option("max-restarts", _positive, 10, "stop (exit code 3) after this many quick deaths in "
           "a row (default 10)", "crash loop", "N"),
    Option("backoff-base", _seconds, 0.1, "first delay before re-forking after a quick death; "
           "doubles each time (default 0.1)", "crash loop", "SECONDS"),
    Option("backoff-max", _seconds, 2.0, "longest delay between re-forks (default 2)",
           "crash loop", "SECONDS"),
    Option("user", _text, None, "workers drop to this user (name or uid) after fork, before "
           "any app code; the primary keeps its privileges to bind", "privileges", "USER"),
    Option("group", _text, None, "workers drop to this group (default: the user's group)",
           "privileges", "GROUP"),
    Option("name", _text, None, "name of this app for `fastfork status` (default: the "
           "app's module name)", "status", "NAME"),
    Option("control-socket", _path, None, "path of the control socket `fastfork status` "
           "talks to (default DIR/NAME.sock; see `fastfork status --help`)", "status", "PATH"),
    Option("log-level", _choice(("debug", "info", "warning", "error")), "info",
           "primary and worker log level (default info)", "status", "LEVEL"),
]
BY_DEST = {option.dest: option for option in OPTIONS}


def _argparse_type(convert, name):
    def convert_text(text):
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert_text.__name__ = name
    return convert_text


def add_arguments(parser):
    """Add every option to ``parser``; unset ones stay absent from the namespace."""
    groups = {}
    for option in OPTIONS:
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(option.group)
        flag = "--" + option.name
        if option.flag:
            group.add_argument(flag, action="store_true", default=argparse.SUPPRESS,
                               help=option.help)
        else:
            group.add_argument(flag, type=_argparse_type(option.convert, option.name),
                               action="append" if option.repeat else "store",
                               metavar=option.metavar, default=argparse.SUPPRESS,
                               help=option.help)


def read_toml(path, table_required):
    """The ``[tool.fastfork]`` table of ``path`` (or, for a ``--config`` file, the
    whole file when it has no such table), with keys checked and converted."""
    if tomllib is None:
        raise ConfigError(f"{path}: reading TOML needs Python 3.11 (tomllib)")
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    table = document.get("tool", {}).get("fastfork") if isinstance(document.get("tool"), dict) else None
    where = f"{path} [tool.fastfork]"
    if table is None:
        if table_required:
            return {}
        table, where = document, path
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table")
    return convert_table(table, where)


def convert_table(table, where):
    settings = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest == "app":
            if not isinstance(value, str):
                raise ConfigError(f"{where}: app must be a string like 'module:callable'")
            settings["app"] = value
            continue
        option = BY_DEST.get(dest)
        if option is None:
            known = ", ".join(["app"] + [o.name for o in OPTIONS])
            raise ConfigError(f"{where}: unknown option {key!r} (options: {known})")
        try:
            if option.flag:
                if not isinstance(value, bool):
                    raise ValueError(f"{value!r} is not true or false")
                settings[dest] = value
            elif option.repeat:
                values = value if isinstance(value, list) else [value]
                settings[dest] = [option.convert(v) for v in values]
            else:
                settings[dest] = option.convert(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {option.name}: {exc}") from None
    return settings


def resolve(cli, config_path=None, cwd=None):
    """Settings from defaults, the TOML file, then ``cli`` (a dict of options given)."""
    settings = {option.dest: option.default for option in OPTIONS}
    settings["app"] = None
    if config_path is not None:
        settings.update(read_toml(config_path, table_required=False))
    else:
        pyproject = os.path.join(cwd or os.getcwd(), "pyproject.toml")
        if os.path.isfile(pyproject):
            settings.update(read_toml(pyproject, table_required=True))
    settings.update({k: v for k, v in cli.items() if v is not None})
    return settings
