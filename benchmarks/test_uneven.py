"""Smoke test of ``benchmarks/uneven.py``: CI runs this, the real run is a command.

Runs the script briefly with a high share of stalling requests and checks its
JSON: each row served requests without errors, the slow requests were sent
and really took the stall, and the latencies are those of real requests.
"""

import json

import pytest

@pytest.mark.slow
def test_uneven_smoke(tmp_path, run_script):
    out = tmp_path / "uneven.json"
    code, stdout, stderr = run_script(
        ["benchmarks/uneven.py", "--rows", "least,none", "--work", "stall", "--share", "0.05",
         "--burn-ms", "20", "--duration", "1", "--connections", "4", "--json", str(out)])
    assert code == 0, stderr
    assert "| fastfork least |" in stdout and "| fastfork none |" in stdout
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"least", "none"}
    for name, row in rows.items():
        assert row["requests"] > 0 and row["errors_total"] == 0, (name, row)
        assert row["slow_requests"] > 0, (name, row)
        # A stalled request takes the stall (20 ms) at least: the path really blocks.
        assert row["slow_min_us"] >= 20_000, (name, row)
        assert row["p50_us"] <= row["max_us"], (name, row)
