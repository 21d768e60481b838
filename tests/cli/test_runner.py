"""`python -m fastfork run`: options, config files, loading the app, app types.

Bad input must end the run with one line naming the problem and exit code 2
before any worker is forked; good input must serve.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

import fastfork
from tests.harness import PY, request
from tests.runner_harness import APPS, OPS_APP, Runner, pids_of

from fastfork.cli import apps, options

RUN = [sys.executable, "-m", "fastfork", "run"]


def run_cli(args, cwd=APPS, timeout=20):
    return subprocess.run(RUN + list(args), cwd=cwd, env=PY.env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def busy_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


BAD_INPUT = [
    (["ops_app:handle", "--workers", "0"], "worker count must be a positive integer"),
    (["ops_app:handle", "--policy", "fair"], "argument --policy: 'fair' is not one of rr"),
    (["ops_app:handle", "--max-memory", "12X"], "--max-memory: '12X' is not a size"),
    (["ops_app:handle", "--timeout", "soon"], "--timeout: 'soon' is not a number of seconds"),
    (["ops_app:handle", "--bogus"], "unrecognized arguments: --bogus"),
    (["ops_app:handle", "--wokers", "2"], "unrecognized arguments: --wokers (did you mean "
                                          "--workers?)"),
    (["ops_app:handle", "--bind", "http://127.0.0.1:80"],
     "address 'http://127.0.0.1:80' is not HOST:PORT or unix:PATH (no http:// here: give "
     "127.0.0.1:80)"),
    (["ops_app:handle", "--log-level", "LOUD"], "argument --log-level: 'loud' is not one of"),
    (["ops_app:handle", "--bind", "127.0.0.1:http"], "port must be a number, got 'http'"),
    (["ops_app:handle", "--user", "no-such-user"], "no such user: 'no-such-user'"),
    (["ops_app:handle", "--app-type", "wsgi"], "ops_app:handle: --app-type wsgi: "),
    (["ops_app:handle", "--app-type", "fair"], "'fair' is not one of auto, asgi, wsgi"),
    ([], "no app given"),
    (["ops_app"], "has no 'application' (MODULE alone means MODULE:application"),
    (["ops_app:"], "'ops_app:' is not MODULE:CALLABLE"),
    (["ops_app:nope"], "has no 'nope'"),
    (["ops_app:NOT_CALLABLE"], "ops_app:NOT_CALLABLE is a int, not a callable"),
    (["no_such_module_here:app"], "no module named 'no_such_module_here'"),
    (["ops_broken:app"], "importing ops_broken failed: ZeroDivisionError: app cannot start"),
    ([os.path.join(APPS, "ops_broken.py") + ":app"], "ops_broken.py, line 1)"),
    (["missing/app.py:app"], "no such file: missing/app.py"),
    (["ops_app:serve_when_ready"], "give --app-type asgi, wsgi, stream, protocol or main"),
    (["ops_app:handle", "--threads", "0", "--wsgi-body-buffer", "0"],
     "argument --wsgi-body-buffer: must be more than 0 with threads 0"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUT,
                         ids=[" ".join(a) or "no-app" for a, _ in BAD_INPUT])
def test_bad_input_exits_2_before_forking(args, needle):
    out = run_cli(args)
    assert out.returncode == 2, out
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("fastfork run: error: ") and needle in lines[0], lines[0]


def test_a_port_in_use_exits_2_before_forking(busy_port):
    out = run_cli(["ops_app:handle", "--workers", "1", "--bind", f"127.0.0.1:{busy_port}"])
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"fastfork run: error: cannot listen on 127.0.0.1:{busy_port}: Address already in use"]


def test_help_lists_every_option():
    out = run_cli(["--help"])
    assert out.returncode == 0
    for option in options.OPTIONS:
        assert f"--{option.name}" in out.stdout
    for text in ("--config", "MODULE:CALLABLE", "SIGHUP", "SIGTTIN", "[tool.fastfork]",
                 "3 crash loop"):
        assert text in out.stdout


# -- configuration ----------------------------------------------------------------------
def write(path, text):
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def test_pyproject_table_then_command_line(tmp_path):
    write(tmp_path / "pyproject.toml", """\
        [project]
        name = "someapp"
        [tool.fastfork]
        app = "someapp:handle"
        workers = 3
        bind = ["127.0.0.1:9001", "unix:/tmp/x.sock"]
        max-memory = "1.5G"
        max_requests = 1000
        preload = true
        """)
    settings = options.build({"workers": "2", "policy": "none"}, cwd=str(tmp_path))
    assert settings.app == "someapp:handle"
    assert settings.workers == 2                         # the command line wins
    assert settings.policy == "none"
    assert settings.bind == ("127.0.0.1:9001", "unix:/tmp/x.sock")
    assert settings.max_memory == int(1.5 * 2**30)
    assert settings.max_requests == 1000
    assert settings.preload is True
    assert settings.timeout == 30.0                      # untouched default of fastfork run
    assert settings.window == fastfork.DEFAULT_WINDOW


def test_config_errors_name_the_key(tmp_path):
    path = write(tmp_path / "ff.toml", "workers = 2\nmax-request = 5\n")
    with pytest.raises(options.ConfigError, match=r"ff.toml: unknown option 'max-request'"):
        options.build({}, config_path=str(path))
    path = write(tmp_path / "ff.toml", "[tool.fastfork]\npreload = 'yes'\n")
    with pytest.raises(options.ConfigError,
                       match=r"ff.toml \[tool.fastfork\]: preload: 'yes' is not true or false"):
        options.build({}, config_path=str(path))
    path = write(tmp_path / "ff.toml", "workers = [\n")
    with pytest.raises(options.ConfigError, match="is not valid TOML"):
        options.build({}, config_path=str(path))


def test_app_kinds_are_told_apart():
    async def stream(reader, writer):
        pass

    def wsgi(environ, start_response):
        pass

    async def asgi(scope, receive, send):
        pass

    def main(addresses):
        pass

    import asyncio

    class Proto(asyncio.Protocol):
        pass

    assert apps.app_kind(stream, "auto", "x:stream") == "stream"
    assert apps.app_kind(Proto, "auto", "x:Proto") == "protocol"
    assert apps.app_kind(main, "main", "x:main") == "main"
    assert apps.app_kind(wsgi, "auto", "x:wsgi") == "wsgi"
    assert apps.app_kind(asgi, "auto", "x:asgi") == "asgi"
    with pytest.raises(apps.AppError, match="give --app-type asgi, wsgi, stream"):
        apps.app_kind(main, "auto", "x:main")


# -- serving ------------------------------------------------------------------------------
def test_config_file_protocol_app_from_a_path(runner_factory, tmp_path):
    path = write(tmp_path / "ff.toml", f"""\
        app = "{OPS_APP}:EchoProtocol"
        workers = 3
        bind = "127.0.0.1:0"
        """)
    run = runner_factory("--config", str(path), "--workers", "2")
    status = run.wait_serving(2)                          # --workers beat the file's 3
    assert status["primary"]["addresses"][0].startswith("127.0.0.1:")
    replies = [request(run.address(), f"hello {i}") for i in range(4)]
    assert {int(r.split()[0]) for r in replies} == pids_of(status)
    assert [r.split(None, 1)[1] for r in replies] == [f"hello {i}" for i in range(4)]


def test_preload_serves_the_code_loaded_at_start(runner_factory, rundir):
    app = os.path.join(rundir, "app.py")
    shutil.copy(OPS_APP, app)
    run = runner_factory(f"{app}:handle", "--preload", "--workers", "1",
                         "--bind", "127.0.0.1:0")
    (old,) = pids_of(run.wait_serving(1))
    with open(app) as f:
        code = f.read()
    with open(app, "w") as f:
        f.write(code.replace('VERSION = "1"', 'VERSION = "2"'))
    run.signal(signal.SIGHUP)
    status = run.wait_status(lambda s: old not in pids_of(s) and len(s["workers"]) == 1
                             and s["workers"][0]["state"] == "listening", "a reload")
    whoami = request(run.address(), "whoami").split()
    assert int(whoami[1]) in pids_of(status) and whoami[3] == "1"   # forked from the primary


def test_a_second_primary_on_the_same_control_socket_exits_2(runner_factory):
    first = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0")
    first.wait_serving(1)
    out = run_cli([f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                   "--control-socket", first.socket_path])
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"fastfork run: error: control socket {first.socket_path} is in use by a running "
        f"primary (pid {first.pid}); give this one another --name or --control-socket"]
    assert first.status()["primary"]["pid"] == first.pid       # the first one is untouched


@pytest.mark.parametrize("closed", ["1", "2", "0,1,2"], ids=["stdout", "stderr", "all-three"])
def test_serves_with_its_standard_streams_closed(runner_factory, rundir, closed):
    # `fastfork run ... >&-`: Python starts with no sys.stdout (or stderr),
    # and the primary died flushing it (as it forks, or setting up the log).
    log = os.path.join(rundir, "error.log")
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--error-logfile", log,
                            launcher=[os.path.join(APPS, "closed_fd_launcher.py"), closed])
    (pid,) = pids_of(runner.wait_serving(1))
    assert request(runner.address(), "whoami").split()[1] == str(pid)
    runner.signal(signal.SIGTERM)
    assert runner.proc.wait_exit(30) == 0
    with open(log) as f:
        assert f"primary {runner.pid} exiting with code 0" in f.read()


def test_a_stopping_primary_leaves_a_newer_primarys_socket_files(rundir):
    # A deploy removes the old primary's socket files, starts the new one on
    # the same paths, then stops the old one: which removed the new one's
    # files as it exited (its clients: "No such file", its status: gone).
    path = os.path.join(rundir, "app.sock")
    args = [f"{OPS_APP}:handle", "--workers", "1", "--bind", f"unix:{path}"]
    old = Runner(rundir, args, name="ctl")
    new = None
    try:
        old.wait_serving(1)
        os.unlink(path)
        os.unlink(old.socket_path)
        new = Runner(rundir, args, name="ctl")
        (pid,) = pids_of(new.wait_serving(1))
        old.signal(signal.SIGTERM)
        assert old.proc.wait_exit(30) == 0
        assert new.status()["primary"]["pid"] == new.pid
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"whoami\n")
            assert sock.makefile().readline().split()[1] == str(pid)
        new.signal(signal.SIGTERM)
        assert new.proc.wait_exit(30) == 0
        assert not os.path.exists(path) and not os.path.exists(new.socket_path)
    finally:
        old.close()
        if new is not None:
            new.close()
