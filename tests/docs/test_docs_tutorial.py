"""The tutorial's programs that are not servers (tests/test_readme_examples.py runs
those) print what the tutorial says they print."""

import os
import re
import subprocess
import sys

from tests.harness import ROOT
from tests.test_readme_examples import example


def test_gil_py_shows_threads_sharing_one_core(tmp_path):
    script = tmp_path / "gil.py"
    script.write_text(example("# gil.py - run with: python gil.py"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert re.fullmatch(r"Python \S+, the GIL (on|off)", lines[0]), lines
    assert re.fullmatch(r"1 thread spinning: +[\d.]+ cores busy", lines[1]), lines
    threads = float(re.fullmatch(r"2 threads spinning: +([\d.]+) cores busy", lines[2])[1])
    assert re.fullmatch(r"2 processes spinning: +[\d.]+ cores busy", lines[3]), lines
    if lines[0].endswith("the GIL on"):
        # However busy the machine, two threads under the GIL never keep more
        # than one core busy (what they get may be far less).
        assert threads < 1.2, lines


def test_the_quiz_command_for_usable_cores(tmp_path):
    with open(os.path.join(ROOT, "docs", "tutorial.md")) as f:
        command = re.search(r'`(python -c "import fastfork, os; [^`]*")`', f.read())[1]
    out = subprocess.run([sys.executable] + ["-c", command.split('"')[1]],
                         capture_output=True, text=True, timeout=60)
    usable, total = map(int, out.stdout.split())
    assert 1 <= usable <= total
