"""The engine refuses an httptools whose parser reads some requests two ways.

Runs where such an httptools is installed: CI's lowest-versions run (0.6.0);
on a newer one it skips, saying so.
"""

import subprocess
import sys

import pytest

from tests.harness import PY
from tests.runner_harness import APPS

pytest.importorskip("uvicorn", reason="the web extra is not installed")


def test_the_engine_names_the_httptools_it_needs(tmp_path):
    from fastfork.engine import MIN_HTTPTOOLS, httptools_version
    found = httptools_version()
    if found is None or found >= MIN_HTTPTOOLS:
        pytest.skip(f"httptools {found} is one the engine runs on: nothing to refuse here")
    out = subprocess.run(
        [sys.executable, "-m", "fastfork", "run", f"{APPS}/web/starlette_app.py:app",
         "--http", "engine", "--bind", "127.0.0.1:0",
         "--control-socket", str(tmp_path / "c.sock")],
        env=PY.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    wanted = ".".join(map(str, MIN_HTTPTOOLS))
    assert f"needs httptools >= {wanted}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
