""""max" workers means the cores this process may use, not os.cpu_count()."""

import os
import subprocess
import sys

import pytest

from fastfork.cpus import parse_workers, usable_cpus


def test_usable_cpus_follows_cpu_affinity():
    # A child pinned to one core must see one usable core, whatever the machine has.
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from fastfork.cpus import parse_workers; print(parse_workers('max'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "1"


def test_usable_cpus_never_exceeds_affinity():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("text, expected", [("1", 1), (" 3 ", 3), ("MAX", None), (4, 4)])
def test_parse_workers_accepts(text, expected):
    assert parse_workers(text) == (usable_cpus() if expected is None else expected)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "", "2.5"])
def test_parse_workers_names_the_bad_value(text):
    with pytest.raises(ValueError, match=f"got {text!r}"):
        parse_workers(text)
