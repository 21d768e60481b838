"""``--env-file`` and ``--env``: environment variables set before the app is imported.

A small reader of the dotenv format python-dotenv reads (uvicorn's
``--env-file`` uses it) rather than a dependency: the format is a few rules,
and a missing optional package would otherwise turn a working uvicorn
command line into an error.  What it reads:

* ``KEY=VALUE`` lines, optionally ``export KEY=VALUE``; blank lines and
  ``# comments``; a line ``KEY`` alone is skipped (python-dotenv gives it no value);
* unquoted values: surrounding spaces stripped, `` #`` starts a comment;
* ``'single-quoted'`` values as written; ``"double-quoted"`` values with
  ``\\n``, ``\\t``, ``\\"`` and ``\\\\`` escapes, over several lines if need be;
* ``${VAR}`` and ``${VAR:-default}`` in unquoted and double-quoted values,
  from the keys above it or the environment.

As with uvicorn, a variable already set in the environment wins over the
file; ``--env KEY=VALUE`` (gunicorn's) wins over both.  The primary sets
them before it checks the app, so the check and every worker see them.
"""

import os
import re

_LINE = re.compile(r"""
    \s*(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)\s*
    (?:=\s*(?P<value>'[^']*'|"(?:\\.|[^"\\])*"|[^\n]*))?
    [ \t]*(?:\#[^\n]*)?(?:\n|$)
""", re.VERBOSE)
_SKIP = re.compile(r"\s*(?:#[^\n]*)?(?:\n|$)")
_EXPAND = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "'": "'"}


class EnvFileError(ValueError):
    """The file cannot be read, or a line is not KEY=VALUE; the message says where."""


def parse(text, environ=None, where="env file"):
    """``{KEY: VALUE}`` from dotenv ``text``, in order; ``environ`` for ``${VAR}``."""
    environ = os.environ if environ is None else environ
    values, pos = {}, 0
    while pos < len(text):
        skip = _SKIP.match(text, pos)
        if skip and skip.end() > pos:
            pos = skip.end()
            continue
        match = _LINE.match(text, pos)
        if not match or match.end() == pos:
            line = text.count("\n", 0, pos) + 1
            raise EnvFileError(f"{where}, line {line}: not KEY=VALUE: "
                               f"{text[pos:].splitlines()[0]!r}")
        pos = match.end()
        raw = match.group("value")
        if raw is None:
            continue
        if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
            value = raw[1:-1]
        else:
            if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
                value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)),
                               raw[1:-1])
            else:
                value = raw.split(" #", 1)[0].strip()
            value = _EXPAND.sub(lambda m: values.get(m.group("name"), environ.get(
                m.group("name"), m.group("default") or "")), value)
        values[match.group("key")] = value
    return values


def read(path, environ=None):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise EnvFileError(f"cannot read the env file {path}: {exc.strerror}") from None
    return parse(text, environ, path)


def apply(env_file, assignments, environ=None):
    """Set the variables of ``env_file`` not already set, then ``KEY=VALUE`` ``assignments``."""
    environ = os.environ if environ is None else environ
    if env_file:
        for key, value in read(env_file, environ).items():
            environ.setdefault(key, value)
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        environ[key.strip()] = value
