"""`fastfork run --log-format json`: every line is one JSON object naming its worker.

Through a real `fastfork run` of the Starlette app: the primary's lines,
uvicorn's (its access lines too) and --access-logformat's, all parsed.
"""

import json
import os
import signal

import pytest

from tests.harness import http_get, wait_until
from tests.runner_harness import APPS

pytest.importorskip("uvicorn", reason="the web extra is not installed")
pytest.importorskip("starlette", reason="the webtest extra is not installed")
STARLETTE = os.path.join(APPS, "web", "starlette_app.py")
FIELDS = {"time", "level", "logger", "message", "pid", "worker", "worker_id", "role"}


@pytest.mark.parametrize("access", [[], ["--access-logformat", "%(r)s %(s)s"]],
                         ids=["uvicorn-access", "access-logformat"])
def test_every_line_is_json_and_names_its_worker(runner_factory, access):
    runner = runner_factory(f"{STARLETTE}:app", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--log-format", "json", *access)
    status = runner.wait_serving(2)
    index_of = {w["pid"]: w["index"] for w in status["workers"]}
    address = runner.address()
    answered = {}                           # request number -> the index the app answered
    for n in range(4):                      # a new connection each: both workers answer
        code, body = http_get(address, f"/whoami?n={n}")
        assert code == 200
        answered[n] = json.loads(body)["index"]
    assert set(answered.values()) == {0, 1}

    def access_lines():
        lines = [line for line in runner.proc.lines if "/whoami?n=" in line]
        return lines if len(lines) == len(answered) else None
    wait_until(access_lines, 15, "an access line per request")
    runner.signal(signal.SIGTERM)
    assert runner.proc.wait_exit(30) == 0
    runner.proc._reader.join(5)

    entries = [json.loads(line) for line in runner.proc.lines]     # every line parses
    assert entries and all(FIELDS <= set(entry) for entry in entries)
    for entry in entries:
        if entry["pid"] == runner.pid:
            assert (entry["role"], entry["worker"], entry["worker_id"]) == ("primary", None, None)
        else:
            assert entry["role"] == "worker" and entry["worker"] == index_of[entry["pid"]]
    assert any(e["pid"] == runner.pid and "(asgi) on 127.0.0.1:" in e["message"]
               for e in entries)
    logger = "fastfork.access" if access else "uvicorn.access"
    for n, index in answered.items():
        (line,) = [e for e in entries if f"/whoami?n={n} " in e["message"]]
        assert line["logger"] == logger and line["worker"] == index
        if access:                          # the message is the formatted line itself
            assert line["message"] == f"GET /whoami?n={n} HTTP/1.1 200"
