"""A real HAProxy in front of two fastfork instances, as in production.

HAProxy (the Debian package; `.ci/run` installs it) balances two `fastfork
run` primaries on two loopback addresses, checks each one's /readyz, and
sends PROXY protocol v2.  Under load from a client address of its own, one
instance is reloaded (SIGHUP) and the other stopped (SIGTERM with a shutdown
delay): no request fails, and every one the apps saw came from the client's
real address, not HAProxy's.
"""

import os
import shutil
import signal
import subprocess
import textwrap

import pytest

from tests.harness import free_port, wait_until
from tests.loadgen import Load
from tests.runner_harness import OPS_APP, pids_of

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                      else None)
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed "
                                "(apt-get install haproxy; .ci/run does)")

CLIENT = "127.0.0.5"         # the address the load comes from



def port_of(address):
    return int(address.rpartition(":")[2])


@pytest.fixture
def haproxy(tmp_path):
    started = []

    def start(servers):
        port = free_port("127.0.0.1")
        lines = "\n".join(
            f"    server {name} {host}:{port_of(bind)} check port {port_of(health)}"
            for name, host, bind, health in servers)
        config = tmp_path / "haproxy.cfg"
        config.write_text(textwrap.dedent("""\
            global
                maxconn 2000
            defaults
                mode tcp
                timeout connect 2s
                timeout client 10s
                timeout server 10s
                retries 3
                option redispatch
            frontend front
                bind 127.0.0.1:{port}
                default_backend fastfork
            backend fastfork
                balance leastconn
                option httpchk GET /readyz
                http-check expect status 200
                default-server inter 100ms fall 1 rise 2 send-proxy-v2
            """).format(port=port) + lines + "\n")
        check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        started.append(proc)
        return ("127.0.0.1", port), proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()


def instance(runner_factory, host):
    runner = runner_factory(f"{OPS_APP}:handle", "--workers", "2", "--bind", f"{host}:0",
                            "--health", f"{host}:0", "--proxy-protocol",
                            "--proxy-allow-from", "127.0.0.1", "--shutdown-delay", "1",
                            "--graceful-timeout", "5")
    status = runner.wait_serving(2)
    return runner, status["primary"]["addresses"][0], status["primary"]["endpoints"][0]


def peer_check(payload, reply):
    return reply.split()[0] == CLIENT.encode()


def test_reload_and_stop_behind_haproxy_lose_nothing(runner_factory, haproxy):
    a, a_bind, a_health = instance(runner_factory, "127.0.0.2")
    b, b_bind, b_health = instance(runner_factory, "127.0.0.3")
    front, proxy = haproxy([("a", "127.0.0.2", a_bind, a_health),
                            ("b", "127.0.0.3", b_bind, b_health)])
    # HAProxy is up once it answers; both servers once both saw traffic.
    wait_until(lambda: Load(front, concurrency=1, max_requests=1, payload=b"peer\n",
                            check=peer_check, source=CLIENT, duration=5).run().answered, 20,
               "HAProxy to pass a request")
    a_before = a.status()["totals"]["dispatched"]
    b_before = b.status()["totals"]["dispatched"]
    load = Load(front, concurrency=4, duration=60, payload=b"peer\n", check=peer_check,
                source=CLIENT, keep_records=True).start()
    try:
        wait_until(lambda: a.status()["totals"]["dispatched"] > a_before + 50 and
                   b.status()["totals"]["dispatched"] > b_before + 50, 20, "both serving")
        old = pids_of(a.status())
        a.signal(signal.SIGHUP)                       # rolling reload of one
        a.wait_status(lambda s: len(s["workers"]) == 2 and not pids_of(s) & old and
                      s["primary"]["replacing"] is None and not s["primary"]["queued"],
                      "instance a reloaded", timeout=30)
        b.signal(signal.SIGTERM)                      # and the other one leaves
        assert b.proc.wait_exit(30) == 0
        settled = load.answered
        wait_until(lambda: load.answered > settled + 200, 20, "load served by a alone")
    finally:
        load.stop()
        report = load.join()
    print(f"\nbehind HAProxy: {report}")
    assert report.failed == 0, (report.errors, report.failures()[:5], proxy.poll())
    assert report.answered > 400
    assert "after a 1s shutdown delay" in b.output()
