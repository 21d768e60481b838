"""The PROXY protocol: the parser as tables, then real workers behind a fake balancer.

(HAProxy itself sends these headers in tests/test_load_balancer.py.)
"""

import socket
import struct

import pytest

from fastfork.addresses import parse_networks
from fastfork.worker.proxy_protocol import (V2_SIGNATURE, HeaderParser, ProxyHeaderError,
                                            allowed)
from tests.harness import wait_until
from tests.runner_harness import OPS_APP


def v2(command=1, family=0x11, addresses=b"", tlvs=b""):
    body = addresses + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def v2_inet(src, sport, dst="10.0.0.1", dport=443):
    return v2(addresses=socket.inet_aton(src) + socket.inet_aton(dst)
              + struct.pack("!HH", sport, dport))


def v2_inet6(src, sport):
    return v2(family=0x21, addresses=socket.inet_pton(socket.AF_INET6, src)
              + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", sport, 80))


VALID = {
    "v1 tcp4": (b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n", ("203.0.113.7", 51000)),
    "v1 tcp6": (b"PROXY TCP6 2001:db8::7 ::1 51000 443\r\n", ("2001:db8::7", 51000)),
    "v1 unknown": (b"PROXY UNKNOWN\r\n", None),
    "v1 unknown with junk": (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None),
    "v2 inet": (v2_inet("198.51.100.9", 40000), ("198.51.100.9", 40000)),
    "v2 inet with tlvs": (v2(addresses=socket.inet_aton("198.51.100.9")
                             + socket.inet_aton("1.1.1.1") + struct.pack("!HH", 1234, 80),
                             tlvs=b"\x04\x00\x02ok"),
                          ("198.51.100.9", 1234)),
    "v2 inet6": (v2_inet6("2001:db8::9", 40001), ("2001:db8::9", 40001)),
    "v2 local (a health check)": (v2(command=0, family=0x00), None),
    "v2 unspec": (v2(family=0x00), None),
}

INVALID = {
    "not a header": (b"GET / HTTP/1.1\r\n", "not a PROXY header"),
    "v1 bad family": (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "is not 'PROXY TCP4|TCP6"),
    "v1 bad address": (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad address or port"),
    "v1 family mismatch": (b"PROXY TCP4 ::1 ::1 1 2\r\n", "bad address or port"),
    "v1 bad port": (b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n", "bad address or port"),
    "v1 lf only": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "does not end in CRLF"),
    "v1 too long": (b"PROXY " + b"x" * 120, "longer than 107"),
    "v2 version 1": (V2_SIGNATURE + b"\x11\x11\x00\x00", "of version 1"),
    "v2 bad command": (v2(command=5), "neither LOCAL nor PROXY"),
    "v2 short addresses": (v2(addresses=b"\x01\x02"), "too short for its addresses"),
    "v2 bad signature": (b"\r\n\r\n\x00\rXXXXXX\x21\x11\x00\x00", "bad v2 signature"),
}


def parse(data, chunk):
    """Drive the parser as the readers do: consume only what it wants."""
    parser, offset = HeaderParser(), 0
    while not parser.done:
        peeked = data[offset:offset + chunk]
        n = parser.want(peeked) if parser.version == 1 else min(parser.want(peeked), chunk)
        parser.feed(data[offset:offset + n])
        offset += n
    return parser, offset


@pytest.mark.parametrize("chunk", [1, 7, 4096], ids=["byte-by-byte", "7-bytes", "at-once"])
@pytest.mark.parametrize("header, source", list(VALID.values()), ids=list(VALID))
def test_valid_headers(header, source, chunk):
    parser, consumed = parse(header + b"GET / HTTP/1.1\r\n\r\n", chunk)
    assert parser.source == source
    assert consumed == len(header), "read past the header"


@pytest.mark.parametrize("header, error", list(INVALID.values()), ids=list(INVALID))
def test_invalid_headers(header, error):
    with pytest.raises(ProxyHeaderError, match=error):
        parse(header, 4096)


@pytest.mark.parametrize("peer, networks, expected", [
    (("127.0.0.1", 5), ["127.0.0.1", "::1"], True),
    (("127.0.0.2", 5), ["127.0.0.1"], False),
    (("10.1.2.3", 5), ["10.0.0.0/8"], True),
    (("::ffff:10.1.2.3", 5, 0, 0), ["10.0.0.0/8"], True),
    (("2001:db8::1", 5, 0, 0), ["*"], True),
    ("/run/app.sock", ["10.0.0.0/8"], True),
])
def test_who_may_send_a_header(peer, networks, expected):
    assert allowed(peer, parse_networks(networks)) is expected


def test_bad_networks_are_named():
    with pytest.raises(ValueError, match="'10.0.0.0/33' is not an IP address or network"):
        parse_networks(["10.0.0.0/33"])


# -- real workers ----------------------------------------------------------------------------
def ask(address, data):
    """The reply line, or "" when the worker closed the connection without one
    (closing with unread bytes, as a refusal does, resets it)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while not reply.endswith(b"\n"):
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                return ""
            if not chunk:
                break
            reply += chunk
    return reply.decode().strip()


@pytest.mark.parametrize("policy", ["rr", "none"])
def test_the_app_sees_the_client_the_header_names(runner_factory, impl, policy):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--policy", policy, "--proxy-protocol", impl=impl)
    runner.wait_serving(2)
    address = runner.address()
    # Header and request in one write, as a balancer sends them.
    assert ask(address, b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\npeer\n") == \
        "203.0.113.7 51000"
    assert ask(address, v2_inet6("2001:db8::9", 40001) + b"peer\n") == "2001:db8::9 40001"
    local = ask(address, v2(command=0, family=0x00) + b"peer\n").split()
    assert local[0] == "127.0.0.1"                    # LOCAL: the real peer
    # A bad header closes that connection, with a log line, and nothing else.
    assert ask(address, b"GET / HTTP/1.1\r\n\r\n") == ""
    wait_until(lambda: "PROXY protocol: closing the connection from 127.0.0.1" in
               runner.output(), 10, "the log line")
    assert ask(address, b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\r\npeer\n") == "192.0.2.1 1"


def test_an_untrusted_peer_is_closed(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--proxy-protocol", "--proxy-allow-from", "10.0.0.0/8")
    runner.wait_serving(1)
    address = runner.address()
    assert ask(address, b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\npeer\n") == ""
    wait_until(lambda: "not in --proxy-allow-from" in runner.output(), 10, "the log line")
    status = runner.status()
    assert len(status["workers"]) == 1 and status["workers"][0]["state"] == "listening"


def test_a_blocking_worker_reads_the_header_in_accept(cluster_factory):
    cluster = cluster_factory("--workers", "1", "--blocking", "--proxy-protocol")
    address, _ = cluster.wait_listening(1)
    assert ask(address, b"PROXY TCP4 198.51.100.4 10.0.0.1 4242 80\r\npeer\n") == \
        "198.51.100.4 4242"
    assert ask(address, b"junk\r\n") == ""                  # refused; accept() goes on
    assert ask(address, v2_inet("198.51.100.5", 4343) + b"peer\n") == "198.51.100.5 4343"


def test_bad_allow_from_is_refused_before_forking(tmp_path):
    import subprocess
    import sys
    from tests.harness import PY
    out = subprocess.run([sys.executable, "-m", "fastfork", "run", f"{OPS_APP}:handle",
                          "--proxy-protocol", "--proxy-allow-from", "10.0.0.0/99",
                          "--control-socket", str(tmp_path / "c.sock")],
                         env=PY.env(), capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert out.stderr.strip() == ("fastfork run: error: argument --proxy-allow-from: "
                                  "'10.0.0.0/99' is not an IP address or network "
                                  "(like 10.0.0.0/8), nor '*'")
