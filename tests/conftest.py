import os
import shutil
import tempfile

import pytest

from tests.harness import PY, ClusterProcess
from tests.runner_harness import Runner


@pytest.fixture
def cluster_factory(impl):
    """Start clusters with ``cluster_factory(*args)``; all are killed after the test."""
    started = []

    def start(*args, env=None, script=None):
        kwargs = {"script": script} if script else {}
        proc = ClusterProcess(args, impl=impl, env=env, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def rundir():
    # Short: a Unix socket path must fit in 108 bytes.
    path = tempfile.mkdtemp(prefix="ffops", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ctl_path(rundir):
    """A control socket's path for a test's primary (short, in ``rundir``)."""
    return os.path.join(rundir, "ctl.sock")


@pytest.fixture
def runner_factory(rundir):
    started = []

    def start(*args, impl=PY, env=None, launcher=None, script=None):
        # Each its own control socket: a test may run several primaries.
        name = "ctl" if not started else f"ctl{len(started)}"
        runner = Runner(rundir, args, impl=impl, env=env, launcher=launcher, name=name,
                        script=script)
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.close()


@pytest.fixture
def figures(capsys, request):
    """``figures(**values)`` prints one line of figures to the terminal, uncaptured."""
    def show(**values):
        text = " ".join(f"{k}={v}" for k, v in values.items())
        with capsys.disabled():
            print(f"\n[figures] {request.node.name}: {text}", flush=True)
    return show
