"""gunicorn's Python config file (``-c gunicorn.conf.py``) read as fastfork's settings.

The file is run as gunicorn runs it; its module-level names that gunicorn
knows become the ``Settings`` fields of the same meaning (``SETTINGS``), its
server hooks (``on_starting``, ``post_fork``...) the ``hooks`` setting, called
by ``fastfork.primary.hooks`` where gunicorn calls them.  A setting with no
meaning here, when it is set to something (``daemon = True``), is refused
with the one line saying fastfork's way (``REFUSED``); other names (imports,
helpers) are left alone, as gunicorn leaves them.  ``python:MODULE`` names a
module instead of a file, as in gunicorn.
"""

import importlib
import os
import runpy

from ..settings import HOOKS
from .aliases import worker_class_settings
from .apps import import_failure
from .options import ConfigError

DEFAULT_FILE = "gunicorn.conf.py"       # read from the current directory, as gunicorn does

# gunicorn's setting -> fastfork's field
SETTINGS = {
    "wsgi_app": "app", "bind": "bind", "workers": "workers", "timeout": "timeout",
    "graceful_timeout": "graceful_timeout", "keepalive": "timeout_keep_alive",
    "max_requests": "max_requests", "max_requests_jitter": "max_requests_jitter",
    "accesslog": "access_logfile", "access_log_format": "access_logformat",
    "errorlog": "error_logfile", "loglevel": "log_level", "logconfig": "log_config",
    "chdir": "chdir", "pythonpath": "pythonpath", "pidfile": "pidfile", "threads": "threads",
    "preload_app": "preload", "user": "user", "group": "group", "proc_name": "name",
    "backlog": "backlog", "raw_env": "raw_env", "forwarded_allow_ips": "forwarded_allow_ips",
    "proxy_protocol": "proxy_protocol", "proxy_allow_ips": "proxy_allow_from",
    "certfile": "ssl_certfile", "keyfile": "ssl_keyfile", "ca_certs": "ssl_ca_certs",
    "cert_reqs": "ssl_cert_reqs", "ciphers": "ssl_ciphers", "ssl_version": "ssl_version",
    "reload": "reload", "header_map": "header_map",
}
REFUSED = {
    "daemon": "run fastfork under systemd (see README 'Under systemd')",
    "reload_engine": "--reload watches the files with watchfiles (inotify)",
    "reload_extra_files": "give directories in --reload-dir and patterns in --reload-include",
    "worker_connections": "for a cap on each worker's connections use --limit-concurrency "
                          "(or --worker-connections with --policy least)",
    "statsd_host": "serve Prometheus metrics with --metrics ADDRESS",
    "ssl_context": "the context is built from the TLS settings (certfile, keyfile, "
                   "ca_certs, cert_reqs, ciphers, ssl_version)",
    "worker_tmp_dir": "workers send heartbeats to the primary (see --timeout)",
    "pre_request": "wrap the app in a middleware", "post_request": "wrap the app in a middleware",
    "pre_exec": "workers are forked, never exec'd: use on_reload",
    "limit_request_line": "use --h11-max-incomplete-event-size and --timeout-request-head",
    "limit_request_fields": "use --h11-max-incomplete-event-size and --timeout-request-head",
    "logconfig_dict": "give the dict as a JSON file to --log-config",
    "syslog": "log to stderr and let the journal or syslog collect it",
    "spew": "use a profiler", "umask": "set the umask in the service (systemd's UMask=)",
}


def run_file(path):
    """The module-level names of the config ``path`` (or ``python:MODULE``)."""
    try:
        if path.startswith("python:"):
            return vars(importlib.import_module(path[7:]))
        if not os.path.isfile(path):
            raise ConfigError(f"cannot read {path}: no such file")
        return runpy.run_path(path, run_name="__config__")
    except ConfigError:
        raise
    except BaseException as exc:       # SystemExit too: the file must not end us
        raise ConfigError(f"reading {import_failure(path, exc)}") from None


def read(path, notes):
    """``(where, values, names)`` for ``options.build`` from the config at ``path``;
    ``values`` includes ``hooks``.  ``notes`` gets lines for the log."""
    namespace = run_file(path)
    values, names, hooks = {}, {}, {}
    for key, value in namespace.items():
        if key in HOOKS and callable(value):
            hooks[key] = value
        elif key in REFUSED and value:
            raise ConfigError(f"{path}: {key} is not supported here: {REFUSED[key]}")
        elif key == "worker_class":
            for dest, setting in worker_class_settings(value, f"{path}: worker_class",
                                                       notes).items():
                values[dest], names[dest] = setting, key
        elif key == "reuse_port":
            if value:
                values["policy"], names["policy"] = "reuseport", key
        elif key in SETTINGS:
            values[SETTINGS[key]], names[SETTINGS[key]] = value, key
    if hooks:
        values["hooks"], names["hooks"] = hooks, "hooks"
    return path, values, names
