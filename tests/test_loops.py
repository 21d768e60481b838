"""``--loop asyncio|uvloop|auto`` (``serve(loop=...)``) for every kind of app: the
loop asked for is the loop the workers run, and a missing uvloop is named,
with the extra to install, before any worker is forked."""

import os
import subprocess
import sys

import pytest

from tests.harness import PY, ROOT, request, session_pids
from tests.runner_harness import APPS

ATTACH_APP = os.path.join(APPS, "attach_app.py")
STREAM_APP = os.path.join(APPS, "ops_app.py")
RUN = [sys.executable, "-m", "fastfork", "run"]
MODULES = {"asyncio": "asyncio.unix_events", "uvloop": "uvloop"}


def has_uvloop():
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def no_uvloop(tmp_path):
    """An environment where ``import uvloop`` fails, as where the extra is missing."""
    fake = tmp_path / "uvloop"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    return PY.env({"PYTHONPATH": f"{tmp_path}{os.pathsep}{PY.env()['PYTHONPATH']}"})


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "auto"])
def test_fastfork_run_serves_a_protocol_app_on_the_loop_asked_for(runner_factory, loop):
    if loop != "asyncio" and not has_uvloop():
        pytest.skip("uvloop is not installed")
    runner = runner_factory(f"{ATTACH_APP}:LineProtocol", "--app-type", "protocol",
                            "--workers", "1", "--bind", "127.0.0.1:0", "--loop", loop)
    runner.wait_serving(1)
    expected = MODULES["uvloop"] if loop == "auto" else MODULES[loop]   # auto: uvloop is here
    assert request(runner.address(), "loop") == expected
    assert request(runner.address(), "echo me") == "echo me"


def test_auto_without_uvloop_runs_asyncio(runner_factory, no_uvloop):
    runner = runner_factory(f"{ATTACH_APP}:LineProtocol", "--app-type", "protocol",
                            "--workers", "1", "--bind", "127.0.0.1:0", env=no_uvloop)
    runner.wait_serving(1)
    assert request(runner.address(), "loop") == MODULES["asyncio"]


@pytest.mark.parametrize("app", [f"{ATTACH_APP}:LineProtocol", f"{STREAM_APP}:handle"])
def test_loop_uvloop_without_uvloop_fails_before_any_fork(tmp_path, no_uvloop, app):
    out = subprocess.run(RUN + [app, "--workers", "1", "--bind", "127.0.0.1:0", "--loop",
                                "uvloop", "--control-socket", str(tmp_path / "c.sock")],
                         cwd=APPS, env=no_uvloop, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert out.stderr.splitlines() == [
        "fastfork run: error: fastfork needs the 'uvloop' package to run the event loop with "
        "loop='uvloop', but it cannot be imported (simulated: not installed); install the "
        "uvloop extra: pip install 'fastfork[uvloop]'"], out.stderr
    assert session_pids(os.getpid())[1] == []       # no zombie of ours either


SERVE = """
import fastfork, fastfork.web
try:
    fastfork.serve(lambda reader, writer: None, "127.0.0.1:0", loop={loop!r})
except fastfork.web.MissingExtraError as exc:
    print("MissingExtraError", exc.package, exc.extra, isinstance(exc, ImportError))
except Exception as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.parametrize("loop, said", [
    ("uvloop", "MissingExtraError uvloop uvloop True"),
    ("trio", "ValueError loop must be one of auto, asyncio, uvloop, got 'trio'"),
    # auto needs no uvloop: what stops it is the next thing, not being a worker.
    ("auto", "RuntimeError not in a fastfork worker (fastfork.is_worker is False)"),
])
def test_serve_checks_the_loop_before_serving(no_uvloop, loop, said):
    out = subprocess.run([sys.executable, "-c", SERVE.format(loop=loop)], cwd=ROOT,
                         env=no_uvloop, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == said, out.stdout + out.stderr
