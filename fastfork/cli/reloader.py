"""``fastfork run --reload``: the primary watches the app's files and reloads every worker.

uvicorn's ``--reload`` restarts one server process and refuses ``--workers``;
here the watching is done by a thread of the primary (never in a worker),
and a change starts the primary's own rolling reload (what SIGHUP does:
``Cluster.request_reload`` wakes the primary's loop): the workers are replaced
one at a time, new before old, each new one ready before its old one stops,
so a client sees no failed request.  A new worker whose code fails to import
never gets ready: the reload stops there, the old workers keep serving, and
the error is printed once, by that worker.

What is watched is uvicorn's: ``--reload-dir`` (default: the current
directory, and the app file's when it is elsewhere), files matching ``*.py``
and ``--reload-include``, less ``.*``, ``.py[cod]``, ``.sw.*``, ``~*`` and
``--reload-exclude`` (a pattern, or a directory).  An include given removes
the same default exclude, and the other way round.  Changes are gathered until
the files have been quiet for ``--reload-delay`` seconds; a file whose content
is the same as at the last reload (an editor touching it, a second event for
one write) is not a change.
"""

import hashlib
import logging
import os
import threading
from pathlib import Path

from ..extras import require

DEFAULT_INCLUDES = ("*.py",)
DEFAULT_EXCLUDES = (".*", ".py[cod]", ".sw.*", "~*")
# watchfiles gathers changes until none came for the quiet time (``step``), at
# most this long.
MOST_GATHERED_MS = 1600

log = logging.getLogger("fastfork")


class ReloadError(ValueError):
    """A --reload option that cannot be watched (a directory that is not there)."""


class FileFilter:
    """Which changed paths count, as uvicorn's watchfiles reloader says."""

    def __init__(self, includes=(), excludes=()):
        self.includes = [p for p in DEFAULT_INCLUDES if p not in excludes] + list(includes)
        self.excludes = [p for p in DEFAULT_EXCLUDES if p not in includes]
        self.exclude_dirs = []
        for exclude in excludes:
            if os.path.isdir(exclude):
                self.exclude_dirs.append(Path(exclude).resolve())
            else:
                self.excludes.append(exclude)

    def __call__(self, path):
        path = Path(path)
        if any(d == path or d in path.parents for d in self.exclude_dirs):
            return False
        if not any(path.match(pattern) for pattern in self.includes):
            return False
        return not any(path.match(pattern) for pattern in self.excludes)


def watched_dirs(settings):
    """The directories ``settings`` ask to watch, checked (ReloadError)."""
    dirs = list(settings.reload_dir)
    if not dirs:
        dirs = [os.getcwd()]
        target = (settings.app or "").rpartition(":")[0]
        if target.endswith(".py") or os.sep in target:
            # path/to/app.py:app, run from elsewhere: its own directory too.
            app_dir = os.path.dirname(os.path.abspath(target))
            if os.path.commonpath([app_dir, dirs[0]]) != dirs[0]:
                dirs.append(app_dir)
    for directory in dirs:
        if not os.path.isdir(directory):
            raise ReloadError(f"argument --reload-dir: {directory} is not a directory")
    return [os.path.abspath(d) for d in dirs]


def _digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.blake2b(f.read(), digest_size=16).digest()
    except OSError:
        return None                   # deleted, or not a file: a change all the same


def _show(path):
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


class Reloader:
    """A thread of the primary that calls ``on_change()`` when watched files change."""

    def __init__(self, settings, on_change):
        # Asked before any fork: a missing extra is one line naming it.
        self._watchfiles = require("watchfiles", "watch the app's files for --reload")
        self.dirs = watched_dirs(settings)
        self.filter = FileFilter(settings.reload_include, settings.reload_exclude)
        self.delay = settings.reload_delay
        self._on_change = on_change
        self._stop = threading.Event()
        self._thread = None
        self._seen = {}               # path -> digest of its content at the last change

    def start(self):
        log.info("--reload: watching %s for %s (less %s)", ", ".join(self.dirs),
                 ", ".join(self.filter.includes),
                 ", ".join(self.filter.excludes + [str(d) for d in self.filter.exclude_dirs]))
        self._thread = threading.Thread(target=self._run, name="fastfork-reload", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self):
        step = max(1, int(self.delay * 1000))
        try:
            for changes in self._watchfiles.watch(
                    *self.dirs, watch_filter=lambda _change, path: self.filter(path),
                    stop_event=self._stop, step=step, debounce=max(MOST_GATHERED_MS, 2 * step),
                    raise_interrupt=False, ignore_permission_denied=True):
                changed = self.changed(path for _change, path in changes)
                if changed:
                    log.warning("--reload: %s changed; reloading the workers",
                                ", ".join(_show(p) for p in changed))
                    self._on_change()
        except Exception:
            log.exception("--reload: watching the files failed; it stops here (SIGHUP still "
                          "reloads)")

    def changed(self, paths):
        """Of ``paths``, those whose content is not what it was at the last change."""
        changed = []
        for path in sorted(set(paths)):
            digest = _digest(path)
            if path not in self._seen or self._seen[path] != digest:
                self._seen[path] = digest
                changed.append(path)
        return changed
