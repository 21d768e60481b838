"""Smoke test of ``benchmarks/cpu_per_conn.py``: CI runs this, the real run is a command.

The script runs as a subprocess in its own session, 1-second wrk runs
without warm-up, against real processes on real sockets: the C floor (when
gcc is here), fastfork ``rr`` under asyncio and, when uvloop is installed,
``none`` under uvloop.  Its JSON must hold sane, non-zero figures, and every
process it started must be gone when it returns.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from benchmarks import cpu_per_conn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_GCC = shutil.which("gcc") is not None
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def run_script(*args, timeout=45):
    """Run cpu_per_conn.py; returns ``(returncode, stdout, stderr)``."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FASTFORK_NO_EXTENSIONS", None)
    env.pop("FASTFORK_CHANNELS", None)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cpu_per_conn", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()          # the script stops its servers on SIGTERM
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"cpu_per_conn.py did not finish within {timeout}s:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_cpu_per_conn_smoke(tmp_path):
    """Floor, rr and none rows serve, report sane CPU per request, and leave no process."""
    rows = ["floor", "asyncio-rr"] + (["uvloop-none"] if HAS_UVLOOP else [])
    out_json = tmp_path / "cpu.json"
    code, out, err = run_script("--seconds", "1", "--warmup", "0", "--rows", ",".join(rows),
                                "--modes", "close,keepalive", "--json", str(out_json))
    assert code == 0, err[-3000:]
    with open(out_json) as f:
        results = json.load(f)
    by_key = {row["key"]: row for row in results["rows"]}
    assert list(by_key) == rows
    if not HAS_GCC:
        assert by_key["floor"]["skipped"] == "gcc is not on the PATH"
    for key, row in by_key.items():
        if "skipped" in row:
            continue
        assert "errors" not in row, (key, row["errors"])
        for mode in ("close", "keepalive"):
            m = row["modes"][mode]["median"]
            assert m["requests"] > 0 and m["rps"] > 0 and m["errors"] == 0, (key, mode, m)
            # The workers answered every request: they spent CPU, but not absurdly much.
            assert 0 < m["workers_us"] < 10_000, (key, mode, m)
            assert 0 <= m["primary_us"] < 10_000, (key, mode, m)
            assert m["total_us"] == pytest.approx(m["primary_us"] + m["workers_us"])
        close = row["modes"]["close"]["median"]
        if row["policy"] == "rr":
            # The primary accepts and passes every connection: it must show CPU.
            assert close["primary_us"] > 0, (key, close)
    # The ratios issue 11 targets are computed from the rows that ran.
    names = {(r["name"], r["loop"]) for r in results["ratios"]}
    assert ("primary user µs/conn (rr)", "asyncio") in names
    if HAS_GCC:
        assert ("primary total CPU/conn, rr ÷ C floor", "asyncio") in names
    # Every process the run started (primaries and workers) is gone.
    expected = 1 + 2 if HAS_GCC else 0                   # the floor and its 2 workers
    expected += 3 * (len(rows) - 1)                       # each cluster: a primary, 2 workers
    assert len(results["pids"]) == expected, results["pids"]
    left = [pid for pid, start in results["pids"].items()
            if cpu_per_conn.alive(int(pid), start)]
    assert not left, f"processes left behind: {left}"
    # The Markdown report names every row and the targets.
    for row in results["rows"]:
        assert f"| {row['label']} |" in out
    assert "## Issue 11's targets" in out


def test_cpu_per_conn_rejects_bad_arguments():
    """A wrong row name is refused with a one-line error naming it, before anything starts."""
    code, _, err = run_script("--rows", "floor,nginx", timeout=20)
    assert code == 2
    assert "unknown row 'nginx'" in err.strip().splitlines()[-1]


@pytest.mark.skipif(not HAS_GCC, reason="gcc is not installed")
def test_floor_compiles_cleanly(tmp_path):
    """csrc/floor.c builds with -Wall -Wextra and no warning, and refuses bad arguments."""
    path = tmp_path / "floor"
    out = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(path),
                          cpu_per_conn.FLOOR_SRC], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    bad = subprocess.run([str(path), "80", "0"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "WORKERS" in bad.stderr
