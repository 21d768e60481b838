"""`fastfork run --reload`: the primary watches the app's files and reloads every worker.

Real clusters of two workers on an app file the test edits: the new code is
served by every worker while a client polls throughout and sees no failed
request; code that fails to import keeps the old workers serving and is
reported once; a missing watchfiles is one line naming the extra.  The
watcher's filter and its "same content is no change" rule are checked in
process.
"""

import os
import subprocess
import sys

import pytest

from fastfork.cli.reloader import FileFilter, Reloader
from fastfork.cli import run
from tests.harness import PY, wait_until
from tests.loadgen import HttpClient, Load
from tests.runner_harness import OPS_APP, pids_of

pytest.importorskip("uvicorn", reason="the web extra is not installed")
pytest.importorskip("watchfiles", reason="the reload extra is not installed")
RUN = [sys.executable, "-m", "fastfork", "run"]

APP = '''\
import os

import fastfork

VERSION = {version}
{extra}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{{VERSION}} {{os.getpid()}}".encode()
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body", "body": body}})
'''


def write_app(path, version, extra=""):
    text = APP.format(version=version, extra=extra)
    # Written aside and renamed in: the watcher never sees half a file.
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def start(runner_factory, rundir, *args):
    app = os.path.join(rundir, "app.py")
    write_app(app, 1)
    runner = runner_factory(f"{app}:app", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--reload", "--reload-dir", rundir, "--reload-delay", "0.1",
                            "--no-access-log", *args)
    return app, runner, pids_of(runner.wait_serving(2))


def replaced(before):
    return lambda s: (len(s["workers"]) == 2 and not pids_of(s) & before
                      and s["primary"]["replacing"] is None and not s["primary"]["queued"]
                      and all(w["state"] == "listening" for w in s["workers"]))


def answers(load):
    """``(version, pid)`` of each reply the load got so far."""
    return [tuple(int(x) for x in reply.split()) for reply in list(load.replies)]


def test_an_edited_file_is_served_by_every_worker_with_no_failed_request(runner_factory,
                                                                         rundir):
    app, runner, before = start(runner_factory, rundir)
    with Load(runner.address(), concurrency=4, duration=50, keep_replies=True,
              client=HttpClient("/", keep_alive="half")) as load:
        load.wait_more(20, "load before the edit")
        write_app(app, 2)
        after = pids_of(runner.wait_status(replaced(before), "every worker replaced",
                                           timeout=30))
        load.wait_more(100, "load after the reload")
        # Both new workers answer with the new code.  Waited for, not looked
        # for in the last replies: the keep-alive half of the load may sit on
        # one of them, and new connections skip a worker the primary sees
        # stalled (a fresh one on a loaded machine, for a moment).
        wait_until(lambda: {pid for version, pid in answers(load) if version == 2} == after,
                   15, "every new worker answering with the new code")
    report = load.report()
    print(f"\n--reload of 2 workers under load: {report}, {load.retried} reused keep-alive "
          f"connections closed under a request")
    assert report.failed == 0, report.errors
    assert "app.py changed; reloading the workers" in runner.output()
    assert {version for version, _ in answers(load)[:20]} == {1}
    # Every new worker serves the new code, and only they answer once replaced.
    assert {pid for version, pid in answers(load) if version == 2} == after
    late = answers(load)[-40:]
    assert {(version, pid in after) for version, pid in late} == {(2, True)}


def test_a_broken_edit_keeps_the_old_workers_and_prints_the_error_once(runner_factory,
                                                                      rundir):
    app, runner, before = start(runner_factory, rundir)
    write_app(app, 2, extra="raise RuntimeError('broken on purpose')")
    wait_until(lambda: "reload stopped" in runner.output(), 20, "the reload to give up")
    status = runner.wait_serving(2)
    assert pids_of(status) == before
    with Load(runner.address(), concurrency=2, max_requests=10, keep_replies=True,
              client=HttpClient("/")) as load:
        pass
    assert load.report().failed == 0
    assert {(version, pid in before) for version, pid in answers(load)} == {(1, True)}
    # Fixed: the next save reloads every worker.
    write_app(app, 3)
    after = pids_of(runner.wait_status(replaced(before), "every worker replaced", timeout=30))
    with Load(runner.address(), concurrency=2, max_requests=10, keep_replies=True,
              client=HttpClient("/")) as load:
        pass
    assert {(version, pid in after) for version, pid in answers(load)} == {(3, True)}
    output = runner.output()
    assert output.count("broken on purpose") == 1, output


def test_a_missing_watchfiles_names_the_extra_before_forking(tmp_path):
    fake = tmp_path / "watchfiles"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('simulated: not installed')\n")
    env = PY.env({"PYTHONPATH": f"{tmp_path}{os.pathsep}{PY.env()['PYTHONPATH']}"})
    out = subprocess.run(RUN + [f"{OPS_APP}:handle", "--reload", "--bind", "127.0.0.1:0",
                                "--control-socket", str(tmp_path / "c.sock")],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert out.stderr.startswith("fastfork run: error: "), out.stderr
    assert "pip install 'fastfork[reload]'" in out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "forked" not in out.stdout + out.stderr


def test_a_reload_dir_that_is_not_there_is_one_line(tmp_path):
    out = subprocess.run(RUN + [f"{OPS_APP}:handle", "--reload", "--reload-dir",
                                str(tmp_path / "nowhere"), "--bind", "127.0.0.1:0",
                                "--control-socket", str(tmp_path / "c.sock")],
                         env=PY.env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, out
    assert out.stderr == (f"fastfork run: error: argument --reload-dir: {tmp_path}/nowhere is "
                          f"not a directory\n")


def test_uvicorns_reload_options_are_settings():
    settings = run.parse(["x:app", "--reload", "--reload-dir", "src", "--reload-dir", "lib",
                          "--reload-include", "*.html", "--reload-exclude", "tests",
                          "--reload-delay", "0.5"])
    assert (settings.reload, settings.reload_dir, settings.reload_include,
            settings.reload_exclude, settings.reload_delay) == \
        (True, ("src", "lib"), ("*.html",), ("tests",), 0.5)


def test_the_filter_is_uvicorns(tmp_path):
    (tmp_path / "static").mkdir()
    default = FileFilter()
    assert default("/srv/app/main.py")
    assert not default("/srv/app/main.pyc")
    assert not default("/srv/app/.main.py")
    assert not default("/srv/app/templates/index.html")
    given = FileFilter(includes=["*.html", ".*"], excludes=["test_*.py", str(tmp_path / "static")])
    assert given("/srv/app/templates/index.html")
    assert given("/srv/app/.env.py")              # .* included: no longer excluded
    assert not given("/srv/app/test_main.py")
    assert not given(str(tmp_path / "static" / "x.py"))
    assert FileFilter(excludes=["*.py"])("/srv/app/main.py") is False


def test_the_same_content_is_not_a_change(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reloads = []
    reloader = Reloader(run.parse(["app.py:app", "--reload"]), lambda: reloads.append(1))
    assert reloader.dirs == [str(tmp_path)]
    path = str(tmp_path / "app.py")
    write_app(path, 1)
    assert reloader.changed([path]) == [path]
    assert reloader.changed([path, path]) == []          # a second event for one write
    write_app(path, 2)
    assert reloader.changed([path]) == [path]
    os.unlink(path)
    assert reloader.changed([path]) == [path]            # deleted: a change too
