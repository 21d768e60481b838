"""What the tests and the benchmarks share: the implementation fixture."""

import pytest

from tests.implementations import BOTH

# Fixtures shared by folders of tests, defined beside the helpers they use,
# so that no test module imports a fixture from another.
pytest_plugins = ("tests.web_harness",)


@pytest.fixture(params=BOTH, ids=[f"{impl.implementation}" for impl in BOTH])
def impl(request):
    """Run the test against the Cython hot path and its pure-Python twin
    (a ``tests.implementations.Impl``)."""
    return request.param
