"""What the tests and the benchmarks share: the implementation fixture."""

import pytest

from tests.implementations import BOTH


@pytest.fixture(params=BOTH, ids=[f"{impl.implementation}" for impl in BOTH])
def impl(request):
    """Run the test against the Cython hot path and its pure-Python twin
    (a ``tests.implementations.Impl``)."""
    return request.param
