"""How long the WSGI pool stays eager once a call has slept (``eager_window`` in
fastfork/engine/_c/pool.pxi), as a table: no threads, no clock.  Which thread
a call goes to, calm or eager, is driven through a real worker in
tests/web/test_wsgi_pool.py."""

import pytest

pytest.importorskip("httptools", reason="the web extra is not installed")

from fastfork.engine import load
from tests.web_harness import need_engine

need_engine()

EAGER_MIN, EAGER_MAX = 0.5, 8.0


@pytest.mark.parametrize("now, until, length, expected", [
    # Never eager before: the shortest time.
    (100.0, 0.0, 0.0, (100.5, EAGER_MIN)),
    # Eager still: the time restarts, no longer than it was.
    (100.2, 100.5, 0.5, (100.7, 0.5)),
    (103.0, 104.0, 4.0, (107.0, 4.0)),
    # Calm again for less than the last eager time: the app blocks often, twice as long.
    (100.8, 100.5, 0.5, (101.8, 1.0)),
    (104.5, 104.0, 4.0, (112.5, 8.0)),
    # ... up to EAGER_MAX.
    (10.0, 9.0, EAGER_MAX, (10.0 + EAGER_MAX, EAGER_MAX)),
    # Calm for at least as long as it was eager: back to the shortest.
    (101.0, 100.5, 0.5, (101.5, EAGER_MIN)),
    (200.0, 100.5, EAGER_MAX, (200.5, EAGER_MIN)),
])
def test_eager_window(now, until, length, expected):
    assert load()._eager_window(now, until, length) == pytest.approx(expected)
