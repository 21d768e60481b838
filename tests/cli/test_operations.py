"""Operations of a running `python -m fastfork run`: reload, scaling, hang detection,
recycling, crash loop, privileges, socket activation, status and its control socket.

Each test drives a real primary (in its own session, killed after the test) and
watches it through its control socket, with deadlines, never sleeps.
"""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from tests.harness import PY, http_get, request, wait_until
from tests.implementations import DEFAULT
from tests.loadgen import LineClient, Load
from tests.runner_harness import APPS, OPS_APP, pids_of
from fastfork.operations.status_socket import peer_allowed, peer_credentials

def alive_counts(output):
    """From the primary's log, in order: how many workers were alive after each fork/exit."""
    alive, counts = 0, []
    for line in output.splitlines():
        if re.search(r"INFO forked worker \d+", line):
            alive += 1
            counts.append(alive)
        elif re.search(r"worker \d+ \(pid \d+\).* (exited with|died unexpectedly)", line):
            alive -= 1
            counts.append(alive)
    return counts


# -- reload ---------------------------------------------------------------------------
def test_reload_under_load_answers_every_request(runner_factory, rundir, impl):
    app = os.path.join(rundir, "app.py")
    shutil.copy(OPS_APP, app)
    runner = runner_factory(f"{app}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            impl=impl)
    before = pids_of(runner.wait_serving(2))
    address = runner.address()
    with open(app) as f:
        code = f.read()
    with open(app, "w") as f:
        f.write(code.replace('VERSION = "1"', 'VERSION = "2"'))   # new code on disk
    reloads = 3
    # Some requests stay open a while, so a reload must let them finish.
    client = LineClient(lambda n: b"slow 0.2\n" if n % 10 == 0 else b"whoami\n",
                        check=lambda line, reply: (reply.endswith(b"slept\n")
                                                   or len(reply.split()) == 4), timeout=10)
    with Load(address, concurrency=6, duration=100, client=client, keep_replies=True) as load:
        load.wait_more(50, "load before the reload")
        for _ in range(reloads):
            runner.signal(signal.SIGHUP)
            after = runner.wait_status(
                lambda s: (len(s["workers"]) == 2 and not pids_of(s) & before
                           and s["primary"]["replacing"] is None and not s["primary"]["queued"]
                           and all(w["state"] == "listening" for w in s["workers"])),
                "every worker replaced", timeout=30)
            before = pids_of(after)
        load.wait_more(50, "load after the reloads")
    report = load.report()
    print(f"\n{reloads} reloads under load ({impl}): {report}")
    assert report.failed == 0, report.errors
    versions = {r.split()[3].decode() for r in load.replies if not r.endswith(b"slept\n")}
    assert versions == {"1", "2"}, versions          # served by old, then new code
    assert request(address, "whoami").split()[3] == "2"
    assert all(w["restarts"] == reloads for w in after["workers"])
    # One at a time: never more than 2 + 1 workers alive.
    assert max(alive_counts(runner.output())) == 3, runner.output()


def test_reload_with_broken_code_keeps_the_old_workers(runner_factory, rundir):
    app = os.path.join(rundir, "app.py")
    shutil.copy(OPS_APP, app)
    runner = runner_factory(f"{app}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--backoff-max", "0.2")
    before = pids_of(runner.wait_serving(2))
    with open(app, "a") as f:
        f.write("\nraise RuntimeError('deploy went wrong')\n")
    runner.signal(signal.SIGHUP)
    wait_until(lambda: "reload stopped" in runner.output(), 15, "the reload to give up")
    status = runner.wait_serving(2)
    assert pids_of(status) == before
    assert "deploy went wrong" in runner.output()
    assert request(runner.address(), "whoami").split()[1] in {str(p) for p in before}


def test_reload_waits_for_explicit_ready(runner_factory):
    runner = runner_factory(f"{OPS_APP}:serve_when_ready", "--app-type", "main",
                            "--wait-ready", "--workers", "1", "--bind", "127.0.0.1:0",
                            env={"OPS_READY_DELAY": "0.5"})
    (old,) = pids_of(runner.wait_serving(1))
    runner.signal(signal.SIGHUP)
    # Not wait_serving alone: it can see the old worker before SIGHUP is handled.
    status = runner.wait_status(
        lambda s: (len(s["workers"]) == 1 and s["workers"][0]["pid"] != old
                   and s["workers"][0]["state"] == "listening"
                   and s["primary"]["replacing"] is None and not s["primary"]["queued"]),
        "the replacement serving alone", timeout=20)
    (new,) = pids_of(status)
    lines = runner.output().splitlines()
    ready_at = next(i for i, line in enumerate(lines) if line == f"OPS ready {new}")
    stop_at = next(i for i, line in enumerate(lines) if f"stopping worker 1 (pid {old})" in line)
    assert ready_at < stop_at, "\n".join(lines)


# -- scaling --------------------------------------------------------------------------------
def test_scale_up_and_down_with_signals(runner_factory, impl):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            impl=impl)
    runner.wait_serving(2)
    address = runner.address()
    runner.signal(signal.SIGTTIN)
    status = runner.wait_serving(3)
    assert status["primary"]["size"] == 3
    assert sorted(w["index"] for w in status["workers"]) == [0, 1, 2]
    # Round-robin over sequential requests: each of the 3 workers gets its share.
    served = [int(request(address, "whoami").split()[1]) for _ in range(9)]
    assert set(served) == pids_of(status)
    assert all(served.count(pid) == 3 for pid in set(served)), served
    runner.signal(signal.SIGTTOU)
    status = runner.wait_serving(2)
    served = [int(request(address, "whoami").split()[1]) for _ in range(6)]
    assert set(served) == pids_of(status)
    assert sorted(w["index"] for w in status["workers"]) == [0, 1]


# -- hang detection -----------------------------------------------------------------------
def test_a_blocked_loop_is_aborted_and_replaced(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--timeout", "1")
    before = runner.wait_serving(2)
    address = runner.address()
    blocker = socket.create_connection(address)
    try:
        blocker.sendall(b"block 30\n")
        status = runner.wait_status(lambda s: len(pids_of(s) - pids_of(before)) == 1
                                    and len(s["workers"]) == 2
                                    and all(w["state"] == "listening" for w in s["workers"]),
                                    "the hung worker replaced", timeout=20)
        assert blocker.recv(100) == b""            # its connection died with it
    finally:
        blocker.close()
    (hung,) = pids_of(before) - pids_of(status)
    output = runner.output()
    assert re.search(rf"\(pid {hung}\) sent no heartbeat for [\d.]+s \(timeout 1s\)", output)
    assert re.search(rf"\(pid {hung}\) exited with signal SIGABRT", output), output
    assert "ops_app.py" in output and "in handle" in output   # faulthandler's traceback
    assert {int(request(address, "whoami").split()[1]) for _ in range(4)} == pids_of(status)


@pytest.mark.parametrize("whole_group", [False, True], ids=["primary", "whole-group"])
def test_a_primary_stopped_past_the_timeout_takes_no_worker_for_hung(runner_factory,
                                                                     whole_group):
    # SIGSTOP for 3 timeouts (a debugger, or Ctrl-Z on the whole group), then
    # SIGCONT: the workers beat on time (their beats wait unread) or were
    # stopped too.  Before, the primary judged them at once and aborted both.
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--timeout", "1")
    before = runner.wait_serving(2)
    address = runner.address()

    def stop(sig):
        if whole_group:
            os.killpg(runner.pid, sig)      # the primary leads its own session
        else:
            runner.signal(sig)

    stop(signal.SIGSTOP)
    try:
        time.sleep(3.0)                   # the pause itself, not a wait for an outcome
    finally:
        stop(signal.SIGCONT)
    # A connection held on each worker (rr: one each), which their next beats
    # report: proof that the primary has heard from both since the pause.
    held = [socket.create_connection(address, timeout=10) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(b"whoami")         # no newline: the worker waits for the rest
        status = runner.wait_status(lambda s: len(s["workers"]) == 2
                                    and all(w["open"] == 1 for w in s["workers"]),
                                    "a beat from each worker after the pause", timeout=15)
    finally:
        for sock in held:
            sock.close()
    output = runner.output()
    assert pids_of(status) == pids_of(before), output
    assert "sent no heartbeat" not in output
    assert re.search(r"the primary did not run for [\d.]+s \(stopped, or starved of CPU\)",
                     output), output


def test_a_worker_serves_on_while_its_primary_is_stopped(runner_factory):
    # A stopped primary reads nothing from its control channel, which fills:
    # on its own after about 250 heartbeats (13 s at --timeout 0.2), here at
    # once, with a few large messages from a thread of the worker.  The
    # worker's loop sent its heartbeats blocking, and then served nothing
    # until the primary ran again.
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--timeout", "0.2")
    (pid,) = pids_of(runner.wait_serving(1))
    filler = socket.create_connection(runner.address(), timeout=10)
    probe = socket.create_connection(runner.address(), timeout=5)
    try:
        filler.sendall(b"fill 40")        # no newline: each waits for the rest
        probe.sendall(b"whoami")
        runner.wait_status(lambda s: s["workers"][0]["open"] == 2, "both connections taken")
        runner.signal(signal.SIGSTOP)
        try:
            filler.sendall(b"\n")
            assert filler.recv(100) == b"filling\n"
            time.sleep(1.0)               # 20 heartbeat intervals: the pause itself
            probe.sendall(b"\n")
            assert probe.recv(100).split()[1] == str(pid).encode()
        finally:
            runner.signal(signal.SIGCONT)
    finally:
        filler.close()
        probe.close()
    runner.wait_serving(1)
    assert "sent no heartbeat" not in runner.output()


def test_a_sigterm_to_the_whole_group_forks_no_replacement(runner_factory):
    # systemd's default KillMode=control-group: every process gets SIGTERM,
    # the primary now and then a moment after its workers, which it then
    # re-forked (2 runs in 3), only to stop them again.  Eight runs.
    for _ in range(8):
        runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2",
                                "--bind", "127.0.0.1:0", impl=DEFAULT)
        runner.wait_serving(2)
        os.killpg(runner.pid, signal.SIGTERM)     # the primary leads its own session
        assert runner.proc.wait_exit(30) == 0
        output = runner.output()
        assert len(re.findall(r"INFO forked worker \d+", output)) == 2, output


def test_readyz_is_503_while_every_worker_is_stalled(runner_factory):
    # Both loops blocked in a handler: the primary sends them nothing and new
    # connections only wait in the backlog.  /readyz said 200 meanwhile.
    if DEFAULT.pure:
        pytest.skip("the Cython build is not built: the twin finds a blocked loop only "
                    "by what it leaves unread, which this worker's reader thread takes")
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--health", "127.0.0.1:0", "--stall-ms", "100", impl=DEFAULT)
    status = runner.wait_serving(2)
    health = status["primary"]["endpoints"][0]
    assert http_get(health, "/readyz") == (200, "ready: 2 of 2 workers serving\n")
    address = runner.address()
    clients = [socket.create_connection(address, timeout=30) for _ in range(3)]
    try:
        for sock in clients[:2]:
            sock.sendall(b"block 5\n")  # rr: one each
        clients[2].sendall(b"whoami\n")  # waits in the backlog: answered after the blocks
        runner.wait_status(lambda s: all(w["stalled"] for w in s["workers"]),
                           "both workers stalled", timeout=4)
        code, body = http_get(health, "/readyz")
        assert code == 503 and body.startswith("every serving worker is stalled"), body
        for sock in clients[:2]:
            assert sock.makefile().readline().split()[1] == "unblocked"
        assert clients[2].makefile().readline().split()[1].isdigit()
    finally:
        for sock in clients:
            sock.close()
    wait_until(lambda: http_get(health, "/readyz")[0] == 200, 10, "/readyz back to 200")


# -- recycling ----------------------------------------------------------------------------
def test_max_requests_recycles_one_worker_at_a_time(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--max-requests", "5", "--max-requests-jitter", "2")
    first = pids_of(runner.wait_serving(2))
    address = runner.address()
    for _ in range(16):        # 8 each: both pass their limit (5..7) about together
        request(address, "whoami")
    status = runner.wait_status(lambda s: not pids_of(s) & first and s["totals"]["restarts"] >= 2
                                and s["primary"]["replacing"] is None,
                                "both workers recycled", timeout=20)
    assert all(w["dispatched"] < 5 for w in status["workers"])
    output = runner.output()
    assert len(re.findall(r"replacing worker \d+ .*: max-requests", output)) >= 2
    assert max(alive_counts(output)) == 3, output          # never two at once


def test_max_memory_recycles_the_big_workers_one_at_a_time(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--max-memory", "100M")
    before = runner.wait_serving(2)
    address = runner.address()
    assert all(w["rss"] < 100 * 2**20 for w in before["workers"])
    assert int(request(address, "grow 120")) > 100 * 2**20
    status = runner.wait_status(lambda s: len(pids_of(s) - pids_of(before)) == 1
                                and s["primary"]["replacing"] is None,
                                "the big worker recycled", timeout=20)
    (replaced,) = pids_of(before) - pids_of(status)
    assert re.search(rf"replacing worker \d+ \(pid {replaced}, index \d\): max-memory \(RSS",
                     runner.output())
    assert sorted(w["restarts"] for w in status["workers"]) == [0, 1]   # only that one
    # Both grow at once (round-robin: one request each): still one at a time.
    grown = {request(address, "grow 120") for _ in range(2)}
    assert all(int(rss) > 100 * 2**20 for rss in grown)
    status = runner.wait_status(lambda s: not pids_of(s) & pids_of(status)
                                and s["primary"]["replacing"] is None,
                                "both big workers recycled", timeout=20)
    assert all(w["rss"] < 100 * 2**20 for w in status["workers"])
    assert max(alive_counts(runner.output())) == 3, runner.output()


# -- crash loop ---------------------------------------------------------------------------------
def test_crash_loop_stops_with_a_clear_error(runner_factory):
    runner = runner_factory(f"{OPS_APP}:crash", "--app-type", "main", "--workers", "2",
                            "--bind", "127.0.0.1:0", "--max-restarts", "4",
                            "--backoff-base", "0.01", "--backoff-max", "0.05")
    code = runner.proc.wait_exit(30)
    output = runner.output()
    assert code == 3, output
    assert re.search(r"workers died 4 times in a row within 1\.0s of starting; not re-forking",
                     output), output
    assert "re-forking in" in output          # the backoff is in the log
    assert runner.proc.leftovers() == []


# -- privileges and systemd -----------------------------------------------------------------
def test_workers_drop_to_user_and_group(runner_factory):
    if os.getuid() != 0:
        pytest.skip("dropping privileges needs root")
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0",
                            "--user", "nobody", "--group", "nogroup")
    status = runner.wait_serving(1)
    pid = int(request(runner.address(), "whoami").split()[1])
    assert pids_of(status) == {pid}
    with open(f"/proc/{pid}/status") as f:
        ids = dict(line.split(":", 1) for line in f if line.startswith(("Uid", "Gid", "Groups")))
    assert ids["Uid"].split() == ["65534"] * 4
    assert ids["Gid"].split() == ["65534"] * 4
    assert ids["Groups"].split() == ["65534"]
    with open(f"/proc/{runner.pid}/status") as f:
        # the primary stays
        assert next(line for line in f if line.startswith("Uid")).split()[1] == "0"


def test_systemd_socket_activation_uses_the_passed_socket(runner_factory):
    launcher = [os.path.join(APPS, "ops_systemd.py")]
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", launcher=launcher)
    passed = runner.proc.wait_event("activated")["address"]
    status = runner.wait_serving(2)
    assert status["primary"]["addresses"] == [passed]
    assert "using the socket systemd passed for " + passed in runner.output()
    host, _, port = passed.rpartition(":")
    assert {int(request((host, int(port)), "whoami").split()[1]) for _ in range(4)} \
        == pids_of(status)


# -- status and the control socket ----------------------------------------------------------
def test_status_shows_the_real_pids(runner_factory, rundir):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0",
                            "--name", "opsdemo")
    status = runner.wait_serving(2)
    served = {int(request(runner.address(), "whoami").split()[1]) for _ in range(4)}
    assert served == pids_of(status)
    env = PY.env()
    cli = subprocess.run([sys.executable, "-m", "fastfork", "status", "--socket",
                          runner.socket_path, "--json"], env=env, capture_output=True,
                         text=True, timeout=20)
    assert cli.returncode == 0, cli.stderr
    answer = json.loads(cli.stdout)
    assert pids_of(answer) == served
    assert answer["primary"]["pid"] == runner.pid
    assert answer["totals"]["dispatched"] >= 4
    assert all(w["rss"] > 0 and w["state"] == "listening" for w in answer["workers"])
    # The table, found through the control directory without --socket.
    os.rename(runner.socket_path, os.path.join(rundir, "opsdemo.sock"))
    env["FASTFORK_RUN_DIR"] = rundir
    cli = subprocess.run([sys.executable, "-m", "fastfork", "status"], env=env,
                         capture_output=True, text=True, timeout=20)
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0].startswith(f"opsdemo: primary pid {runner.pid}, ")
    assert lines[1].split() == ["id", "index", "pid", "uptime", "restarts", "dispatched",
                                "requests", "open", "queued", "rss", "state"]
    rows = {int(line.split()[2]): line.split() for line in lines[2:4]}
    assert set(rows) == served
    assert lines[4].startswith("total")


def test_control_socket_is_private_and_checks_the_peer(runner_factory):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "1", "--bind", "127.0.0.1:0")
    runner.wait_serving(1)
    mode = os.stat(runner.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    if os.getuid() != 0:
        pytest.skip("connecting as another user needs root")
    # Reach the socket as root for the filesystem (fsuid 0) but as nobody for
    # SO_PEERCRED (euid 65534): only the peer-credential check can refuse it.
    probe = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "os.seteuid(65534)\n"
        "libc.setfsuid(0)\n"
        "from fastfork.operations.status_socket import StatusError, request\n"
        "try:\n"
        "    print('answered', request(sys.argv[1]))\n"
        "except StatusError as exc:\n"
        "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", probe, runner.socket_path], env=PY.env(),
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("permission denied: uid 65534 is neither the primary's user "
                                  "(0) nor root")
    assert runner.status()["primary"]["pid"] == runner.pid        # root still may


def test_peer_credentials_and_the_rule():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())
    assert peer_allowed(1000, 1000) and peer_allowed(0, 1000)
    assert not peer_allowed(1001, 1000) and not peer_allowed(65534, 0)
