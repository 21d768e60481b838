"""Refused PROXY connections are logged rate-limited, with counts (issue 24, fault 4).

The limiter's rules as a table (time given, no clock), then real workers
(asyncio and blocking) refusing 200 connections on loopback: a few lines,
and the counts in them add up to 200 per kind.
"""

import re
import socket

import pytest

from fastfork.worker.proxy_protocol import (BAD_HEADER, UNTRUSTED, WARN_INTERVAL,
                                            WarningLimiter)
from tests.harness import wait_until
from tests.runner_harness import OPS_APP

# (step, now, kind, expected): "hit" -> what hit() returns (None: silent; n:
# log, saying n were not logged); "due" -> [(kind, count)] due() reports;
# "next" -> next_due().
TABLE = {
    "the first of a kind is logged": [("hit", 0.0, "a", 0)],
    "more within the interval are counted": [
        ("hit", 0.0, "a", 0), ("hit", 1.0, "a", None), ("hit", 9.9, "a", None),
        ("next", None, None, 10.0), ("due", 9.99, None, []), ("due", 10.0, None, [("a", 2)]),
        ("next", None, None, None), ("due", 30.0, None, [])],
    "a summary starts a new interval": [
        ("hit", 0.0, "a", 0), ("hit", 1.0, "a", None), ("due", 10.0, None, [("a", 1)]),
        ("hit", 15.0, "a", None), ("due", 20.0, None, [("a", 1)]), ("hit", 30.0, "a", 0)],
    "a late line carries the count itself": [
        ("hit", 0.0, "a", 0), ("hit", 2.0, "a", None), ("hit", 3.0, "a", None),
        ("hit", 12.0, "a", 2), ("due", 30.0, None, [])],
    "kinds are limited apart": [
        ("hit", 0.0, "a", 0), ("hit", 0.5, "b", 0), ("hit", 1.0, "a", None),
        ("hit", 1.0, "b", None), ("hit", 2.0, "b", None), ("next", None, None, 10.0),
        ("due", 10.0, None, [("a", 1)]), ("due", 10.5, None, [("b", 2)])],
    "quiet after the interval: the next is logged at once": [
        ("hit", 0.0, "a", 0), ("hit", 10.0, "a", 0), ("hit", 25.0, "a", 0)],
}


@pytest.mark.parametrize("steps", list(TABLE.values()), ids=list(TABLE))
def test_warning_limiter(steps):
    limiter = WarningLimiter(10.0)
    for step, now, kind, expected in steps:
        if step == "hit":
            assert limiter.hit(kind, now, f"detail at {now}") == expected, (step, now, kind)
        elif step == "due":
            assert [(k, n) for k, n, _, _ in limiter.due(now)] == expected, (step, now)
        else:
            assert limiter.next_due() == expected, step


def test_a_summary_says_how_long_and_the_last_one():
    limiter = WarningLimiter(10.0)
    limiter.hit("a", 0.0, "first")
    limiter.hit("a", 4.0, "second")
    limiter.hit("a", 7.0, "third")
    assert limiter.due(12.5) == [("a", 2, 12.5, "third")]


# -- real workers -----------------------------------------------------------------------
REFUSED = 100          # of each kind


def refused_connection(address, source, data):
    """Connect from ``source`` (a loopback address), send ``data``; the worker
    must close the connection without a reply."""
    with socket.socket() as sock:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(address)
        sock.sendall(data)
        try:
            reply = sock.recv(100)
        except ConnectionResetError:
            reply = b""
    assert reply == b"", reply


def counts(output):
    """``{kind: refusals the log accounts for}`` and the number of PROXY lines."""
    totals = {UNTRUSTED: 0, BAD_HEADER: 0}
    lines = [line for line in output.splitlines() if "PROXY protocol: " in line]
    for line in lines:
        summary = re.search(r"PROXY protocol: (\d+) more connections refused \((.+?)\) since",
                            line)
        if summary:
            totals[summary.group(2)] += int(summary.group(1))
            continue
        kind = UNTRUSTED if line.endswith(UNTRUSTED) or f"{UNTRUSTED} (" in line else BAD_HEADER
        carried = re.search(r" \((\d+) more refused since the last line", line)
        totals[kind] += 1 + (int(carried.group(1)) if carried else 0)
    return totals, len(lines)


def refuse_both_kinds(address, output):
    """REFUSED connections from an untrusted peer (127.0.0.2), REFUSED bad
    headers from a trusted one; returns how many PROXY log lines they made."""
    for _ in range(REFUSED):
        refused_connection(address, "127.0.0.2", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
        refused_connection(address, "127.0.0.1", b"GET / HTTP/1.1\r\n\r\n")
    expected = {UNTRUSTED: REFUSED, BAD_HEADER: REFUSED}
    # The counts of the last interval come when it ends, with no more refusals.
    wait_until(lambda: counts(output())[0] == expected, WARN_INTERVAL + 10,
               f"the log to account for {expected}")
    totals, lines = counts(output())
    assert totals == expected
    return lines


@pytest.mark.slow
def test_an_asyncio_worker_logs_a_few_lines_for_200_refusals(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--proxy-protocol")
    runner.wait_serving(1)
    lines = refuse_both_kinds(runner.address(), runner.output)
    # Per kind: the first line, a summary per interval the burst lasted, the last summary.
    assert 4 <= lines <= 10, runner.output()
    assert runner.status()["workers"][0]["state"] == "listening"


@pytest.mark.slow
def test_a_blocking_worker_logs_a_few_lines_for_200_refusals(cluster_factory):
    cluster = cluster_factory("--workers", "1", "--blocking", "--proxy-protocol")
    address, _ = cluster.wait_listening(1)
    lines = refuse_both_kinds(address, cluster.output)
    assert 4 <= lines <= 10, cluster.output()
