"""The README's examples run as written (only the port is changed)."""

import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from tests.harness import ROOT, free_port, session_pids, wait_until


def readme_example(first_line):
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no python example starting {first_line!r}")



def ask(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hi\n")
        return sock.makefile().readline()


@pytest.mark.parametrize("name, workers", [("# app.py", None), ("# function_form.py", 4),
                                           ("# blocking_form.py", 2)])
def test_readme_example_serves_on_all_workers(tmp_path, impl, name, workers):
    port = free_port()
    code = readme_example(name).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script)], env=impl.env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        expected = workers or len(os.sched_getaffinity(0))
        seen = set()

        def all_answered():
            try:
                line = ask(port)
            except OSError:
                return False           # not listening yet
            assert line.startswith("hello from worker "), line
            seen.add(line)
            return len(seen) == expected

        wait_until(all_answered, 20, f"answers from {expected} workers")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert session_pids(proc.pid)[0] == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        proc.stdout.close()
