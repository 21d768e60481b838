"""Drive a real `python -m fastfork run` primary through its control socket."""

import os
import sys

from tests.harness import PY, ROOT, ClusterProcess, wait_until
from fastfork.operations.status_socket import StatusError
from fastfork.operations.status_socket import request as control_request

APPS = os.path.join(ROOT, "tests", "apps")
OPS_APP = os.path.join(APPS, "ops_app.py")


class Runner:
    """One `python -m fastfork run ...` process and its control socket."""

    def __init__(self, rundir, args, impl=PY, env=None, launcher=None, name="ctl", script=None):
        self.socket_path = os.path.join(rundir, f"{name}.sock")
        run = ["fastfork", "run", *args, "--control-socket", self.socket_path]
        if script:
            # A program that sets things up, then runs `fastfork run` in itself.
            self.proc = ClusterProcess(run[2:], impl=impl, env=env, script=script)
        elif launcher:
            # A program that sets things up, then execs python -m fastfork run.
            self.proc = ClusterProcess(launcher[1:] + [sys.executable, "-m"] + run, impl=impl,
                                       env=env, script=launcher[0])
        else:
            self.proc = ClusterProcess(run, impl=impl, env=env, script="-m")
        self.pid = self.proc.pid

    def status(self):
        return control_request(self.socket_path)

    def try_status(self):
        try:
            return self.status()
        except StatusError:
            if self.proc.proc.poll() is not None:
                raise AssertionError(f"the primary exited ({self.proc.proc.returncode}):\n"
                                     f"{self.output()}") from None
            return None

    def wait_status(self, predicate, what, timeout=15):
        def check():
            status = self.try_status()
            return status if status is not None and predicate(status) else None
        try:
            return wait_until(check, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last status: {self.try_status()}\n"
                                 f"output:\n{self.output()}") from None

    def wait_serving(self, workers, timeout=15):
        """Wait for ``workers`` listening workers and no replacement running; returns status."""
        return self.wait_status(
            lambda s: (len(s["workers"]) == workers
                       and all(w["state"] == "listening" for w in s["workers"])
                       and s["primary"]["replacing"] is None and not s["primary"]["queued"]),
            f"{workers} listening workers", timeout)

    def address(self):
        host, _, port = self.status()["primary"]["addresses"][0].rpartition(":")
        return host, int(port)

    def output(self):
        return self.proc.output()

    def signal(self, sig):
        os.kill(self.pid, sig)

    def close(self):
        self.proc.close()


def pids_of(status):
    return {w["pid"] for w in status["workers"]}


# An ASGI app that answers its worker's pid, and what a broken deploy of it
# looks like: tests write one or the other to a file the cluster serves.
PID_APP = '''
import os


async def app(scope, receive, send):
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''
BROKEN_APP = 'raise RuntimeError("broken on purpose: a deploy that cannot import")\n'
