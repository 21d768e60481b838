"""TLS terminated in the workers: `fastfork run --ssl-certfile ... --ssl-keyfile ...`.

The primary passes plain TCP connections; each worker does the handshake with
a context it built from the files as it started.  Driven for real: curl and
Python's ssl against Starlette, Flask and a stream app; client certificates
verified against a CA; an encrypted key; a renewed certificate served after
a rolling reload (SIGHUP), told by its serial; bad files refused in one line
before any fork.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys

import pytest

from fastfork.extras import available
from tests.harness import PY
from tests.runner_harness import APPS, OPS_APP, pids_of
from tests.tls_certs import Certs

WEB = os.path.join(APPS, "web")
RUN = [sys.executable, "-m", "fastfork", "run"]


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path)


def client_context(certs, cert=None):
    context = ssl.create_default_context(cafile=certs.ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def https_get(address, path, context):
    conn = http.client.HTTPSConnection(*address, context=context, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def curl(*args):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install curl)")
    return subprocess.run(["curl", "--silent", "--show-error", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=30)


def served_serial(address, context):
    """The serial number of the certificate a new connection is served."""
    with socket.create_connection(address, timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=address[0]) as tls:
            return int(tls.getpeercert()["serialNumber"], 16)


def tls_args(cert, key):
    return ["--ssl-certfile", cert, "--ssl-keyfile", key]


@pytest.mark.parametrize("app", ["starlette_app.py:app", "flask_app.py:app"])
def test_https_is_served_by_every_worker(runner_factory, certs, app):
    cert, key = certs.server("server", 0x1001)
    runner = runner_factory(os.path.join(WEB, app), "--workers", "2", "--bind", "127.0.0.1:0",
                            *tls_args(cert, key))
    runner.wait_serving(2)
    host, port = address = runner.address()
    out = curl("--cacert", certs.ca, f"https://{host}:{port}/scheme")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["scheme"] == "https"
    context = client_context(certs)
    answers = [https_get(address, "/scheme", context) for _ in range(4)]
    assert {status for status, _ in answers} == {200}
    assert {body["scheme"] for _, body in answers} == {"https"}
    assert len({body["id"] for _, body in answers}) == 2        # both workers, round-robin
    # In the clear, or hung up before a handshake: refused, and not counted open
    # for ever (a drain would wait for them).
    assert curl(f"http://{host}:{port}/scheme").returncode != 0
    for _ in range(3):
        socket.create_connection(address, timeout=10).close()
    runner.wait_status(lambda s: s["totals"]["open"] == 0 and s["totals"]["dispatched"] >= 9,
                       "the failed handshakes closed")
    assert https_get(address, "/scheme", context)[0] == 200


def test_client_certificates_are_verified(runner_factory, certs):
    cert, key = certs.server("server", 0x1001)
    client = certs.client("client", 0x2001)
    runner = runner_factory(os.path.join(WEB, "flask_app.py:app"), "--workers", "2",
                            "--bind", "127.0.0.1:0", *tls_args(cert, key),
                            "--ssl-cert-reqs", "2", "--ssl-ca-certs", certs.ca)
    runner.wait_serving(2)
    host, port = address = runner.address()
    url = f"https://{host}:{port}/scheme"
    assert curl("--cacert", certs.ca, url).returncode != 0
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(address, "/scheme", client_context(certs))
    out = curl("--cacert", certs.ca, "--cert", client[0], "--key", client[1], url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["scheme"] == "https"
    assert https_get(address, "/scheme", client_context(certs, client))[0] == 200


def test_an_encrypted_key_is_read_with_its_password(runner_factory, certs):
    cert, key = certs.server("server", 0x1001, password="open sesame")
    runner = runner_factory(os.path.join(WEB, "starlette_app.py:app"), "--workers", "2",
                            "--bind", "127.0.0.1:0", *tls_args(cert, key),
                            "--ssl-keyfile-password", "open sesame")
    runner.wait_serving(2)
    host, port = runner.address()
    out = curl("--cacert", certs.ca, f"https://{host}:{port}/whoami")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kind"] == "starlette"


def test_a_renewed_certificate_is_served_after_a_reload(runner_factory, certs):
    cert, key = certs.server("server", 0x1001)
    runner = runner_factory(os.path.join(WEB, "starlette_app.py:app"), "--workers", "2",
                            "--bind", "127.0.0.1:0", *tls_args(cert, key))
    before = pids_of(runner.wait_serving(2))
    address = runner.address()
    context = client_context(certs)
    assert {served_serial(address, context) for _ in range(4)} == {0x1001}
    renewed_cert, renewed_key = certs.server("renewed", 0x1002)
    os.replace(renewed_cert, cert)
    os.replace(renewed_key, key)
    # The running workers keep the context they built: only a reload reads the files.
    assert {served_serial(address, context) for _ in range(4)} == {0x1001}
    runner.signal(signal.SIGHUP)
    runner.wait_status(lambda s: len(s["workers"]) == 2 and not pids_of(s) & before
                       and s["primary"]["replacing"] is None and not s["primary"]["queued"]
                       and all(w["state"] == "listening" for w in s["workers"]),
                       "every worker replaced", timeout=30)
    assert {served_serial(address, context) for _ in range(4)} == {0x1002}


@pytest.mark.parametrize("policy", ["rr", "reuseport"])
def test_a_proxy_header_comes_before_the_handshake(runner_factory, certs, policy):
    # HAProxy's send-proxy in front of TLS passthrough: the header in the clear,
    # then the handshake; the app sees HTTPS from the client the header names.
    cert, key = certs.server("server", 0x1001)
    runner = runner_factory(os.path.join(WEB, "starlette_app.py:app"), "--workers", "1",
                            "--bind", "127.0.0.1:0", "--policy", policy, "--proxy-protocol",
                            *tls_args(cert, key))
    runner.wait_serving(1)
    address = runner.address()
    context = client_context(certs)
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 443\r\n")
        with context.wrap_socket(sock, server_hostname=address[0]) as tls:
            tls.sendall(b"GET /client HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while True:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply
    assert json.loads(body) == {"host": "198.51.100.7", "port": 40000}


LOOPS = [("rr", "asyncio"), ("rr", "uvloop"), ("reuseport", "auto")]


@pytest.mark.parametrize("policy, loop", LOOPS, ids=[f"{p}-{lo}" for p, lo in LOOPS])
def test_a_stream_app_is_served_over_tls(runner_factory, certs, policy, loop):
    if loop == "uvloop" and not available("uvloop"):
        pytest.skip("uvloop is not installed")
    cert, key = certs.server("server", 0x1001)
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--policy", policy, "--loop", loop, *tls_args(cert, key))
    runner.wait_serving(2)
    address = runner.address()
    context = client_context(certs)
    with socket.create_connection(address, timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=address[0]) as tls:
            tls.sendall(b"hello over tls\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = tls.recv(4096)
                if not chunk:
                    break
                reply += chunk
    assert reply == b"hello over tls\n"


BAD = [
    (lambda c: ["--ssl-certfile", c.cert, "--ssl-keyfile", c.encrypted],
     "is encrypted: give its password with --ssl-keyfile-password"),
    (lambda c: ["--ssl-certfile", c.cert, "--ssl-keyfile", c.encrypted,
                "--ssl-keyfile-password", "wrong"],
     "cannot decrypt the key in {encrypted}: wrong --ssl-keyfile-password"),
    (lambda c: ["--ssl-certfile", c.cert, "--ssl-keyfile", c.other_key],
     "the key in {other_key} does not match the certificate in {cert}"),
    (lambda c: ["--ssl-certfile", c.missing, "--ssl-keyfile", c.key],
     "cannot read --ssl-certfile {missing}: No such file or directory"),
    (lambda c: ["--ssl-certfile", c.key, "--ssl-keyfile", c.key],
     "--ssl-certfile {key} is not a PEM certificate"),
    (lambda c: ["--ssl-certfile", c.cert, "--ssl-keyfile", c.key, "--ssl-cert-reqs", "2"],
     "argument --ssl-cert-reqs: client certificates are verified against ssl_ca_certs"),
    (lambda c: ["--ssl-keyfile", c.key], "argument --ssl-keyfile: needs ssl_certfile"),
    (lambda c: ["--certfile", c.cert, "--keyfile", c.key, "--ssl-version", "16"],
     "argument --ssl-version: 16 is PROTOCOL_TLS_CLIENT, a client's"),
    (lambda c: ["--ssl-certfile", c.cert, "--ssl-keyfile", c.key, "--ssl-ciphers", "NOPE"],
     "--ssl-ciphers 'NOPE': OpenSSL knows no such cipher"),
    (lambda c: ["--ssl-certfile", c.cert, "--ssl-keyfile", c.key, "--ssl-version", "5",
                "--ssl-min-version", "TLSv1.3"],
     "--ssl-version 5 pins TLSv1.2, below --ssl-min-version TLSv1.3"),
]


class _Files:
    def __init__(self, certs, tmp_path):
        self.cert, self.key = certs.server("server", 0x1001)
        _, self.encrypted = certs.server("locked", 0x1002, password="pw")
        _, self.other_key = certs.server("other", 0x1003)
        self.missing = str(tmp_path / "missing.pem")


@pytest.mark.parametrize("args, expected", BAD, ids=[e.split(":")[0][:40] for _, e in BAD])
def test_bad_tls_input_is_one_line_before_any_fork(certs, tmp_path, args, expected):
    files = _Files(certs, tmp_path)
    out = subprocess.run(RUN + [f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                                "--control-socket", str(tmp_path / "c.sock"), *args(files)],
                         env=PY.env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("fastfork run: error: "), out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert expected.format(**vars(files)) in out.stderr
    assert "forked" not in out.stdout + out.stderr


def test_tls_is_refused_for_an_app_that_serves_itself(certs, tmp_path):
    cert, key = certs.server("server", 0x1001)
    out = subprocess.run(RUN + [f"{OPS_APP}:handle", "--app-type", "main",
                                "--control-socket", str(tmp_path / "c.sock"),
                                *tls_args(cert, key)],
                         env=PY.env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out.stderr
    assert "an app of type main serves its sockets itself" in out.stderr
