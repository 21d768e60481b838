"""gunicorn's server hooks (``settings.hooks``), called where gunicorn calls them.

In the primary: ``on_starting(server)`` before the addresses are bound,
``when_ready(server)`` once they are and before the first fork,
``pre_fork(server, worker)`` before each fork, ``child_exit(server, worker)``
after a worker exited, ``on_reload(server)`` on SIGHUP,
``nworkers_changed(server, new, old)`` on SIGTTIN/SIGTTOU, ``on_exit(server)``
just before the primary exits.  In a worker: ``post_fork(server, worker)``
right after the fork, ``post_worker_init(worker)`` once the app is loaded,
``worker_int(worker)`` on SIGINT or SIGQUIT, ``worker_abort(worker)`` on
SIGABRT (the primary's hang detection, ``--timeout``), ``worker_exit(server,
worker)`` as it exits.

The objects carry what gunicorn's carry that hooks read: ``server.pid``,
``server.log`` (a logger: info, warning, error, debug, exception),
``server.cfg`` (every setting, under fastfork's names and gunicorn's),
``server.num_workers``; ``worker.pid``, ``worker.ppid``, ``worker.age``,
``worker.id``, ``worker.index``, ``worker.log``, ``worker.cfg``.  A hook that
raises is logged with its traceback; the primary and the worker go on, except
for ``on_starting`` and ``when_ready``, whose failure stops the start.
"""

import faulthandler
import logging
import os
import signal
import sys

log = logging.getLogger("fastfork")

# gunicorn's names for fastfork's settings, on server.cfg beside fastfork's own.
GUNICORN_NAMES = {"keepalive": "timeout_keep_alive", "accesslog": "access_logfile",
                  "access_log_format": "access_logformat", "errorlog": "error_logfile",
                  "loglevel": "log_level", "logconfig": "log_config", "proc_name": "name",
                  "preload_app": "preload", "wsgi_app": "app",
                  "proxy_allow_ips": "proxy_allow_from"}


class HookFailed(Exception):
    """``on_starting`` or ``when_ready`` raised: the primary does not start."""


class Config:
    """``server.cfg``: every setting as an attribute, by fastfork's and gunicorn's names."""

    def __init__(self, settings, workers):
        for name in settings.__dataclass_fields__:
            if name != "hooks":
                setattr(self, name, getattr(settings, name))
        for gunicorn, ours in GUNICORN_NAMES.items():
            setattr(self, gunicorn, getattr(settings, ours))
        self.bind = list(settings.bind)
        self.workers = workers
        self.settings = settings


class Server:
    """What a hook gets as ``server`` (gunicorn's arbiter)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.pid = cluster.pid
        self.log = log
        self.cfg = Config(cluster.settings, cluster.size)
        self.proc_name = cluster.name

    @property
    def num_workers(self):
        return self.cluster.size

    @property
    def address(self):
        return self.cluster.listeners.addresses()


class WorkerInfo:
    """What a hook gets as ``worker``: in the primary, about a worker handle; in the
    worker, about itself (``pid`` is then its own)."""

    def __init__(self, wid, index, pid, ppid, cfg):
        self.id = self.age = wid            # gunicorn's age: the n-th worker started
        self.index = index
        self.pid = pid
        self.ppid = ppid
        self.cfg = cfg
        self.log = log
        self.alive = True

    def __repr__(self):
        return f"<worker {self.id} index {self.index} pid {self.pid}>"


class Hooks:
    """The hooks of one primary; ``attach`` it to the Cluster before ``run``."""

    def __init__(self, functions):
        self.functions = dict(functions)
        self.server = None
        self.worker = None

    def __bool__(self):
        return bool(self.functions)

    def call(self, name, *args):
        function = self.functions.get(name)
        if function is None:
            return
        try:
            function(*args)
        except Exception as exc:
            if name in ("on_starting", "when_ready"):
                raise HookFailed(f"hook {name} raised {type(exc).__name__}: {exc}") from None
            log.exception("hook %s raised", name)

    def _about(self, handle):
        return WorkerInfo(handle.id, handle.index, handle.pid, self.server.pid, self.server.cfg)

    # -- in the primary ------------------------------------------------------------------
    def attach(self, cluster):
        """Call ``on_starting`` now; the others from the cluster's events."""
        self.server = Server(cluster)
        if not self.functions:
            return
        cluster.on("prefork", lambda handle: self.call("pre_fork", self.server,
                                                       self._about(handle)))
        cluster.on("exit", lambda handle, code, sig: self.call("child_exit", self.server,
                                                               self._about(handle)))
        cluster.on("reload", lambda: self.call("on_reload", self.server))
        cluster.on("resize", lambda new, old: self.call("nworkers_changed", self.server,
                                                        new, old))
        self.call("on_starting", self.server)

    def ready(self):
        self.server.cfg.workers = self.server.num_workers
        self.call("when_ready", self.server)

    def exiting(self):
        self.call("on_exit", self.server)

    # -- in a worker ---------------------------------------------------------------------
    def forked(self, worker_id, index):
        """In a worker, first thing: ``post_fork``, and the signal hooks set up."""
        if not self.functions:
            return
        self.worker = WorkerInfo(worker_id, index, os.getpid(), os.getppid(), self.server.cfg)
        self.call("post_fork", self.server, self.worker)
        if "worker_int" in self.functions:
            signal.signal(signal.SIGINT, self._interrupted)
            signal.signal(signal.SIGQUIT, self._interrupted)
        if "worker_abort" in self.functions:
            signal.signal(signal.SIGABRT, self._aborted)

    def app_loaded(self):
        if self.worker is not None:
            self.call("post_worker_init", self.worker)

    def exited(self):
        if self.worker is not None:
            self.worker.alive = False
            self.call("worker_exit", self.server, self.worker)

    def _interrupted(self, signum, frame):
        self.call("worker_int", self.worker)
        if signum == signal.SIGQUIT:
            sys.exit(0)        # as gunicorn's worker; SIGINT: the primary drains the workers

    def _aborted(self, signum, frame):
        # The primary found this worker hung: say where, tell the hook, then die of
        # SIGABRT as a worker without the hook does.
        faulthandler.dump_traceback(all_threads=True)
        self.call("worker_abort", self.worker)
        sys.stderr.flush()
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
        os.abort()
