import pytest

from harness import ClusterProcess


@pytest.fixture(params=["c", "py"], ids=["c-dispatch", "py-dispatch"])
def impl(request):
    """Run the test against the Cython hot path and its pure-Python twin."""
    return request.param


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
