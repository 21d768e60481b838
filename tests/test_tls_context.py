"""fastfork.tls: the context a worker serves TLS with, shaken hands with in memory.

The command line's side (files refused in one line, real clusters) is
tests/cli/test_tls.py; here the context itself: which protocol versions it
takes, what --ssl-version pins, client certificates, the password.
"""

import ssl

import pytest

from fastfork import tls
from fastfork.cli import run
from tests.tls_certs import Certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def server(certs):
    return certs.server("server", 0x1001)


def handshake(server_context, client_context):
    """Shake hands in memory; the version agreed, or the SSLError either side raised."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server_context.wrap_bio(to_server, to_client, server_side=True)
    client_side = client_context.wrap_bio(to_client, to_server, server_hostname="localhost")
    done = {"server": False, "client": False}
    for _ in range(20):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            # TLS 1.3: a refused client certificate is said after the client's
            # handshake ends; a read shows it.
            try:
                server_side.read()
            except ssl.SSLWantReadError:
                pass
            client_side.write(b"x")
            server_side.read()
            return client_side.version()
    raise AssertionError("the handshake did not end")


def client(certs, maximum=None, cert=None):
    context = ssl.create_default_context(cafile=certs.ca)
    if maximum is not None:
        context.maximum_version = maximum
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def test_tls_1_2_is_the_default_minimum_and_1_3_is_taken(certs, server):
    context = tls.server_context(*server)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert handshake(context, client(certs)) == "TLSv1.3"
    assert handshake(context, client(certs, ssl.TLSVersion.TLSv1_2)) == "TLSv1.2"


def test_a_minimum_version_refuses_older_clients(certs, server):
    context = tls.server_context(*server, min_version="TLSv1.3")
    with pytest.raises(ssl.SSLError):
        handshake(context, client(certs, ssl.TLSVersion.TLSv1_2))
    assert handshake(context, client(certs)) == "TLSv1.3"


def test_ssl_version_5_pins_tls_1_2_as_uvicorn_means_it(certs, server):
    context = tls.server_context(*server, version=5)
    assert handshake(context, client(certs)) == "TLSv1.2"


def test_client_certificates_when_required(certs, server):
    context = tls.server_context(*server, cert_reqs=ssl.CERT_REQUIRED, ca_certs=certs.ca)
    with pytest.raises(ssl.SSLError):
        handshake(context, client(certs))
    assert handshake(context, client(certs, cert=certs.client("client", 0x2001))) == "TLSv1.3"


def test_an_encrypted_key_is_never_asked_for_on_the_terminal(certs):
    cert, key = certs.server("locked", 0x1002, password="pw")
    with pytest.raises(tls.TLSError, match="is encrypted: give its password"):
        tls.server_context(cert, key)
    assert handshake(tls.server_context(cert, key, password="pw"), client(certs)) == "TLSv1.3"


def test_the_settings_build_the_context_or_none(certs, server):
    settings = run.parse(["x:app", "--ssl-certfile", server[0], "--ssl-keyfile", server[1],
                          "--ssl-min-version", "tls1.3", "--ssl-cert-reqs", "optional",
                          "--ssl-ca-certs", certs.ca])
    context = tls.from_settings(settings)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert tls.from_settings(run.parse(["x:app"])) is None


def test_print_config_hides_the_key_password(capsys, server):
    assert run.main(["x:app", "--ssl-certfile", server[0], "--ssl-keyfile-password", "hunter2",
                     "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "ssl_keyfile_password         = '(hidden)'" in out
