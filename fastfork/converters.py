"""What a person or a program writes -> a setting's value: the converters ``Settings`` uses.

Each takes what a person writes (``"512M"``, ``"30"``, ``"max"``) as well as
Python values and returns the setting's value, or raises ValueError saying what
is wrong; ``Settings`` reports it as ``SettingError`` naming the field.
"""

import re
import types

from .addresses import fd_of, parse_address, parse_networks
from .cpus import parse_workers


class SettingError(ValueError):
    """A setting has a value it cannot take; ``name`` is the field, ``reason`` why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


# -- converters: what a person or a program gives -> the setting -------------------
def address(value):
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address (HOST:PORT or unix:PATH)")
    if fd_of(value) is None:
        parse_address(value)
    return value


def addresses(value):
    values = [value] if isinstance(value, str) else list(value or ())
    return tuple(address(v) for v in values)


def seconds(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number of seconds") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{value!r} must be zero or more seconds")
    return seconds


def address_or_none(value):
    return None if value is None else address(value)


def networks(value):
    values = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    parse_networks(values)           # a bad one fails here, with its own message
    return tuple(values)


def seconds_or_off(value):
    return 0.0 if value is None else seconds(value)


def count(value):
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a whole number") from None
    if isinstance(value, bool) or isinstance(value, float) and count != value or count < 0:
        raise ValueError(f"{value!r} must be a whole number >= 0")
    return count


def positive(value):
    number = count(value)
    if number < 1:
        raise ValueError(f"{value!r} must be 1 or more")
    return number


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


def workers(value):
    if isinstance(value, str) and value.strip().lower() == "max":
        return "max"          # resolved by the primary: usable_cpus() where it runs
    return parse_workers(value)


def choice(choices):
    def convert(value):
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return convert


def flag(value):
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def name(value):
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
        raise ValueError(f"{value!r} is not a name")
    return str(value)


def text_or_empty(value):
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def path(value):
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a path")
    return value


def app(value):
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError("app must be a string like 'module:callable'")
    return value


def argv(value):
    return tuple(str(v) for v in value) if value else None


def env(value):
    return types.MappingProxyType({str(k): str(v) for k, v in dict(value or {}).items()})


def tristate(value):
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{value!r} is not True, False or None")
    return value


def lower_choice(choices):
    """``choice``, in any case: ``DEBUG`` is ``debug``."""
    check = choice(choices)

    def convert(value):
        return check(value.lower() if isinstance(value, str) else value)
    return convert


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def boolean(value):
    """A switch written as a value: ``true``/``false``, ``1``/``0``, ``yes``/``no``, or a bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{value!r} is not true or false")


def size_or_none(value):
    return None if value is None else parse_size(value)


def seconds_or_none(value):
    return None if value is None else seconds(value)


def paths(value):
    """Directories, as a list or comma-separated (gunicorn's ``--pythonpath a,b``)."""
    values = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(path(v.strip()) for v in values if not isinstance(v, str) or v.strip())


def patterns(value):
    """Glob patterns (or paths), each given once or as a list."""
    values = [value] if isinstance(value, str) else list(value or ())
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{v!r} is not a glob pattern")
    return tuple(v.strip() for v in values)


def header(value):
    """A response header as uvicorn's ``--header``: ``"name:value"`` -> ``(name, value)``."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        name, text = (str(v) for v in value)
    elif isinstance(value, str) and ":" in value:
        name, _, text = value.partition(":")
    else:
        raise ValueError(f"{value!r} is not a header as name:value")
    if not name.strip() or any(ch in name for ch in " \t\r\n") or any(
            ch in text for ch in "\r\n"):
        raise ValueError(f"{value!r} is not a header as name:value")
    return name.strip(), text.strip()


def headers(value):
    values = [value] if isinstance(value, str) else list(value or ())
    return tuple(header(v) for v in values)


def assignment(value):
    """``KEY=VALUE`` (gunicorn's ``--env``)."""
    if not isinstance(value, str) or "=" not in value or not value.partition("=")[0].strip():
        raise ValueError(f"{value!r} is not KEY=VALUE")
    return value


def assignments(value):
    values = [value] if isinstance(value, str) else list(value or ())
    return tuple(assignment(v) for v in values)


def hooks(names):
    """Server hooks: a mapping of gunicorn's hook names (``names``) to callables."""
    def convert(value):
        value = dict(value or {})
        for name, function in value.items():
            if name not in names:
                raise ValueError(f"{name!r} is not a server hook (hooks: {', '.join(names)})")
            if not callable(function):
                raise ValueError(f"hook {name} is a {type(function).__name__}, not a function")
        return types.MappingProxyType(value)
    return convert


def text_or_none(value):
    return None if value is None else text_or_empty(value)


# -- TLS (fastfork.tls builds the context from these) ----------------------------------
# ssl.PROTOCOL_* numbers a server may name, as uvicorn's and gunicorn's --ssl-version
# take them: 2 (PROTOCOL_TLS) and 17 (PROTOCOL_TLS_SERVER) negotiate; 3, 4 and 5
# pin TLS 1.0, 1.1 and 1.2.
SSL_VERSIONS = {"PROTOCOL_TLS": 2, "PROTOCOL_SSLv23": 2, "PROTOCOL_TLSv1": 3,
                "PROTOCOL_TLSv1_1": 4, "PROTOCOL_TLSv1_2": 5, "PROTOCOL_TLS_SERVER": 17}
CERT_REQS = {"CERT_NONE": 0, "CERT_OPTIONAL": 1, "CERT_REQUIRED": 2}
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def _named_number(value, names, what, choices):
    """``value`` as one of ``names``' numbers: the number, its name, or the name
    without its prefix and in any case (``TLS_SERVER``, ``required``)."""
    numbers = set(names.values())
    if isinstance(value, int) and not isinstance(value, bool) and value in numbers:
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and int(text) in numbers:
            return int(text)
        for name, number in names.items():
            if text.upper() in (name.upper(), name.partition("_")[2].upper()):
                return number
    shown = value.strip() if isinstance(value, str) else repr(value)
    raise ValueError(f"{shown} is not {what} ({choices})")


def ssl_version(value):
    """uvicorn's ``--ssl-version``: an ``ssl.PROTOCOL_*`` number or name a server can use."""
    if str(value).strip() in ("16", "PROTOCOL_TLS_CLIENT", "TLS_CLIENT"):
        raise ValueError(f"{str(value).strip()} is PROTOCOL_TLS_CLIENT, a client's: a server "
                         f"takes 17 (PROTOCOL_TLS_SERVER)")
    return _named_number(value, SSL_VERSIONS, "a server's ssl.PROTOCOL_* version",
                         "2 or 17 negotiate; 3, 4, 5 pin TLS 1.0, 1.1, 1.2; or the "
                         "PROTOCOL_* name")


def cert_reqs(value):
    """``--ssl-cert-reqs``: 0, 1, 2 or ``CERT_NONE``/``optional``/``required``..."""
    return _named_number(value, CERT_REQS, "a client certificate requirement",
                         "0 none, 1 optional, 2 required, or the CERT_* name")


def tls_version(value):
    """A TLS protocol version: ``TLSv1.2``, ``1.2``, ``tls1.3`` (granian's), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower().replace("_", ".")
        text = text[4:] if text.startswith("tlsv") else text[3:] if text.startswith("tls") \
            else text
        if text == "1.0":
            text = "1"
        for version in TLS_VERSIONS:
            if text == version[4:]:
                return version
    raise ValueError(f"{value!r} is not a TLS version ({', '.join(TLS_VERSIONS)})")
