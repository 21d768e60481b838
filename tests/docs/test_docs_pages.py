"""What the README and the docs pages say about the project is true of the tree.

The Sphinx build (.ci/run) checks the links between docs pages; here: the
README's links, the paths and tests the pages name, the command lines they
show, and the README's own promises (its set-up commands, its length)."""

import glob
import os
import re
import shlex

import pytest

from tests.harness import ROOT

PAGES = ["README.md"] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                recursive=True))


def read(page):
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def test_the_readme_is_a_landing_page_with_the_two_set_up_commands():
    text = read("README.md")
    assert len(text.splitlines()) <= 200
    # .ci/run runs the test command as the README writes it; the repository's
    # hook looks for the demo command.
    assert ("python3 -m venv .venv && .venv/bin/python -m pip install -e '.[test]' && "
            ".venv/bin/python -m pytest") in text
    assert ("python3 -m venv .venv && .venv/bin/python -m pip install -e . && "
            ".venv/bin/python -m fastfork demo") in text
    assert "python -m fastfork demo" in text
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert ("python3 -m venv .venv && .venv/bin/python -m pip install -e '.[test]' && "
                ".venv/bin/python -m pytest") in f.read()


def test_the_readme_links_reach_the_docs():
    text = read("README.md")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert targets
    for target in targets:
        if "://" in target:
            continue
        assert os.path.isfile(os.path.join(ROOT, target)), target
    # A newcomer's questions, each answered one click from the README.
    for page in ("docs/deployment/asgi-wsgi.md", "docs/deployment/systemd.md",
                 "docs/reference/metrics.md", "docs/benchmarks.md"):
        assert f"]({page}" in text, page


@pytest.mark.parametrize("page", PAGES)
def test_the_paths_and_tests_a_page_names_exist(page):
    text = read(page)
    for path, test in re.findall(
            r"`((?:tests|fastfork|benchmarks|csrc|docs)/[\w/.-]+\.(?:py|pyx|pxi|pxd|c|h|js|lua|md))"
            r"(?:::(\w+))?`", text):
        if path.startswith("benchmarks/results/"):
            continue                                  # what a benchmark run writes
        full = os.path.join(ROOT, path)
        assert os.path.isfile(full), f"{page} names {path}, which does not exist"
        if test:
            with open(full) as f:
                assert re.search(rf"^def {test}\(", f.read(), re.M), \
                    f"{page} names {path}::{test}, which does not exist"


@pytest.mark.parametrize("page", PAGES)
def test_every_code_block_says_its_language(page):
    # A stray fence would otherwise turn the prose after it into code, silently.
    inside = False
    for number, line in enumerate(read(page).splitlines(), 1):
        if line.lstrip().startswith("```"):
            if not inside:
                assert line.strip() != "```", f"{page}:{number}: a block without a language"
            inside = not inside
    assert not inside, f"{page}: a block is never closed"


def run_commands(text):
    """The arguments of every ``python -m fastfork run ...`` (or ``fastfork run ...``)
    line of the console blocks of ``text``."""
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            command = re.match(r"\$ (?:python -m )?fastfork run (.*)", line)
            if command:
                yield command[1]


@pytest.mark.parametrize("page", PAGES)
def test_every_fastfork_run_command_shown_is_accepted(page):
    from fastfork.cli import aliases, run

    for command in run_commands(read(page)):
        argv = shlex.split(command)
        aliases.refuse(argv)                          # no flag that fastfork refuses
        run.build_parser().parse_args(argv)           # every flag known, every value given
