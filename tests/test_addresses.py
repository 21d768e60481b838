"""Addresses: what users write, what the primary binds."""

import errno
import os
import socket

import pytest

from fastfork.addresses import bind_listener, describe, parse_address


@pytest.mark.parametrize("text, expected", [
    (8000, (socket.AF_INET, ("0.0.0.0", 8000))),
    ("127.0.0.1:80", (socket.AF_INET, ("127.0.0.1", 80))),
    (":8080", (socket.AF_INET, ("0.0.0.0", 8080))),
    ("[::1]:9000", (socket.AF_INET6, ("::1", 9000))),
    (("localhost", "81"), (socket.AF_INET, ("localhost", 81))),
    ("unix:/run/app.sock", (socket.AF_UNIX, "/run/app.sock")),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, message", [
    ("8000", "is not HOST:PORT or unix:PATH"),
    ("host:http", "port must be a number"),
    ("127.0.0.1:70000", "port must be in 0..65535"),
    ("unix:", "needs a path"),
    (True, "not an address"),
    (("a", 1, 2), "not an address"),
])
def test_bad_addresses_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_address(text)


def test_describe():
    assert describe(socket.AF_INET6, ("::1", 80, 0, 0)) == "[::1]:80"
    assert describe(socket.AF_UNIX, "/x") == "unix:/x"


def test_address_in_use_names_the_address():
    first = bind_listener(socket.AF_INET, ("127.0.0.1", 0))
    port = first.getsockname()[1]
    try:
        with pytest.raises(OSError) as info:
            bind_listener(socket.AF_INET, ("127.0.0.1", port))
        assert info.value.errno == errno.EADDRINUSE
        assert f"127.0.0.1:{port}" in str(info.value)
    finally:
        first.close()


def test_stale_unix_socket_is_replaced_live_one_is_not(tmp_path):
    path = str(tmp_path / "app.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)            # bound, never listening: what a SIGKILLed primary leaves
    stale.close()
    assert os.path.exists(path)
    live = bind_listener(socket.AF_UNIX, path)
    try:
        with pytest.raises(OSError) as info:
            bind_listener(socket.AF_UNIX, path)
        assert info.value.errno == errno.EADDRINUSE and f"unix:{path}" in str(info.value)
    finally:
        live.close()
    other = tmp_path / "not-a-socket"
    other.write_text("x")
    with pytest.raises(OSError) as info:
        bind_listener(socket.AF_UNIX, str(other))
    assert info.value.errno == errno.EADDRINUSE
    assert other.read_text() == "x"
