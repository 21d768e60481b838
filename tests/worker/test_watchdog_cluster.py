"""The watchdog in a real worker: a request that blocks the worker's event
loop is logged with the file and line it is blocked at, once, on both builds
(the C ``StallClock`` and its pure-Python twin)."""

import os

from tests.harness import ROOT, ClusterProcess, wait_until
from tests.web_harness import (WEB_CLUSTER, get_json, need_engine, need_framework,
                               need_web_extra, raw_request, read_response)

need_web_extra()

COMMON = os.path.join(ROOT, "tests", "apps", "web", "common.py")


def blocking_line():
    with open(COMMON) as source:
        for number, text in enumerate(source, 1):
            if "deliberately blocks the loop" in text:
                return number
    raise AssertionError("tests/apps/web/common.py lost its blocking line")


def test_a_blocked_loop_is_logged_where_it_is_blocked(impl):
    need_framework("starlette")
    if impl.pure:
        http = "httptools"          # the engine needs the extensions
    else:
        need_engine()
        http = "engine"
    cluster = ClusterProcess(["--app", "starlette", "--workers", "1", "--http", http],
                             impl=impl, script=WEB_CLUSTER)
    try:
        address, _ = cluster.wait_listening(1)
        worker = get_json(address, "/whoami")["id"]
        blocker = raw_request(address, "/block?s=0.6")     # stall_log_ms is 100
        try:
            cluster.wait_event("message")                   # the loop is blocked now
            head, _ = read_response(blocker)     # the loop ran the request to its end
            assert head.startswith("HTTP/1.1 200 "), head
        finally:
            blocker.close()
        wait_until(lambda: watchdog_lines(cluster), 10, "the watchdog's line")
        (line,) = watchdog_lines(cluster)
        assert f"{COMMON}:{blocking_line()} in block" in line, cluster.output()
        assert f"worker {worker}: event loop blocked for " in line, line
        # The loop runs again: the next request is answered, and the stall
        # was logged once (one line per stalled tick).
        assert get_json(address, "/whoami")["id"] == worker
        assert len(watchdog_lines(cluster)) == 1, cluster.output()
    finally:
        cluster.close()


def watchdog_lines(cluster):
    return [line for line in list(cluster.lines) if "event loop blocked for" in line]
