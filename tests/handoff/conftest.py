"""Fixtures of the hand-off's unit tests (the rig itself is ``rig.py``)."""

import contextlib

import pytest

from tests.handoff.rig import Rig


@pytest.fixture
def build(impl):
    """The build under test: its dispatcher, receiver and scheduler modules."""
    return impl.backend


@pytest.fixture
def stack():
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def rig_factory(stack, build):
    def make(**options):
        return Rig(stack, build, **options)
    return make
