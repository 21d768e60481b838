"""The client a PROXY header names reaches every app, through every way a server
or an app asks for it (issue 24, fault 3).

uvicorn asks the transport's socket (``get_extra_info("socket").getpeername()``)
before ``peername``; ASGI apps read ``scope["client"]``, WSGI apps
``REMOTE_ADDR``/``REMOTE_PORT``, and uvicorn's access log names the client.
Real `fastfork run --proxy-protocol` clusters, real Starlette and Flask apps,
real PROXY v1 and v2 headers on loopback.
"""

import json
import os
import socket
import struct

import pytest

from fastfork.worker.proxy_protocol import V2_SIGNATURE
from tests.harness import wait_until
from tests.runner_harness import APPS, OPS_APP

WEB = os.path.join(APPS, "web")


def v1(host, port):
    family = "TCP6" if ":" in host else "TCP4"
    dst = "::1" if ":" in host else "10.0.0.1"
    return f"PROXY {family} {host} {dst} {port} 80\r\n".encode()


def v2(host, port):
    """A v2 PROXY (not LOCAL) header over TCP, IPv4 or IPv6."""
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    dst = "::1" if af == socket.AF_INET6 else "10.0.0.1"
    body = (socket.inet_pton(af, host) + socket.inet_pton(af, dst)
            + struct.pack("!HH", port, 80))
    family = 0x21 if af == socket.AF_INET6 else 0x11
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


HEADERS = {"v1": v1, "v2": v2}
CLIENTS = [("203.0.113.7", 51000), ("2001:db8::9", 40001)]


def exchange(address, data):
    """Send ``data`` on a fresh connection; everything the server sent back."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def http_get_behind_proxy(address, header, path):
    reply = exchange(address, header + f"GET {path} HTTP/1.1\r\nHost: test\r\n"
                                       f"Connection: close\r\n\r\n".encode())
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), reply[:300]
    return json.loads(body)


@pytest.mark.parametrize("app", ["starlette_app.py:app", "flask_app.py:app"],
                         ids=["asgi-starlette", "wsgi-flask"])
def test_web_apps_and_the_access_log_see_the_headers_client(runner_factory, app):
    runner = runner_factory(os.path.join(WEB, app), "--workers", "1", "--bind",
                            "127.0.0.1:0", "--proxy-protocol")
    runner.wait_serving(1)
    address = runner.address()
    for version, make in HEADERS.items():
        for host, port in CLIENTS:
            seen = http_get_behind_proxy(address, make(host, port), "/client")
            assert seen == {"host": host, "port": port}, (version, seen)
            line = f'{host}:{port} - "GET /client HTTP/1.1" 200'
            wait_until(lambda: line in runner.output(), 10, f"the access log line {line!r}")
    # Without a client in the header (v2 LOCAL, a balancer's health check),
    # the app sees the real peer.
    local = V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, 0)
    assert http_get_behind_proxy(address, local, "/client")["host"] == "127.0.0.1"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_transport_and_its_socket_both_name_the_client(runner_factory, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed")
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--proxy-protocol", "--loop", loop)
    runner.wait_serving(1)
    address = runner.address()
    for make in HEADERS.values():
        for host, port in CLIENTS:
            for ask in (b"peer\n", b"sockpeer\n"):          # peername; socket.getpeername()
                assert exchange(address, make(host, port) + ask).decode().strip() == \
                    f"{host} {port}", ask
