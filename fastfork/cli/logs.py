"""Where ``fastfork run`` logs: its level, ``--log-config``, ``--error-logfile``,
``--access-logfile``.

Everything is checked before any worker is forked (``check``: the files can
be opened, the log config parses), and set up once nothing else can fail
(``setup``), so that bad input gets its one line on the terminal.

* ``--log-config FILE`` is read as uvicorn reads it: ``.json`` and
  ``.yaml``/``.yml`` are ``logging.config.dictConfig`` dicts (YAML needs
  PyYAML), anything else an INI file for ``logging.config.fileConfig``.  The
  primary applies it over its own logging; each worker's uvicorn applies it
  again (``uvicorn.Config(log_config=FILE)``).
* ``--error-logfile FILE`` becomes the primary's stderr, which every worker
  inherits: fastfork's log, uvicorn's error log and tracebacks all go there.
* ``--access-logfile``/``--access-logformat`` are written by the workers
  (``fastfork.web.access``); here the file is only checked.
* ``--log-format json``: every line of the primary's and the workers' logs
  is one JSON object naming the worker (``fastfork.jsonlog``); ``setup``
  turns it on before any fork, so the workers inherit it.

Without ``--preload`` the app is checked by the workers themselves, after
the fork (``fastfork.cli.startup``): ``setup(settings, hold=True)`` holds
the primary's records until ``release``, which writes them (the app is
good) or drops them (it is not: its one line is all there is to say).
"""

import configparser
import json
import logging
import logging.config
import os
import sys

from .. import jsonlog
from .options import ConfigError

TRACE = 5        # uvicorn's "trace" level, below DEBUG


def read_log_config(path):
    """The dictConfig dict of a .json/.yaml file, or None for an INI file (checked)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the log config {path}: {exc.strerror}") from None
    if path.endswith(".json"):
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"log config {path} is not valid JSON: {exc}") from None
    elif path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"log config {path}: reading YAML needs PyYAML: "
                              f"pip install PyYAML (or give the config as .json)") from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"log config {path} is not valid YAML: "
                              f"{' '.join(str(exc).split())}") from None
    else:
        parser = configparser.ConfigParser()
        try:
            parser.read_string(text, path)
        except configparser.Error as exc:
            raise ConfigError(f"log config {path} is not an INI file: "
                              f"{' '.join(str(exc).split())}") from None
        for section in ("loggers", "handlers", "formatters"):
            if not parser.has_section(section):
                raise ConfigError(f"log config {path} has no [{section}] section "
                                  f"(logging.config.fileConfig needs it)")
        return None
    if not isinstance(config, dict) or "version" not in config:
        raise ConfigError(f"log config {path} is not a logging.config.dictConfig dict "
                          f"(it needs \"version\": 1)")
    return config


def apply_log_config(path):
    """Apply ``--log-config`` in this process, as uvicorn does; ConfigError if it fails."""
    config = read_log_config(path)
    try:
        if config is None:
            logging.config.fileConfig(path, disable_existing_loggers=False)
        else:
            logging.config.dictConfig(config)
    except (ValueError, TypeError, AttributeError, ImportError, KeyError, OSError) as exc:
        raise ConfigError(f"log config {path}: {' '.join(str(exc).split())}") from None


def check_writable(path, what):
    if path in (None, "-"):
        return
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the {what} {path}: {exc.strerror}") from None


def check(settings):
    """Everything ``setup`` will do, checked now: ConfigError naming the problem."""
    if settings.log_config:
        read_log_config(settings.log_config)
    check_writable(settings.error_logfile, "error log")
    check_writable(settings.access_logfile, "access log")


def level_number(name):
    return TRACE if name == "trace" else getattr(logging, name.upper())


class Held(logging.Handler):
    """Holds this process's records for ``target`` until ``release``; those of a
    process forked meanwhile (a worker) go to ``target`` at once."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.pid = os.getpid()
        self.records = []
        self.holding = True

    def emit(self, record):
        if self.holding and os.getpid() == self.pid:
            self.records.append(record)
        else:
            self.target.handle(record)

    def let_go(self, write):
        self.holding = False
        records, self.records = self.records, []
        if write:
            for record in records:
                self.target.handle(record)


_held = None


def release(write=True):
    """Stop holding the primary's log (``setup(hold=True)``): write what was held,
    or drop it (``write=False``); does nothing when nothing is held."""
    global _held
    if _held is not None:
        _held.let_go(write)
        _held = None


def setup(settings, hold=False):
    """The primary's logging, once every check passed (see the module's docstring);
    ``hold``: keep the records until ``release``."""
    global _held
    jsonlog.enable(settings.log_format == "json")
    if settings.error_logfile not in (None, "-"):
        sys.stderr.flush()
        fd = os.open(settings.error_logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler(sys.stderr)
    # --log-format json: jsonlog.enable() was called before, for the workers too.
    handler.setFormatter(jsonlog.formatter(
        "%(asctime)s fastfork[%(process)d] %(levelname)s %(message)s"))
    root = logging.getLogger("fastfork")
    if hold:
        _held = Held(handler)
        root.handlers[:] = [_held]
    else:
        root.handlers[:] = [handler]
    root.setLevel(level_number(settings.log_level))
    root.propagate = False
    if settings.log_config:
        apply_log_config(settings.log_config)
