"""``python -m fastfork COMMAND``: demo, run, status (and ``--version``).

Each command is a module with a ``main(argv)`` that returns the exit code;
it is imported only when chosen, so ``status`` never loads the web stack.
"""

import importlib
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


def main(argv=None):
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
