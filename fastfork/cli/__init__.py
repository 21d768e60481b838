"""``python -m fastfork COMMAND``: demo, run, status (and ``--version``).

Each command is a module with a ``main(argv)`` that returns the exit code;
it is imported only when chosen, so ``status`` never loads the web stack.
"""

import importlib
import os
import sys

from .. import __version__

COMMANDS = {
    "demo": ("fastfork.demo", "show the cluster model live: cores, workers, round-robin, re-fork"),
    "run": ("fastfork.cli.run",
            "serve an app on all cores: python -m fastfork run MODULE:CALLABLE"),
    "status": ("fastfork.cli.status", "show the workers of a running primary, like pm2 ls"),
}

USAGE = "usage: python -m fastfork {" + ",".join(COMMANDS) + "} [options]\n\n" + "\n".join(
    f"  {name:<8}{help_}" for name, (_, help_) in COMMANDS.items()) + (
    "\n\n  --version  print fastfork's version")


def open_closed_std_fds():
    """Put /dev/null on fds 0-2 where they are closed (``fastfork run ... >&-``,
    some daemon launchers), as daemons do: else Python has no sys.stdout (or
    stderr) to write to, and the next file or socket opened would take that
    number, and a print would go to a client."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False, errors="backslashreplace")


def main(argv=None):
    open_closed_std_fds()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"fastfork {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fastfork: unknown command {name!r}\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)
