"""Switching from uvicorn or gunicorn by changing one word (issue 26, the command line).

uvicorn's and gunicorn's flags go through ``fastfork run`` against real apps
(FastAPI, Flask, Django from tests/apps/web), and each test checks what a
user would see: the variable in the app, the header in the response, the
log line in its format, the hook's file.  Flags are grouped so that one
cluster start serves many of them; the spellings alone (an alias sets the
same field as fastfork's own flag) are checked without starting anything.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from harness import PY, ClusterProcess, wait_until
from runner_harness import APPS, OPS_APP, pids_of

from fastfork.cli import envfile, gunicorn_config, options, run

pytest.importorskip("uvicorn", reason="the web extra is not installed")
pytest.importorskip("fastapi", reason="the webtest extra is not installed")
pytest.importorskip("flask", reason="the webtest extra is not installed")
WEB = os.path.join(APPS, "web")
RUN = [sys.executable, "-m", "fastfork", "run"]


def get(address, path, headers=None):
    """``(status, headers dict, JSON body)`` of ``GET path`` on a fresh connection."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers or {}, Connection="close"))
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, \
            json.loads(response.read())
    finally:
        conn.close()


def lines_of(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path, count, what, timeout=15):
    return wait_until(lambda: len(lines_of(path)) >= count and lines_of(path), timeout, what)


def cli_error(args, capsys):
    """The one line ``fastfork run ARGS`` says, for input refused before anything starts."""
    assert run.main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("fastfork run: error: "), err
    return err[0][len("fastfork run: error: "):]


# -- the spellings: every alias is the same Settings field ----------------------------------
SAME = [
    (["-w", "3"], ["--workers", "3"]),
    (["-b", "127.0.0.1:9001", "-b", "unix:/tmp/a.sock"],
     ["--bind", "127.0.0.1:9001", "--bind", "unix:/tmp/a.sock"]),
    (["--host", "0.0.0.0", "--port", "9002"], ["--bind", "0.0.0.0:9002"]),
    (["--host", "::1"], ["--bind", "[::1]:8000"]),
    (["--port", "9003"], ["--bind", "127.0.0.1:9003"]),
    (["--uds", "/tmp/u.sock"], ["--bind", "unix:/tmp/u.sock"]),
    (["--fd", "3"], ["--bind", "fd://3"]),
    (["-t", "7"], ["--timeout", "7"]),
    (["--timeout-worker-healthcheck", "7"], ["--timeout", "7"]),
    (["--timeout-graceful-shutdown", "9"], ["--graceful-timeout", "9"]),
    (["--limit-max-requests", "100"], ["--max-requests", "100"]),
    (["--limit-max-requests-jitter", "9"], ["--max-requests-jitter", "9"]),
    (["--keep-alive", "3"], ["--timeout-keep-alive", "3"]),
    (["--header", "a:1", "--header", "b: 2"], ["--headers", "a:1", "--headers", "b:2"]),
    (["-n", "shop"], ["--name", "shop"]),
    (["-p", "/tmp/p", ], ["--pidfile", "/tmp/p"]),
    (["--pid", "/tmp/p"], ["--pidfile", "/tmp/p"]),
    (["--log-file", "/tmp/e"], ["--error-logfile", "/tmp/e"]),
    (["-e", "A=1", "--env", "B=2"], ["--raw-env", "A=1", "--raw-env", "B=2"]),
    (["--log-level", "DEBUG"], ["--log-level", "debug"]),
    (["--access-log"], []),
    (["--no-access-log"], ["--no-access-log"]),
    (["--no-proxy-headers"], []),
    (["--no-server-header"], ["--no-server-header"]),
    (["--interface", "asgi3"], ["--app-type", "asgi"]),
    (["--interface", "wsgi"], ["--app-type", "wsgi"]),
    (["--reuse-port"], ["--policy", "reuseport"]),
    (["-k", "uvicorn.workers.UvicornWorker"], []),
    (["-k", "uvicorn.workers.UvicornH11Worker"], ["--http", "h11"]),
    (["--worker-class", "gthread"], []),
    (["--ws-per-message-deflate", "false"], ["--ws-per-message-deflate", "no"]),
    (["--preload"], ["--preload"]),
    (["--certfile", "c.pem", "--keyfile", "k.pem", "--ca-certs", "ca.pem", "--cert-reqs", "2",
      "--ciphers", "ECDHE+AESGCM"],
     ["--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem", "--ssl-ca-certs", "ca.pem",
      "--ssl-cert-reqs", "CERT_REQUIRED", "--ssl-ciphers", "ECDHE+AESGCM"]),   # gunicorn's
    (["--ssl-certificate", "c.pem", "--ssl-version", "PROTOCOL_TLS_SERVER"],
     ["--ssl-certfile", "c.pem", "--ssl-version", "17"]),                    # granian's
    (["--ssl-certfile", "c.pem", "--ssl-min-version", "1.3"],
     ["--ssl-certfile", "c.pem", "--ssl-min-version", "TLSv1.3"]),
    (["--interface", "asgi", "--url-path-prefix", "/p", "--working-dir", "/srv",
      "--pid-file", "/tmp/p", "--workers-kill-timeout", "4", "--blocking-threads", "8"],
     ["--app-type", "asgi", "--root-path", "/p", "--chdir", "/srv", "--pidfile", "/tmp/p",
      "--graceful-timeout", "4", "--threads", "8"]),                     # granian's
]


@pytest.mark.parametrize("theirs, ours", SAME, ids=[" ".join(t) for t, _ in SAME])
def test_their_spelling_sets_our_field(theirs, ours, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)    # no pyproject.toml nor gunicorn.conf.py to read
    assert run.parse(["x:app"] + theirs) == run.parse(["x:app"] + ours)


def test_switches_turn_off_and_levels_take_any_case(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    settings = run.parse(["x:app", "--no-server-header", "--no-date-header", "--access-log",
                          "--log-level", "WARNING", "--ws-ping-interval", "5"])
    assert (settings.server_header, settings.date_header, settings.no_access_log) == \
        (False, False, False)
    assert settings.log_level == "warning" and settings.ws_ping_interval == 5.0
    assert run.parse(["x:app", "--proxy-headers", "--no-proxy-headers"]).proxy_headers is False


REFUSED = [
    (["--reload", "--preload"], "argument --reload: cannot be used with preload (--preload)"),
    (["--reload-engine", "inotify"], "--reload-engine is not needed: --reload watches the "
                                     "files with watchfiles"),
    (["--do-handshake-on-connect"], "--do-handshake-on-connect is not needed: asyncio's TLS "
                                    "transport does the handshake"),
    (["--ssl-keyfile", "k.pem"], "argument --ssl-keyfile: needs ssl_certfile (--ssl-certfile)"),
    (["--ssl-certfile", "c.pem", "--ssl-cert-reqs", "maybe"],
     "argument --ssl-cert-reqs: maybe is not a client certificate requirement (0 none, 1 "
     "optional, 2 required, or the CERT_* name)"),
    (["--ssl-certfile", "c.pem", "--ssl-min-version", "SSLv3"],
     "argument --ssl-min-version: 'SSLv3' is not a TLS version (TLSv1, TLSv1.1, TLSv1.2, "
     "TLSv1.3)"),
    (["--daemon"], "--daemon is not supported: run fastfork under systemd (see README "
                   "'Under systemd')"),
    (["-D"], "-D is not supported: run fastfork under systemd"),
    (["--statsd-host=localhost:8125"], "--statsd-host is not supported: serve Prometheus "
                                       "metrics with --metrics ADDRESS"),
    (["--worker-tmp-dir", "/dev/shm"], "--worker-tmp-dir is not needed: workers send heartbeats"),
    (["--limit-request-line", "4094"], "--limit-request-line is not supported: the request head"),
    (["-k", "gevent"], "argument --worker-class: 'gevent' is not supported: fastfork workers "
                       "serve from an asyncio event loop"),
    (["--worker-connections", "1000"], "argument --worker-connections: needs policy least "
                                       "(policy is rr); for a cap on each worker's connections "
                                       "under any policy (gunicorn's worker_connections), use "
                                       "--limit-concurrency"),
    (["--loop", "zuvloop"], "argument --loop: 'zuvloop' is not one of auto, asyncio, uvloop"),
    (["--limit-concurency", "5"], "unrecognized arguments: --limit-concurency (did you mean "
                                  "--limit-concurrency?)"),
    (["--forwarded-alow-ips", "*"], "unrecognized arguments: --forwarded-alow-ips (did you "
                                    "mean --forwarded-allow-ips?)"),
    (["--port", "http"], "argument --port: 'http' is not a port number"),
    (["--header", "no-colon"], "argument --headers: 'no-colon' is not a header as name:value"),
    (["--bind", "https://example.com/"], "address 'https://example.com/' is not HOST:PORT or "
                                         "unix:PATH (no https:// here: give example.com:PORT)"),
]


@pytest.mark.parametrize("args, needle", REFUSED, ids=[" ".join(a) for a, _ in REFUSED])
def test_a_flag_with_no_meaning_here_is_one_line_naming_our_way(args, needle, capsys,
                                                               monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert needle in cli_error(["x:app"] + args, capsys)


def test_gunicorn_config_file_reads_as_gunicorn_names_it(tmp_path):
    path = tmp_path / "g.py"
    path.write_text(textwrap.dedent("""\
        import multiprocessing
        workers = 3
        bind = ["127.0.0.1:9010"]
        keepalive = 4
        accesslog = "-"
        loglevel = "WARNING"
        worker_class = "uvicorn.workers.UvicornH11Worker"
        preload_app = True
        header_map = "refuse"
        daemon = False                 # off: nothing to refuse
        def helper():                  # not a hook: left alone
            pass
        def post_fork(server, worker):
            pass
        """))
    notes = []
    where, values, names = gunicorn_config.read(str(path), notes)
    settings = options.build({}, tables=[(where, values, names)], toml=False)
    assert (settings.workers, settings.bind, settings.timeout_keep_alive) == \
        (3, ("127.0.0.1:9010",), 4.0)
    assert (settings.access_logfile, settings.log_level, settings.http, settings.preload) == \
        ("-", "warning", "h11", True)
    assert settings.header_map == "refuse"
    assert list(settings.hooks) == ["post_fork"]
    path.write_text("import ssl\ncertfile = 'c.pem'\nkeyfile = 'k.pem'\nca_certs = 'ca.pem'\n"
                    "cert_reqs = ssl.CERT_REQUIRED\nssl_version = ssl.PROTOCOL_TLS\n"
                    "ciphers = 'ECDHE+AESGCM'\nreload = True\n")
    where, values, names = gunicorn_config.read(str(path), notes)
    settings = options.build({}, tables=[(where, values, names)], toml=False)
    assert (settings.ssl_certfile, settings.ssl_keyfile, settings.ssl_ca_certs,
            settings.ssl_cert_reqs, settings.ssl_version, settings.ssl_ciphers) == \
        ("c.pem", "k.pem", "ca.pem", 2, 2, "ECDHE+AESGCM")
    assert settings.reload is True
    path.write_text("def ssl_context(config, default_ssl_context_factory):\n    pass\n")
    with pytest.raises(options.ConfigError, match="ssl_context is not supported here: the "
                                                  "context is built from the TLS settings"):
        gunicorn_config.read(str(path), notes)
    path.write_text("daemon = True\n")
    with pytest.raises(options.ConfigError, match="daemon is not supported here: run fastfork "
                                                  "under systemd"):
        gunicorn_config.read(str(path), notes)
    path.write_text("keepalive = 'soon'\n")
    where, values, names = gunicorn_config.read(str(path), notes)
    with pytest.raises(options.ConfigError, match=r"g.py: keepalive: 'soon' is not a number"):
        options.build({}, tables=[(where, values, names)], toml=False)
    path.write_text("1/0\n")
    with pytest.raises(options.ConfigError, match=r"reading .*g.py failed: ZeroDivisionError"):
        gunicorn_config.read(str(path), notes)


def test_env_file_reads_what_python_dotenv_reads():
    text = textwrap.dedent("""\
        # a comment
        export A=1
        B = two words # a comment
        C='as ${A} written'
        D="escaped\\n${A}"
        E=${A}-${UNSET:-fallback}
        F="over
        two lines"
        """)
    assert envfile.parse(text, {}) == {"A": "1", "B": "two words", "C": "as ${A} written",
                                       "D": "escaped\n1", "E": "1-fallback",
                                       "F": "over\ntwo lines"}
    environ = {"A": "already"}
    envfile.apply(None, ("G=given",), environ)
    assert environ == {"A": "already", "G": "given"}
    with pytest.raises(envfile.EnvFileError, match="line 2: not KEY=VALUE"):
        envfile.parse("A=1\n=2\n", {})


# -- uvicorn's command line, on a FastAPI app --------------------------------------------
def test_uvicorn_command_line_on_fastapi(runner_factory, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text('FF_SWITCH="from the env file"\nexport FF_KEEP=file\n')
    log_config = tmp_path / "log.json"
    log_config.write_text(json.dumps({
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"f": {"format": "LOGCFG %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"h": {"class": "logging.StreamHandler", "formatter": "f",
                           "stream": "ext://sys.stdout"}},
        "loggers": {"uvicorn": {"handlers": ["h"], "level": "INFO", "propagate": False},
                    "uvicorn.access": {"handlers": ["h"], "level": "INFO",
                                       "propagate": False}}}))
    runner = runner_factory(
        "switch_asgi:make_app", "--factory", "--app-dir", WEB, "--interface", "asgi3",
        "--host", "127.0.0.1", "--port", "0", "--workers", "2", "--env-file", str(env_file),
        "--root-path", "/api", "--header", "x-one:1", "--header", "x-two: 2",
        "--no-server-header", "--no-date-header", "--log-level", "DEBUG",
        "--log-config", str(log_config), "--access-log", "--proxy-headers",
        "--forwarded-allow-ips", "*", "--limit-concurrency", "100",
        "--limit-max-requests", "1000", "--backlog", "64", "--timeout-keep-alive", "7",
        "--timeout-graceful-shutdown", "3", "--http", "h11",
        "--h11-max-incomplete-event-size", "32768", "--ws-max-size", "1M",
        "--ws-max-queue", "8", "--ws-ping-interval", "5", "--ws-ping-timeout", "6",
        "--ws-per-message-deflate", "false", env={"FF_KEEP": "environment"})
    runner.wait_serving(2)
    address = runner.address()
    status, headers, body = get(address, "/env/FF_SWITCH")
    assert status == 200 and body == {"value": "from the env file"}
    assert get(address, "/env/FF_KEEP")[2] == {"value": "environment"}   # set already: wins
    assert (headers["x-one"], headers["x-two"]) == ("1", "2")
    assert "server" not in headers and "date" not in headers
    _, _, scope = get(address, "/scope", {"X-Forwarded-For": "203.0.113.9"})
    assert scope["root_path"] == "/api" and scope["client"][0] == "203.0.113.9"
    _, _, config = get(address, "/config")
    assert config == {"limit_concurrency": 100, "backlog": 64, "timeout_keep_alive": 7,
                      "h11_max_incomplete_event_size": 32768, "ws_max_size": 1 << 20,
                      "ws_max_queue": 8, "ws_ping_interval": 5.0, "ws_ping_timeout": 6.0,
                      "ws_per_message_deflate": False, "http": "H11Protocol",
                      "error_level": 10}                        # --log-level DEBUG
    # --log-config's format, in the workers (uvicorn's own lines and the access log).
    wait_until(lambda: "LOGCFG INFO uvicorn.access: " in runner.output(), 15, "an access line")
    assert "LOGCFG INFO uvicorn.error: Application startup complete." in runner.output()
    settings = run.parse(["switch_asgi:app", "--limit-max-requests", "1000",
                          "--timeout-graceful-shutdown", "3"])
    assert (settings.max_requests, settings.graceful_timeout) == (1000, 3.0)


# -- gunicorn's config file and hooks, on a Flask app ---------------------------------------
GUNICORN_CONF = """\
import os
OUT = {out!r}

wsgi_app = "switch_wsgi:app"
workers = 2
bind = ["127.0.0.1:0"]
chdir = {web!r}
pythonpath = {extra!r}
timeout = 2
graceful_timeout = 5
keepalive = 3
max_requests = 1000
max_requests_jitter = 10
accesslog = os.path.join(OUT, "access.log")
access_log_format = 'ACC %(h)s "%(r)s" %(s)s %(b)s %({{x-test}}i)s %(p)s'
errorlog = os.path.join(OUT, "error.log")
loglevel = "DEBUG"
pidfile = os.path.join(OUT, "pid")
worker_class = "gthread"
threads = 4
raw_env = ["FF_RAW=raw value"]


def mark(name, *values):
    with open(os.path.join(OUT, name), "a") as f:
        f.write(" ".join(str(v) for v in values) + "\\n")


def on_starting(server):
    mark("on_starting", os.getpid(), server.pid)

def when_ready(server):
    mark("when_ready", server.pid, *server.address)

def pre_fork(server, worker):
    mark("pre_fork", os.getpid(), worker.age, worker.index)

def post_fork(server, worker):
    mark("post_fork", worker.pid, os.getpid(), server.pid, server.cfg.workers,
         server.cfg.keepalive)

def post_worker_init(worker):
    mark("post_worker_init", worker.pid)

def worker_int(worker):
    mark("worker_int", worker.pid)

def worker_abort(worker):
    mark("worker_abort", worker.pid)

def worker_exit(server, worker):
    mark("worker_exit", worker.pid)

def child_exit(server, worker):
    mark("child_exit", os.getpid(), worker.pid)

def on_reload(server):
    mark("on_reload", os.getpid())

def nworkers_changed(server, new, old):
    mark("nworkers_changed", new, old)

def on_exit(server):
    mark("on_exit", os.getpid())
"""


def test_gunicorn_config_file_and_hooks_on_flask(runner_factory, tmp_path):
    out, extra = tmp_path / "out", tmp_path / "extra"
    out.mkdir()
    extra.mkdir()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF.format(out=str(out), web=WEB, extra=str(extra)))
    runner = runner_factory("-c", str(conf))
    status = runner.wait_serving(2)
    workers, primary = pids_of(status), runner.pid
    address = runner.address()
    assert lines_of(out / "pid") == [str(primary)]
    assert lines_of(out / "on_starting") == [f"{primary} {primary}"]
    assert lines_of(out / "when_ready")[0].startswith(f"{primary} 127.0.0.1:")
    assert sorted(lines_of(out / "pre_fork")) == [f"{primary} 1 0", f"{primary} 2 1"]
    forked = [line.split() for line in wait_lines(out / "post_fork", 2, "post_fork")]
    assert {int(f[0]) for f in forked} == workers
    assert all(f[0] == f[1] and f[2:] == [str(primary), "2", "3.0"] for f in forked)
    assert {int(p) for p in wait_lines(out / "post_worker_init", 2, "post_worker_init")} \
        == workers
    # The app's side: raw_env, chdir, pythonpath.
    assert get(address, "/env/FF_RAW", {"X-Test": "hello"})[2] == {"value": "raw value"}
    where = get(address, "/where")[2]
    assert where["cwd"] == WEB and str(extra) in where["path"]
    # The access log in gunicorn's atoms, in its file; the error log in its own.
    line = wait_lines(out / "access.log", 1, "the access log")[0]
    assert line.startswith('ACC 127.0.0.1 "GET /env/FF_RAW HTTP/1.1" 200 ')
    assert line.endswith(" hello <%d>" % next(p for p in workers if f"<{p}>" in line))
    wait_until(lambda: any("forked worker 2" in line for line in lines_of(out / "error.log")), 10,
               "fastfork's log in the error log")
    # Signals: SIGINT to a worker, SIGTTIN and SIGHUP to the primary.
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGINT)
    assert wait_lines(out / "worker_int", 1, "worker_int") == [str(victim)]
    runner.signal(signal.SIGTTIN)
    assert wait_lines(out / "nworkers_changed", 1, "nworkers_changed") == ["3 2"]
    runner.wait_serving(3)
    runner.signal(signal.SIGHUP)
    assert wait_lines(out / "on_reload", 1, "on_reload") == [str(primary)]
    status = runner.wait_status(lambda s: len(s["workers"]) == 3 and not pids_of(s) & workers
                                and s["primary"]["replacing"] is None
                                and not s["primary"]["queued"], "the reload", timeout=30)
    # A hang (--timeout 2): the primary aborts the worker, whose worker_abort runs.
    hung = threading.Thread(target=lambda: _ignore_errors(get, address, "/block?s=8"),
                            daemon=True)
    hung.start()
    aborted = wait_lines(out / "worker_abort", 1, "worker_abort", timeout=20)
    assert int(aborted[0]) in pids_of(status)
    runner.signal(signal.SIGTERM)
    assert runner.proc.wait_exit(30) == 0
    assert lines_of(out / "on_exit") == [str(primary)]
    exited = {int(line.split()[1]) for line in lines_of(out / "child_exit")}
    assert workers <= exited and all(entry.split()[0] == str(primary)
                                     for entry in lines_of(out / "child_exit"))
    assert workers - {victim} <= {int(p) for p in lines_of(out / "worker_exit")}
    assert not os.path.exists(out / "pid")                      # removed at exit
    hung.join(10)


def _ignore_errors(function, *args):
    try:
        function(*args)
    except (OSError, http.client.HTTPException):
        pass


# -- gunicorn's command line, on Django (MODULE form) ----------------------------------------
def test_gunicorn_command_line_on_django(runner_factory, tmp_path):
    pytest.importorskip("django", reason="the webtest extra is not installed")
    pid = tmp_path / "pid"
    runner = runner_factory(
        "-w", "2", "-b", "127.0.0.1:0", "--chdir", WEB, "django_app", "--pid", str(pid),
        "--access-logfile", "-", "--access-logformat", "DJ %(m)s %(U)s %(s)s %(B)s",
        "--keep-alive", "3", "--graceful-timeout", "5", "--max-requests", "100",
        "--max-requests-jitter", "5", "-e", "FF_X=1", "-t", "30", "-n", "djangoapp",
        "--error-logfile", "-", "--log-level", "INFO", "-k", "sync", "--threads", "4")
    status = runner.wait_serving(2)
    assert lines_of(pid) == [str(runner.pid)]
    code, _, body = get(runner.address(), "/whoami")
    assert code == 200 and body["kind"] == "django" and body["pid"] in pids_of(status)
    wait_until(lambda: "DJ GET /whoami 200 " in runner.output(), 10, "the access line")
    assert "worker class sync: a WSGI app is served on each worker's event loop" \
        in runner.output()
    assert status["primary"]["name"] == "djangoapp"


# -- small faults ---------------------------------------------------------------------------
def test_wsgi_app_type_on_an_asgi_app_is_refused_before_forking(tmp_path):
    out = subprocess.run(RUN + ["switch_asgi:app", "--app-dir", WEB, "--app-type", "wsgi",
                                "--control-socket", str(tmp_path / "c.sock")],
                         env=PY.env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "fastfork run: error: switch_asgi:app: --app-type wsgi, but it is an ASGI app (async, "
        "takes scope, receive, send): give --app-type asgi, or leave it out"]


def test_two_apps_of_one_name_on_two_ports_both_start(tmp_path):
    env = {"FASTFORK_RUN_DIR": str(tmp_path)}
    started = []
    try:
        for _ in range(2):
            started.append(ClusterProcess(
                ["fastfork", "run", "switch_asgi:app", "--app-dir", WEB, "--workers", "1",
                 "--port", "0"], impl=PY, env=env, script="-m"))

        def both():
            socks = sorted(p for p in os.listdir(tmp_path) if p.endswith(".sock"))
            return socks if len(socks) == 2 else None
        socks = wait_until(both, 20, "two control sockets")
        assert all(s.startswith("switch_asgi@127.0.0.1:") for s in socks)
        out = subprocess.run([sys.executable, "-m", "fastfork", "status", "switch_asgi",
                              "--json"], env=PY.env(env), capture_output=True, text=True,
                             timeout=20)
        assert out.returncode == 0, out.stderr
        assert {a["primary"]["pid"] for a in json.loads(out.stdout)} == \
            {p.pid for p in started}
    finally:
        for proc in started:
            proc.close()


def _delivered(pid, signum):
    with open(f"/proc/{pid}/status") as f:
        pending = next(line for line in f if line.startswith("ShdPnd:")).split()[1]
    return not int(pending, 16) & (1 << (signum - 1))


_SIGNALLER = r"""
import os, signal, sys
pid, ready, go = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
os.read(ready, 1)
for _ in range(2):
    os.kill(pid, signal.SIGTTOU)
    while True:                    # until delivered: the kernel would keep one of two pending
        with open(f"/proc/{pid}/status") as f:
            pending = next(l for l in f if l.startswith("ShdPnd:")).split()[1]
        if not int(pending, 16) & (1 << (signal.SIGTTOU - 1)):
            break
os.write(go, b"x")
"""


def test_two_signals_before_python_runs_its_handler_count_twice():
    # Python runs a signal's handler once for any number of that signal delivered
    # before the main thread gets back to Python: here the main thread waits for
    # the GIL, which another thread holds in a C call until both SIGTTOU were
    # delivered.  The primary counts the wakeup fd's bytes, one per delivery.
    import ctypes
    from fastfork.primary.signals import SignalQueue
    queue = SignalQueue()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    signaller = subprocess.Popen([sys.executable, "-c", _SIGNALLER, str(os.getpid()),
                                  str(ready_r), str(go_w)], pass_fds=(ready_r, go_w))
    libc = ctypes.PyDLL(None)           # PyDLL: the call keeps the GIL

    def hold_the_gil():
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTTOU])   # to the main thread
        os.write(ready_w, b"x")
        libc.read(go_r, ctypes.create_string_buffer(1), 1)

    queue.install(wake_w)
    try:
        holder = threading.Thread(target=hold_the_gil)
        holder.start()
        holder.join(30)
        assert signaller.wait(30) == 0
        queue.arrived(os.read(wake_r, 4096))
        assert list(queue.pop_all()).count(signal.SIGTTOU) == 2
    finally:
        queue.restore()
        signaller.wait(10)
        for fd in (wake_r, wake_w, ready_r, ready_w, go_r, go_w):
            os.close(fd)


def test_every_sigttou_counts(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "3", "--bind", "127.0.0.1:0")
    runner.wait_serving(3)
    for _ in range(2):
        runner.signal(signal.SIGTTOU)
        # In a row, but each one delivered (the kernel keeps one of a pending pair).
        wait_until(lambda: _delivered(runner.pid, signal.SIGTTOU), 5, "SIGTTOU delivered")
    status = runner.wait_serving(1)
    assert status["primary"]["size"] == 1


def test_ctrl_c_during_the_app_check_exits_130_without_a_traceback(tmp_path):
    marker = tmp_path / "importing"
    proc = ClusterProcess(["fastfork", "run", os.path.join(APPS, "slow_import.py") + ":app",
                           "--control-socket", str(tmp_path / "c.sock")], impl=PY,
                          env={"SLOW_IMPORT_MARKER": str(marker)}, script="-m")
    try:
        wait_until(marker.exists, 20, "the app's import to begin")
        os.killpg(proc.pid, signal.SIGINT)            # Ctrl-C: the whole process group
        assert proc.wait_exit(20) == 130
        proc._reader.join(5)
        assert "Traceback" not in proc.output() and "KeyboardInterrupt" not in proc.output()
        assert proc.leftovers() == []                 # the checking child is gone too
    finally:
        proc.close()


def test_fd_serves_the_socket_a_supervisor_opened(runner_factory):
    runner = runner_factory("switch_asgi:app", "--app-dir", WEB, "--fd", "3", "--workers", "1",
                            launcher=[os.path.join(APPS, "fd_launcher.py")])
    bound = runner.proc.wait_event("bound")["address"]
    status = runner.wait_serving(1)
    assert status["primary"]["addresses"] == [bound]
    host, _, port = bound.rpartition(":")
    assert get((host, int(port)), "/whoami")[2]["pid"] in pids_of(status)


def test_log_config_is_read_as_uvicorn_reads_it(tmp_path, monkeypatch):
    from fastfork.cli import logs
    yaml_file = tmp_path / "log.yaml"
    yaml_file.write_text("version: 1\nloggers:\n  uvicorn: {level: INFO}\n")
    ini_file = tmp_path / "log.ini"
    ini_file.write_text("[loggers]\nkeys=root\n[handlers]\nkeys=\n[formatters]\nkeys=\n")
    pytest.importorskip("yaml", reason="PyYAML is not installed (the test extra)")
    assert logs.read_log_config(str(yaml_file))["loggers"]["uvicorn"] == {"level": "INFO"}
    assert logs.read_log_config(str(ini_file)) is None           # fileConfig's INI
    (tmp_path / "bad.ini").write_text("[loggers]\nkeys=root\n")
    with pytest.raises(options.ConfigError, match=r"has no \[handlers\] section"):
        logs.read_log_config(str(tmp_path / "bad.ini"))
    (tmp_path / "bad.json").write_text('{"loggers": {}}')
    with pytest.raises(options.ConfigError, match='needs "version": 1'):
        logs.read_log_config(str(tmp_path / "bad.json"))
    monkeypatch.setitem(sys.modules, "yaml", None)               # PyYAML not installed
    with pytest.raises(options.ConfigError, match="reading YAML needs PyYAML: pip install "
                                                  "PyYAML"):
        logs.read_log_config(str(yaml_file))
