"""The engine refuses an httptools whose parser reads some requests two ways.

The web extra asks for httptools >= 0.6.3, but an older one can still be
installed by hand.  Here one is simulated the honest way, in the subprocess
alone: a package named httptools with the metadata of 0.6.0 comes first on
its path (as test_web_lifecycle simulates a missing extra).
"""

import os
import subprocess
import sys

import pytest

from tests.harness import PY
from tests.runner_harness import APPS

pytest.importorskip("uvicorn", reason="the web extra is not installed")


def test_the_engine_names_the_httptools_it_needs(tmp_path):
    from fastfork.engine import MIN_HTTPTOOLS
    (tmp_path / "httptools").mkdir()
    (tmp_path / "httptools" / "__init__.py").write_text("")
    (tmp_path / "httptools-0.6.0.dist-info").mkdir()
    (tmp_path / "httptools-0.6.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: httptools\nVersion: 0.6.0\n")
    env = PY.env({"PYTHONPATH": f"{tmp_path}{os.pathsep}{PY.env()['PYTHONPATH']}"})
    out = subprocess.run(
        [sys.executable, "-m", "fastfork", "run", f"{APPS}/web/starlette_app.py:app",
         "--http", "engine", "--bind", "127.0.0.1:0",
         "--control-socket", str(tmp_path / "c.sock")],
        env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    wanted = ".".join(map(str, MIN_HTTPTOOLS))
    assert f"needs httptools >= {wanted}" in out.stderr and "this is 0.6.0" in out.stderr, \
        out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "c.sock").exists()          # nothing started
