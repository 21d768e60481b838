"""``python -m fastfork demo``'s options, and reserving its port before any fork."""

import argparse
import errno
import socket

import fastfork

DEFAULT_PORT = 3000
DEFAULT_HOST = "127.0.0.1"
EXIT_USAGE = 2
GRACEFUL_TIMEOUT = 5.0


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, no usage block: the line names the problem, --help the rest.
        self.exit(EXIT_USAGE, f"fastfork demo: error: {message} (see --help)\n")


def _workers_arg(text):
    try:
        return fastfork.parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port_arg(text):
    try:
        port = int(text)
    except ValueError:
        port = None
    if port is None or not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"port must be a number in 0..65535 (0 picks a free port), got {text!r}")
    return port


def _requests_arg(text):
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"request count must be a positive integer, got {text!r}")
    return count


def _seconds_arg(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def build_parser():
    parser = _Parser(
        prog="python -m fastfork demo",
        description="Show the cluster model live: cores, one primary and its workers on one "
                    "port, round-robin dispatch, per-worker memory, a worker killed and "
                    "re-forked, a clean shutdown.")
    parser.add_argument("--workers", type=_workers_arg, default=None, metavar="N",
                        help="workers to fork: a positive integer or 'max' "
                             "(default: the usable cores)")
    parser.add_argument("--port", type=_port_arg, default=DEFAULT_PORT, metavar="P",
                        help=f"port to serve (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to serve on (default {DEFAULT_HOST})")
    parser.add_argument("--requests", type=_requests_arg, default=None, metavar="M",
                        help="connections the demo opens to show round-robin "
                             "(default: 2 rounds, 2 per worker)")
    parser.add_argument("--serve", action="store_true",
                        help="skip the script: serve HTTP until Ctrl-C or SIGTERM")
    parser.add_argument("--policy", choices=fastfork.POLICIES, default="rr",
                        help="how connections reach workers (default rr)")
    parser.add_argument("--graceful-timeout", type=_seconds_arg, default=GRACEFUL_TIMEOUT,
                        metavar="S", help="how long a stopping worker may take to finish "
                                          f"its connections (default {GRACEFUL_TIMEOUT:g})")
    parser.add_argument("--step", action="store_true",
                        help="pause for Enter between parts (to look at the processes)")
    parser.add_argument("--no-color", action="store_true", help="never use colors")
    return parser


class UsageError(Exception):
    """A bad value found after parsing (the port is taken, the host unknown)."""


def reserve_port(host, port):
    """Bind ``host:port`` the way the primary will (SO_REUSEADDR, not listening).

    Returns the bound socket: it holds the port (``0`` becomes a real one)
    until the cluster has bound its own listener, which it only does when the
    first worker asks to listen.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror as exc:
        sock.close()
        raise UsageError(f"cannot use host {host!r}: {exc.strerror}") from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = (f"port {port} on {host} is already in use "
                   "(choose another with --port, or --port 0 for a free one)")
        elif exc.errno == errno.EACCES:
            why = f"port {port} on {host}: permission denied (ports below 1024 need privileges)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = f"cannot use host {host!r}: not an address of this machine"
        else:
            why = f"cannot bind {host}:{port}: {exc.strerror or exc}"
        raise UsageError(why) from None
    return sock
