"""TLS terminated in the workers: the ``ssl.SSLContext`` each one serves with.

The primary passes plain TCP connections; each worker builds its own context
from the settings (``from_settings``) when it starts, reading the certificate
and key files then, so that a rolling reload (SIGHUP) serves renewed files.
``fastfork run`` builds one in the primary too, before any fork, only to
check the files and the password: anything wrong is one ``TLSError`` line
naming the file and what is wrong with it, never OpenSSL's "PEM lib".

The options are uvicorn's (``--ssl-certfile``, ``--ssl-keyfile``,
``--ssl-keyfile-password``, ``--ssl-version``, ``--ssl-cert-reqs``,
``--ssl-ca-certs``, ``--ssl-ciphers``) with the same meaning, and a minimum
protocol version (default TLS 1.2).  An encrypted key is never asked for on
the terminal: without a password it is an error.
"""

import ssl
import warnings
from typing import Any, Optional

# uvicorn's and gunicorn's --ssl-version numbers (ssl.PROTOCOL_*) -> the one
# protocol version such a number pins, on a PROTOCOL_TLS_SERVER context (the
# PROTOCOL_TLSv1* contexts themselves are deprecated); 2 (PROTOCOL_TLS) and 17
# (PROTOCOL_TLS_SERVER) negotiate, from the minimum version up.
PINNED = {3: "TLSv1", 4: "TLSv1.1", 5: "TLSv1.2"}
DEFAULT_MIN_VERSION = "TLSv1.2"


class TLSError(ValueError):
    """A certificate, key, password or TLS option that cannot be served; one line."""


def _version(name: str) -> ssl.TLSVersion:
    return ssl.TLSVersion[name.replace(".", "_")]


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSError(f"cannot read {option} {path}: {exc.strerror}") from None


def server_context(certfile: str, keyfile: Optional[str] = None,
                   password: Optional[str] = None, version: int = ssl.PROTOCOL_TLS_SERVER,
                   cert_reqs: int = ssl.CERT_NONE, ca_certs: Optional[str] = None,
                   ciphers: Optional[str] = None,
                   min_version: Optional[str] = None) -> ssl.SSLContext:
    """A server-side context, as uvicorn's ``create_ssl_context`` builds one, checked:
    raises ``TLSError`` saying which file or option is wrong and how."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pinned = PINNED.get(version)
    with warnings.catch_warnings():
        # TLS 1.0 and 1.1 are deprecated; whoever names them asked for them.
        warnings.simplefilter("ignore", DeprecationWarning)
        if pinned is not None:
            if min_version is not None and _version(min_version) > _version(pinned):
                raise TLSError(f"--ssl-version {version} pins {pinned}, below --ssl-min-version "
                               f"{min_version}")
            context.minimum_version = context.maximum_version = _version(pinned)
        else:
            context.minimum_version = _version(min_version or DEFAULT_MIN_VERSION)
    cert = _read(certfile, "--ssl-certfile")
    if b"-----BEGIN CERTIFICATE-----" not in cert:
        raise TLSError(f"--ssl-certfile {certfile} is not a PEM certificate "
                       f"(no BEGIN CERTIFICATE line)")
    key_path, key_option = (keyfile, "--ssl-keyfile") if keyfile else (certfile, "--ssl-certfile")
    key = _read(keyfile, "--ssl-keyfile") if keyfile else cert
    if b"PRIVATE KEY-----" not in key:
        raise TLSError(f"{key_option} {key_path} holds no PEM private key"
                       + ("" if keyfile else ": give it with --ssl-keyfile"))
    encrypted = b"ENCRYPTED" in key
    if encrypted and not password:
        raise TLSError(f"the key in {key_path} is encrypted: give its password with "
                       f"--ssl-keyfile-password")

    def give_password() -> str:
        # Never None: OpenSSL would then ask on the terminal, in every worker.
        return password or ""

    try:
        context.load_cert_chain(certfile, keyfile, give_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSError(f"the key in {key_path} does not match the certificate in "
                           f"{certfile}") from None
        if encrypted:
            raise TLSError(f"cannot decrypt the key in {key_path}: wrong "
                           f"--ssl-keyfile-password") from None
        raise TLSError(f"cannot load the certificate {certfile} with the key in {key_path}: "
                       f"{exc.reason or exc}") from None
    except OSError as exc:          # the file went away between the read and the load
        raise TLSError(f"cannot read {certfile} or {key_path}: {exc.strerror}") from None
    context.verify_mode = ssl.VerifyMode(cert_reqs)
    if ca_certs:
        _read(ca_certs, "--ssl-ca-certs")
        try:
            context.load_verify_locations(ca_certs)
        except ssl.SSLError as exc:
            why = (exc.reason or str(exc)).replace("_", " ").lower()
            raise TLSError(f"--ssl-ca-certs {ca_certs}: {why}") from None
    if ciphers:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError:
            raise TLSError(f"--ssl-ciphers {ciphers!r}: OpenSSL knows no such cipher") from None
    return context


def from_settings(settings: Any) -> Optional[ssl.SSLContext]:
    """The context ``settings`` (a ``fastfork.Settings``) ask for, or None without
    ``ssl_certfile``; raises ``TLSError``."""
    if not settings.ssl_certfile:
        return None
    return server_context(settings.ssl_certfile, settings.ssl_keyfile,
                          settings.ssl_keyfile_password, settings.ssl_version,
                          settings.ssl_cert_reqs, settings.ssl_ca_certs, settings.ssl_ciphers,
                          settings.ssl_min_version)
