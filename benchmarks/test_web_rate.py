"""Smoke test of ``benchmarks/web_rate.py``: CI runs it at a low rate for a
second, the real run is a command.  Every fastfork row must have served all
its connections, with CPU figures read from its processes."""

import re
import shutil

import pytest

def test_every_fastfork_row_serves_the_rate_it_is_offered(tmp_path, run_script):
    for tool, package in (("h2load", "nghttp2-client"), ("wrk", "wrk")):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (apt-get install {package})")
    pytest.importorskip("starlette", reason="starlette is not installed (the webtest extra)")
    out = tmp_path / "web_rate.md"
    code, _, stderr = run_script(["-m", "benchmarks.web_rate", "--only", "starlette fastfork",
                                  "--rate", "1000", "--duration", "1", "--repeat", "1",
                                  "--out", str(out)])
    assert code == 0, stderr[-3000:]
    rows = {}
    for line in out.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] == "starlette":
            rows[cells[1]] = cells
    assert set(rows) == {"fastfork rr", "fastfork rr, --stall-ms 0", "fastfork none",
                         "fastfork rr, --primary-sched other", "fastfork rr httptools"}, \
        out.read_text()
    for label, (_, _, cpu, _, mean_ms, failed) in rows.items():
        assert failed == "0", (label, out.read_text())
        workers_and_primary = re.fullmatch(r"([\d.]+) \(([\d.]+)\)", cpu)
        assert workers_and_primary, (label, cpu)
        assert float(workers_and_primary.group(1)) > 0 and float(mean_ms) > 0
    assert rows["fastfork none"][3] == "1.00"
