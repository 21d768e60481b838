"""Smoke tests of ``benchmarks/compare.py``: CI runs these, the real run is a command.

Each runs the script as a subprocess in its own session with tiny durations
and checks its JSON: every configuration ran, served requests without
errors, and the stall really blocked a worker.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from benchmarks import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_compare(out_dir, *args, timeout=50):
    """Run compare.py; returns ``(returncode, stderr, results or None)``."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FASTFORK_NO_EXTENSIONS", None)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.compare", *args,
                             "--out", str(out_dir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()          # compare.py kills its servers on SIGTERM
        _, err = proc.communicate(timeout=15)
        raise AssertionError(f"compare.py did not finish within {timeout}s:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    path = os.path.join(out_dir, "results.json")
    results = None
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    return proc.returncode, err, results


@pytest.mark.slow
def test_compare_smoke(tmp_path):
    """Every configuration and workload runs briefly and serves requests (the CI smoke run)."""
    code, err, results = run_compare(
        tmp_path, "--duration", "0.3", "--stall", "0.2", "--repeat", "1",
        "--client", "builtin", "--connections", "8", "--stall-rate", "200",
        "--sweep-duration", "0.2", "--sweep-windows", "8")
    assert code == 0, err[-3000:]
    rows = {row["key"]: row for row in results["rows"]}
    assert set(rows) == set(compare.ROW_KEYS)
    has_node = shutil.which("node") is not None
    for key, row in rows.items():
        if key.startswith("node-") and not has_node:
            assert row["skipped"] == "node is not on the PATH"
            continue
        assert "skipped" not in row and "errors" not in row, (key, row)
        for workload in compare.WORKLOADS:
            median = row["workloads"][workload]["median"]
            assert median["requests"] > 0 and median["errors"] == 0, (key, workload, median)
            assert median["connections"] > 0, (key, workload, median)
            if key != "single":
                assert "primary_cpu_pct" in median and "fairness" in median, (key, median)
        stall = row["workloads"]["stall"]["runs"][0]
        # The stall request really held a worker's loop for the whole stall.
        assert stall["stall_request_s"] >= 0.2, (key, stall)
    # Round-robin rows measure the primary's CPU per dispatched connection.
    close = rows["fastfork-rr-py"]["workloads"]["close"]["median"]
    assert "primary_user_us_per_conn" in close and "primary_sys_us_per_conn" in close
    assert {(p["impl"], p["window"]) for p in results["sweep"]} == {("c", 8), ("py", 8)}
    assert all(p["connections"] > 0 for p in results["sweep"])
    with open(tmp_path / "results.md") as f:
        markdown = f.read()
    for row in compare.ROWS:
        assert f"| {row.label} |" in markdown


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_compare_with_wrk(tmp_path):
    """The wrk path: one configuration, its report parsed into requests and latencies."""
    code, err, results = run_compare(
        tmp_path, "--rows", "fastfork-rr-c", "--workloads", "close,keepalive",
        "--duration", "1", "--repeat", "1", "--client", "wrk", "--connections", "8",
        "--sweep-duration", "0")
    assert code == 0, err[-3000:]
    assert results["machine"]["client"] == "wrk"
    (row,) = results["rows"]
    for workload in ("close", "keepalive"):
        median = row["workloads"][workload]["median"]
        assert median["requests"] > 0 and median["errors"] == 0, (workload, median)
        assert 0 < median["p50_ms"] <= median["p99_ms"], median
    # Connection: close means one connection per request, counted by the workers.
    close = row["workloads"]["close"]["median"]
    assert close["connections"] >= close["requests"]


def test_compare_rejects_bad_arguments(tmp_path):
    """A wrong row name is refused with a one-line error naming it, before anything starts."""
    code, err, results = run_compare(tmp_path, "--rows", "fastfork-rr-c,apache", timeout=20)
    assert code == 2 and results is None
    assert "unknown row 'apache'" in err.strip().splitlines()[-1]
