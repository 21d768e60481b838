"""A real fastfork cluster (function form) serving one web test app with fastfork.web.

Run as ``python web_cluster.py --app starlette --policy rr --workers 2``.  Like
``tests/apps/cluster_app.py``, the primary prints one ``EVENT {json}`` line per
cluster event (fork, listening, message, exit, done) so a test can wait for
exactly what it needs.  ``--app``:

    starlette, fastapi      ASGI apps (fastapi has a WebSocket route /ws)
    flask, django           WSGI apps (run through a2wsgi's thread pool)
    pep3333                 a bare WSGI app: start_response and write() corner cases
    broken-lifespan         a Starlette app whose lifespan startup raises
    neither                 an object that is no app: fastfork.web must refuse it
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
sys.path.insert(0, HERE)
import fastfork  # noqa: E402
import fastfork.web  # noqa: E402

APPS = ("starlette", "fastapi", "flask", "django", "pep3333", "broken-lifespan", "neither")

parser = argparse.ArgumentParser()
parser.add_argument("--app", choices=APPS, default="starlette")
parser.add_argument("--policy", default="rr")
parser.add_argument("--workers", default="2")
parser.add_argument("--address", default="127.0.0.1:0")
parser.add_argument("--graceful-timeout", type=float, default=10.0)
parser.add_argument("--max-restarts", type=int, default=10)
parser.add_argument("--loop", default="asyncio")
# The web_cluster fixture runs every web test on both HTTP paths: it sets
# FASTFORK_TEST_HTTP=engine for the engine's run.
parser.add_argument("--http", default=os.environ.get("FASTFORK_TEST_HTTP", "auto"))
parser.add_argument("--ws", default="auto")
parser.add_argument("--threads", type=int, default=4)
parser.add_argument("--body-buffer", type=int, default=1 << 20)
parser.add_argument("--no-access-log", action="store_true")
parser.add_argument("--timeout-keep-alive", type=float, default=None, help="default: serve()'s")
parser.add_argument("--control-socket", default=None)
parser.add_argument("--stall-ms", type=int, default=None, help="default: the Cluster's")
parser.add_argument("--check-in-worker", action="store_true",
                    help="skip the primary's detect(): the worker's serve() must refuse the app")
args = parser.parse_args()


def emit(event, **fields):
    fields["event"] = event
    # One write for the whole line: with PYTHONUNBUFFERED print() writes the
    # text and its newline apart, and a worker's log line can land between.
    sys.stdout.write("EVENT " + json.dumps(fields) + "\n")
    sys.stdout.flush()


def load_app(name):
    # Imported in the primary, before the fork: the workers share it copy-on-write.
    if name == "starlette":
        import starlette_app
        return starlette_app.app
    if name == "broken-lifespan":
        import starlette_app
        return starlette_app.broken
    if name == "fastapi":
        import fastapi_app
        return fastapi_app.app
    if name == "flask":
        import flask_app
        return flask_app.app
    if name == "django":
        import django_app
        return django_app.application
    if name == "pep3333":
        import pep3333_app
        return pep3333_app.app
    return {"not": "an app"}


APP = load_app(args.app)


def worker_main():
    extra = ({} if args.timeout_keep_alive is None
             else {"timeout_keep_alive": args.timeout_keep_alive})
    fastfork.web.serve(APP, args.address, loop=args.loop, http=args.http, ws=args.ws,
                       threads=args.threads, body_buffer=args.body_buffer,
                       access_log=not args.no_access_log,
                       graceful_timeout=args.graceful_timeout, **extra)


def primary_main():
    if not args.check_in_worker:
        try:
            kind = fastfork.web.detect(APP)
        except fastfork.web.NotAnAppError as exc:
            print(f"web_cluster: error: {exc}", file=sys.stderr, flush=True)
            return 2
        emit("app", kind=kind)
    extra = {} if args.stall_ms is None else {"stall_ms": args.stall_ms}
    cluster = fastfork.Cluster(worker_main, args.workers, policy=args.policy,
                               graceful_timeout=args.graceful_timeout,
                               max_restarts=args.max_restarts,
                               control_socket=args.control_socket, **extra)
    emit("primary", pid=os.getpid(), size=cluster.size)
    cluster.on("fork", lambda w: emit("fork", id=w.id, index=w.index, pid=w.pid))
    cluster.on("listening", lambda w, a: emit("listening", id=w.id, index=w.index, pid=w.pid,
                                               address=a))
    cluster.on("message", lambda w, data: emit("message", id=w.id, data=data))
    cluster.on("exit", lambda w, code, sig: emit("exit", id=w.id, index=w.index, pid=w.pid,
                                                  code=code, signal=sig))
    code = cluster.run()
    emit("done", code=code)
    return code


if __name__ == "__main__":
    sys.exit(primary_main())
