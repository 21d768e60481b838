"""Metrics, health and the shutdown delay of a real `fastfork run` primary.

Scraped with a real HTTP client and parsed with prometheus_client's own
parser; the numbers are checked against what the test itself sent and did.
"""

import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.harness import PY, http_get, request, session_pids, wait_until
from tests.runner_harness import APPS, OPS_APP

parser = pytest.importorskip("prometheus_client.parser",
                             reason="the metrics extra is not installed")

RUN = [sys.executable, "-m", "fastfork", "run"]



def scrape(address):
    status, body = http_get(address, "/metrics")
    assert status == 200, body
    samples = {}
    for family in parser.text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))


def endpoint_of(runner):
    status = runner.wait_status(lambda s: s["primary"]["endpoints"], "the endpoint")
    return status["primary"]["endpoints"][0]


def test_metrics_count_what_happened(runner_factory, impl):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--metrics", "127.0.0.1:0", impl=impl)
    runner.wait_serving(2)
    metrics = endpoint_of(runner)
    address = runner.address()
    before = scrape(metrics)
    assert value(before, "fastfork_workers") == 2
    assert value(before, "fastfork_workers_wanted") == 2
    assert value(before, "fastfork_ready") == 1
    for _ in range(20):
        assert request(address, "hello") == "hello"
    after = scrape(metrics)
    sent = 20
    assert value(after, "fastfork_connections_accepted_total") - \
        value(before, "fastfork_connections_accepted_total") == sent
    # Round-robin: each worker got half, and the histogram saw every connection.
    per_worker = [value(after, "fastfork_worker_connections_total", index=i) -
                  value(before, "fastfork_worker_connections_total", index=i) for i in (0, 1)]
    assert per_worker == [sent // 2, sent // 2]
    assert value(after, "fastfork_dispatch_batch_size_sum") == \
        value(after, "fastfork_connections_dispatched_total")
    assert value(after, "fastfork_dispatch_batch_size_count") >= 1
    assert value(after, "fastfork_worker_rss_bytes", index=0) > 1 << 20

    # A worker killed: one crash restart at its index, the replacement serves.
    victim = next(w for w in runner.status()["workers"] if w["index"] == 1)
    os.kill(victim["pid"], signal.SIGKILL)
    runner.wait_status(lambda s: len(s["workers"]) == 2 and victim["pid"] not in
                       {w["pid"] for w in s["workers"]} and
                       all(w["state"] == "listening" for w in s["workers"]), "the replacement")
    final = scrape(metrics)
    assert value(final, "fastfork_worker_restarts_total", index=1, cause="crash") == 1
    assert value(final, "fastfork_worker_restarts_total", index=0, cause="crash") is None


def test_health_paths_and_errors(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--health", "127.0.0.1:0")
    runner.wait_serving(1)
    health = endpoint_of(runner)
    assert http_get(health, "/livez") == (200, "ok\n")
    status, body = http_get(health, "/readyz")
    assert (status, body) == (200, "ready: 1 of 1 workers serving\n")
    assert http_get(health, "/readyz", "HEAD") == (200, "")
    assert http_get(health, "/metrics")[0] == 404        # --health alone: no metrics
    assert http_get(health, "/readyz", "POST")[0] == 405
    host, _, port = health.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"nonsense\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")


def test_shutdown_delay_answers_503_and_keeps_serving(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--health", "127.0.0.1:0", "--shutdown-delay", "3")
    runner.wait_serving(2)
    health, address = endpoint_of(runner), runner.address()
    runner.signal(signal.SIGTERM)
    wait_until(lambda: http_get(health, "/readyz")[0] == 503, 10, "readiness to fail")
    status, body = http_get(health, "/readyz")
    assert body.startswith("stopping: SIGTERM received, draining in "), body
    # Not ready, yet still serving: the load balancer has time to notice.
    for _ in range(5):
        assert request(address, "still here") == "still here"
    assert runner.proc.wait_exit(20) == 0
    assert "after a 3s shutdown delay" in runner.output()


def run_cli(args, env=None, cwd=APPS):
    return subprocess.run(RUN + list(args), cwd=cwd, env=env or PY.env(), capture_output=True,
                          text=True, timeout=30)


def test_a_metrics_port_in_use_exits_2_and_leaves_nothing(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    control = str(tmp_path / "ctl.sock")
    try:
        out = run_cli(["ops_app:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                       "--metrics", f"127.0.0.1:{port}", "--control-socket", control])
    finally:
        taken.close()
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"fastfork run: error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert not os.path.exists(control), "the control socket was left behind"


def test_missing_prometheus_client_names_the_extra(tmp_path):
    # A prometheus_client that cannot be imported, as where the extra is missing.
    fake = tmp_path / "prometheus_client"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    env = PY.env({"PYTHONPATH": f"{tmp_path}{os.pathsep}{PY.env()['PYTHONPATH']}"})
    out = run_cli(["ops_app:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                   "--metrics", "127.0.0.1:0", "--control-socket", str(tmp_path / "c.sock")],
                  env=env)
    assert out.returncode == 2, out
    assert "pip install 'fastfork[metrics]'" in out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert session_pids(os.getpid())[1] == []       # no zombie of ours either
