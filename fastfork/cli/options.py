"""``fastfork run``'s options: the command line and TOML files, read off ``Settings``.

Every option is a field of ``fastfork.settings.Settings``: its name, default,
help and check are declared there once; this module only presents them.
Precedence: built-in default < ``[tool.fastfork]`` in ``./pyproject.toml``
(or the file given with ``--config``) < command line.  Values are gathered as
written and converted once, when the ``Settings`` is built; an error names
where the bad value came from (``argument --timeout: ...`` or
``ff.toml [tool.fastfork]: timeout: ...``).
"""

import argparse
import os

try:
    import tomllib
except ImportError:          # Python < 3.11
    tomllib = None

from ..settings import FIELDS, Settings, SettingError


class ConfigError(ValueError):
    """A setting is wrong; the message names it and says why."""


class Option:
    """One ``fastfork run`` option, as the command line and TOML show a Settings field."""

    def __init__(self, field):
        self.dest = field.name
        self.name = field.name.replace("_", "-")      # as on the command line, without "--"
        meta = field.metadata
        self.default = meta["cli_default"]
        self.help, self.group, self.metavar = meta["help"], meta["group"], meta["metavar"]
        self.flag = meta["flag"]                      # --preload: a switch, true/false in TOML
        self.repeat = meta["repeat"]                  # --bind A --bind B; a list in TOML


OPTIONS = [Option(field) for field in FIELDS.values() if field.metadata["cli"]]
BY_DEST = {option.dest: option for option in OPTIONS}


def add_arguments(parser, aliases=None, negation=None):
    """Add every option to ``parser``; unset ones stay absent from the namespace.

    ``aliases``: field -> more flags for it (``fastfork.cli.aliases``);
    ``negation(name)``: the flag that turns switch ``--name`` off."""
    groups = {}
    for option in OPTIONS:
        group = groups.get(option.group)
        if group is None:
            group = groups[option.group] = parser.add_argument_group(option.group)
        flags = ["--" + option.name, *(aliases or {}).get(option.dest, ())]
        if option.flag:
            off = f"--{negation(option.name)}" if negation else None
            group.add_argument(*flags, dest=option.dest, action="store_const", const=True,
                               default=argparse.SUPPRESS,
                               help=option.help + (f" ({off}: off)" if off else ""))
            if off:
                group.add_argument(off, dest=option.dest, action="store_const", const=False,
                                   default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            group.add_argument(*flags, dest=option.dest,
                               action="append" if option.repeat else "store",
                               metavar=option.metavar, default=argparse.SUPPRESS,
                               help=option.help)


def read_toml(path, table_required):
    """The ``[tool.fastfork]`` table of ``path`` (or, for a ``--config`` file, the
    whole file when it has no such table), with keys checked; returns
    ``(where, table)``, ``where`` naming it in error messages."""
    if tomllib is None:
        raise ConfigError(f"{path}: reading TOML needs Python 3.11 (tomllib)")
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    tool = document.get("tool")
    table = tool.get("fastfork") if isinstance(tool, dict) else None
    where = f"{path} [tool.fastfork]"
    if table is None:
        if table_required:
            return where, {}
        table, where = document, path
    if not isinstance(table, dict):
        raise ConfigError(f"{where} is not a table")
    values = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest != "app" and dest not in BY_DEST:
            known = ", ".join(["app"] + [o.name for o in OPTIONS])
            raise ConfigError(f"{where}: unknown option {key!r} (options: {known})")
        values[dest] = value
    return where, values


def build(cli, config_path=None, cwd=None, tables=(), toml=True):
    """The ``Settings`` from defaults, the TOML file, then ``tables``, then ``cli`` (the
    options given, as written); raises ConfigError naming the bad value and where it
    came from.  ``tables``: more ``(where, values, names)`` in order (a gunicorn config
    file: ``names`` maps a field to the name it was written as); ``toml=False``: no
    TOML file is read (one was not asked for, and another config file was)."""
    values = {option.dest: option.default for option in OPTIONS}
    origin = {}
    if not toml:
        where, table = None, {}
    elif config_path is not None:
        where, table = read_toml(config_path, table_required=False)
    else:
        pyproject = os.path.join(cwd or os.getcwd(), "pyproject.toml")
        where, table = (read_toml(pyproject, table_required=True) if os.path.isfile(pyproject)
                        else (None, {}))
    for dest, value in table.items():
        values[dest], origin[dest] = value, f"{where}: {dest.replace('_', '-')}"
    for where, extra, names in tables:
        for dest, value in extra.items():
            values[dest], origin[dest] = value, f"{where}: {names.get(dest, dest)}"
    for dest, value in cli.items():
        if value is not None:
            values[dest], origin[dest] = value, f"argument --{dest.replace('_', '-')}"
    try:
        return Settings(**values)
    except SettingError as exc:
        raise ConfigError(f"{origin.get(exc.name, exc.name)}: {exc.reason}") from None
