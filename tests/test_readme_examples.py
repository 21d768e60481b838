"""The examples of the README and the docs run as written (only the port is changed).

An example is a ```python block whose first line marks it:

* ``# NAME.py - run with: python NAME.py``: a program; those that import
  fastfork are servers of the line protocol (one line in, one line out), run
  until every worker has answered, then stopped with SIGTERM;
* ``# NAME.py - serve with: python -m fastfork run MODULE:APP [options]``: an
  ASGI or WSGI app, served by that command (with ``--bind`` added) until it
  answers HTTP, then stopped with SIGTERM.

Other programs (``gil.py``) are run by the tests of their page, in tests/docs.
"""

import glob
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests.harness import ROOT, free_port, session_pids, wait_until

PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                recursive=True))
MARK = re.compile(r"# (?P<file>[\w.]+\.py) - (?P<how>run|serve) with: (?P<command>.+)")


def examples(how):
    """``(page, file name, command, code)`` of every marked example served ``how``."""
    found = []
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            text = f.read()
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            mark = MARK.match(block.split("\n", 1)[0])
            if mark and mark["how"] == how:
                found.append((page, mark["file"], mark["command"], block))
    return found


def example(first_line):
    """The code of the one example whose first line is ``first_line``."""
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            text = f.read()
        for block in re.findall(r"```python\n(.*?)```", text, re.S):
            if block.startswith(first_line):
                return block
    raise AssertionError(f"no python example starts {first_line!r}")


SERVERS = [e for e in examples("run") if re.search(r"^import fastfork", e[3], re.M)]
APPS = examples("serve")


def test_the_pages_have_the_examples_this_file_runs():
    names = {(page, name) for page, name, _, _ in SERVERS + APPS}
    assert ("README.md", "app.py") in names
    assert ("docs/guides/first-server.md", "function_form.py") in names
    assert ("docs/guides/first-server.md", "blocking_form.py") in names
    assert ("docs/deployment/asgi-wsgi.md", "main.py") in names        # FastAPI
    assert ("docs/deployment/asgi-wsgi.md", "flask_app.py") in names


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert session_pids(proc.pid)[0] == []


def kill(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    proc.stdout.close()


def ask(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hi\n")
        return sock.makefile().readline()


@pytest.mark.parametrize("page, name, command, code", SERVERS,
                         ids=[f"{p}:{n}" for p, n, _, _ in SERVERS])
def test_example_serves_on_all_workers(tmp_path, impl, page, name, command, code):
    assert command == f"python {name}"
    port = free_port()
    code = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = tmp_path / name
    script.write_text(code)
    workers = re.search(r"workers=(\d+)", code)
    expected = int(workers[1]) if workers else len(os.sched_getaffinity(0))
    proc = subprocess.Popen([sys.executable, str(script)], env=impl.env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
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
        stop(proc)
    finally:
        kill(proc)


@pytest.mark.parametrize("page, name, command, code", APPS,
                         ids=[f"{p}:{n}" for p, n, _, _ in APPS])
def test_app_example_is_served_by_its_command(tmp_path, impl, page, name, command, code):
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "fastfork", "run"], command
    assert argv[4].split(":")[0] == name[:-len(".py")], command
    (tmp_path / name).write_text(code)
    port = free_port()
    env = dict(impl.env(), FASTFORK_RUN_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, *argv[1:], "--bind", f"127.0.0.1:{port}"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        def answered():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    return r.status, r.read()
            except OSError:
                return None            # not listening yet
        status, body = wait_until(answered, 30, f"{command} to answer")
        assert status == 200 and body, body
        stop(proc)
    finally:
        kill(proc)
