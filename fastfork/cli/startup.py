"""A start without ``--preload``: the workers import the app, the first one says what it is.

uvicorn's order: the workers are forked at once and each imports the app, so
the first response waits for one import, not for a check's import and then
the workers'.  The check is not lost: each worker, once it has imported and
classified the app (``apps.resolve_app``, ``apps.check_kind``), tells the
primary what it loaded or why it cannot serve it (``WorkerRuntime.loaded``,
the ``loaded`` event).  The first word decides:

* an error (or a worker that died before saying anything): the start fails
  as a bad option does: the workers are killed, the primary's held log is
  dropped and ``fastfork run`` prints the one line and exits 2;
* a kind: the primary's log is written and it serves on.

Later words only matter when they are errors (a reload that cannot import
the new code): logged, and that worker exits.
"""

import logging
import signal

log = logging.getLogger("fastfork")

EXIT_USAGE = 2


class Gate:
    """Waits for the first worker's word on the app (see the module's docstring)."""

    def __init__(self, cluster, spec, opened):
        self.cluster = cluster
        self.spec = spec
        self.opened = opened          # called with the kind when the first worker loaded it
        self.kind = None
        self.error = None
        cluster.on("loaded", self.loaded)
        cluster.on("exit", self.exited)

    @property
    def waiting(self):
        return self.kind is None and self.error is None

    def loaded(self, worker, kind, error):
        if not self.waiting:
            if error is not None:
                log.error("%s (pid %d): %s", worker.label, worker.pid, error)
            return
        if error is not None:
            self.fail(error)
        else:
            self.kind = kind
            self.opened(kind)

    def exited(self, worker, code, signum):
        if self.waiting and not worker.stop_requested and not self.cluster.stopping:
            # As the checking child's death was reported: the status as waitpid gives it.
            status = code if signum is None else -signum
            how = "" if signum is None else f", {signal.Signals(signum).name}"
            self.fail(f"importing {self.spec} ended the worker process "
                      f"(exit status {status}{how})")

    def fail(self, message):
        """Stop the start: every worker killed (they are importing: nothing to drain)."""
        self.error = message
        self.cluster.exit_code = EXIT_USAGE
        self.cluster.force_stop()
