"""State shared beyond one process: a real Redis holds the global counter.

The demo shows that workers share no memory; tests/apps/redis_counter.py is
the fix the README gives, served here by a real `fastfork run` against a real
redis-server (the Debian package; `.ci/run` installs it), which this test
starts, stops and starts again.
"""

import os
import shutil
import socket
import subprocess

import pytest

from tests.harness import free_port, request, wait_until
from tests.runner_harness import APPS

pytest.importorskip("redis", reason="the redis client is in the test extra")
REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed "
                                "(apt-get install redis-server; .ci/run does)")
APP = os.path.join(APPS, "redis_counter.py")



class RedisServer:
    def __init__(self, port, workdir):
        self.port, self.workdir, self.proc = port, workdir, None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.answers, 10, f"redis-server on port {self.port}")

    def answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16) == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


def test_the_global_count_lives_in_redis(runner_factory, redis_server):
    env = {"REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0"}
    runner = runner_factory(f"{APP}:handle", "--workers", "2", "--bind", "127.0.0.1:0", env=env)
    runner.wait_serving(2)
    address = runner.address()
    replies = [request(address, "hit").split() for _ in range(20)]
    locals_by_worker = {}
    for mine, total, worker in replies:
        locals_by_worker[worker] = int(mine)
    # Each worker counted only its own requests; Redis counted them all.
    assert [int(total) for _, total, _ in replies] == list(range(1, 21))
    assert len(locals_by_worker) == 2 and sum(locals_by_worker.values()) == 20

    # Redis goes away: each request says so, naming it, and is still answered.
    redis_server.stop()
    down = request(address, "hit")
    assert down.startswith(f"redis down: redis://127.0.0.1:{redis_server.port}/0: "), down
    assert all(w["state"] == "listening" for w in runner.status()["workers"])

    # Back again (empty: it kept nothing on disk): the global count goes on.
    redis_server.start()

    def served_with_redis():
        reply = request(address, "hit")
        return None if reply.startswith("redis down") else reply

    reply = wait_until(served_with_redis, 10, "the workers to reach Redis again")
    assert reply.split()[1] == "1", reply
