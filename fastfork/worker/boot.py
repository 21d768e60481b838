"""Everything a worker process does before the app runs: both ways a worker starts.

* Forked (the function form, and the first half of the Node form): the
  primary's ``spawn`` forks, and the child calls ``run_forked``: make sure
  it dies with the primary, drop what it inherited from the primary (the
  primary's own code does that part), drop privileges, then either exec this
  program again (the Node form) or connect to the primary and call the
  target (the function form).
* Exec'd (the Node form): the program re-runs from the top; ``import
  fastfork`` finds ``FASTFORK_CHANNELS`` in the environment (Node's
  ``NODE_UNIQUE_ID``) and calls ``from_environment``, which connects to the
  primary over the inherited channel fds.

This module is the contract between the primary and a starting worker: the
environment names and exit codes below are read on both sides.
"""

import collections
import os
import signal
import sys
import traceback

from ..handoff import backend
from .linux import set_parent_death_signal
from ..privileges import drop_privileges
from . import runtime

# Environment of a worker started by exec (the Node form).
ENV_CHANNELS = "FASTFORK_CHANNELS"       # "data_fd,control_fd": marks a worker
ENV_WORKER_ID = "FASTFORK_WORKER_ID"
ENV_WORKER_INDEX = "FASTFORK_WORKER_INDEX"
ENV_POLICY = "FASTFORK_POLICY"

# Exit code of a forked worker whose program could not be exec'd.
EXIT_EXEC_FAILED = 127
# Exit code of a worker whose primary went away (the control channel closed).
EXIT_PRIMARY_GONE = runtime.EXIT_PRIMARY_GONE

WorkerSpec = collections.namedtuple(
    "WorkerSpec", "id index policy receiver target args kwargs argv env credentials credit_fd")
WorkerSpec.__doc__ = """What a forked child needs to become worker ``id``.

``receiver`` is the backend's receiver module (its Receiver reads the data
channel); ``target`` None means the Node form: exec ``argv`` (default: this
program again) with ``env`` added; ``credentials`` is ``(uid, gid, username)``;
``credit_fd`` is the shared credit page (``handoff.credit``), or -1.
"""


def guard_parent(primary_pid):
    """Die with the primary: the kernel sends SIGKILL when it goes (also across exec).

    If the primary died between fork and here, the signal will never come:
    exit now instead.
    """
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != primary_pid:
        os._exit(1)


def run_forked(primary_pid, spec, data_sock, ctl_sock, shed):
    """In the child after fork; never returns.  ``shed()`` closes the primary's state."""
    code = 1
    try:
        guard_parent(primary_pid)
        shed()
        uid, gid, username = spec.credentials
        if uid is not None or gid is not None:
            drop_privileges(uid, gid, username)
            # Changing credentials clears the parent-death signal: set it again.
            guard_parent(primary_pid)
        if spec.target is None:
            _exec(spec, data_sock, ctl_sock)
        runtime.start(data_sock.detach(), ctl_sock.detach(), spec.id, spec.index,
                      spec.policy, spec.receiver, spec.credit_fd)
        spec.target(*spec.args, **spec.kwargs)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _exec(spec, data_sock, ctl_sock):
    env = dict(os.environ)
    env.update(spec.env)
    env[ENV_CHANNELS] = f"{data_sock.fileno()},{ctl_sock.fileno()}"
    if spec.credit_fd >= 0:
        env[ENV_CHANNELS] += f",{spec.credit_fd}"
        os.set_inheritable(spec.credit_fd, True)
    env[ENV_WORKER_ID] = str(spec.id)
    env[ENV_WORKER_INDEX] = str(spec.index)
    env[ENV_POLICY] = spec.policy
    os.set_inheritable(data_sock.fileno(), True)
    os.set_inheritable(ctl_sock.fileno(), True)
    argv = list(spec.argv or [sys.executable] + list(getattr(sys, "orig_argv", sys.argv)[1:]))
    try:
        os.execve(argv[0], argv, env)
    except OSError as exc:
        print(f"fastfork: cannot start worker: {argv[0]}: {exc}", file=sys.stderr)
        os._exit(EXIT_EXEC_FAILED)


def from_environment(environ=None):
    """A worker started by exec: connect over the channels the primary passed.

    Removes the marker, so that a subprocess of this worker does not take
    itself for one too.
    """
    environ = os.environ if environ is None else environ
    data_fd, control_fd, *credit = (int(x) for x in environ.pop(ENV_CHANNELS).split(","))
    # Set before exec, and exec keeps it; set again in case this program was
    # started some other way with the variables copied.
    set_parent_death_signal(signal.SIGKILL)
    return runtime.start(data_fd, control_fd, int(environ[ENV_WORKER_ID]),
                         int(environ[ENV_WORKER_INDEX]), environ.get(ENV_POLICY, "rr"),
                         backend.default().receiver, credit[0] if credit else -1)
