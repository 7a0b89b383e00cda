"""``shm-exporter``: serve the segment's values to Prometheus, in node_exporter's names.

Exit codes: 0 stopped by SIGTERM/SIGINT; 1 a listen address could not be
bound (or, with --web.systemd-socket, systemd passed no socket); 2 bad
arguments or an invalid --web.config.file (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys

from shm_metrics import shm_layout as L
from shm_metrics.readers.cliargs import (
    OneLineParser,
    add_log_arguments,
    description_from,
    resolve_reader_options,
    segment_name,
    setup_logging,
)
from shm_metrics.readers.exporter import (
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_REQUESTS,
    DEFAULT_READ_HEADER_TIMEOUT,
    DEFAULT_TELEMETRY_PATH,
)
from shm_metrics.readers.reader import PUBLISHER_USER_ENV
from shm_metrics.service import tune_gc

log = logging.getLogger("shm-exporter")

EXIT_OK, EXIT_LISTEN, EXIT_USAGE = 0, 1, 2


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (every interface) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. {DEFAULT_LISTEN}, [::1]:19100, :19100)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError(f"{text!r}: put an IPv6 address in brackets, e.g. [::1]:19100")
    return host, int(port_text)


def _telemetry_path(text: str) -> str:
    if not text.startswith("/") or text == "/" or any(c in text for c in "?#\r\n\t "):
        raise argparse.ArgumentTypeError(f"{text!r}: expected an absolute path other than '/', e.g. /metrics")
    return text


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 0")
    return int(text)


def _positive_count(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "": 1.0}


def duration(text: str) -> float:
    """A positive duration in Go's style for the flags node_exporter users know: ``5s``, ``500ms``, ``1m``, or
    plain seconds (``2.5``) -> seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|)", text.strip())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive duration, e.g. 5s, 500ms or 2.5")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="shm-exporter", description=description_from(__doc__),
                epilog="exit codes: 0 stopped by signal; 1 cannot listen; 2 bad arguments or web config",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", type=segment_name, default=None,
                   help=f"segment name (default {L.DEFAULT_NAME}, env {L.NAME_ENV})")
    p.add_argument("--publisher-user", metavar="USER", default=None,
                   help="trust segments owned by USER (name or uid) besides root and the exporter's own user: "
                        f"the user shm-publisher runs as (env {PUBLISHER_USER_ENV})")
    p.add_argument("--web.listen-address", "--listen", dest="listen", type=listen_address, action="append",
                   metavar="HOST:PORT", help=f"address to listen on, repeatable for several (default "
                   f"{DEFAULT_LISTEN}: loopback only; ':19100' for every interface; port 0 picks a free one, "
                   "logged at start)")
    p.add_argument("--web.systemd-socket", dest="systemd_socket", action="store_true",
                   help="listen on the sockets systemd's socket activation passes (LISTEN_FDS, LISTEN_PID; see "
                        "deploy/systemd/shm-exporter.socket) instead of --web.listen-address")
    p.add_argument("--web.telemetry-path", dest="telemetry_path", type=_telemetry_path,
                   default=DEFAULT_TELEMETRY_PATH, metavar="PATH",
                   help=f"path of the metrics (default {DEFAULT_TELEMETRY_PATH})")
    p.add_argument("--web.config.file", dest="web_config", default=None, metavar="FILE",
                   help="exporter-toolkit web config (TLS, basic auth with bcrypt hashes), as node_exporter's")
    p.add_argument("--web.max-requests", dest="max_requests", type=_count, default=DEFAULT_MAX_REQUESTS,
                   metavar="N", help=f"maximum number of scrapes answered at once, as node_exporter's; one more gets "
                   f"503 (default {DEFAULT_MAX_REQUESTS}; 0: no limit)")
    p.add_argument("--web.max-connections", dest="max_connections", type=_positive_count,
                   default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                   help=f"maximum number of open connections (default {DEFAULT_MAX_CONNECTIONS}, and never more than "
                   "the open files limit allows); at the cap a new connection closes an idle one, oldest first")
    p.add_argument("--web.read-header-timeout", dest="read_header_timeout", type=duration,
                   default=DEFAULT_READ_HEADER_TIMEOUT, metavar="DURATION",
                   help=f"time a connection has for its TLS handshake and each request's headers; slower ones are "
                   f"closed (default {DEFAULT_READ_HEADER_TIMEOUT:g}s)")
    p.add_argument("--web.disable-exporter-metrics", dest="process_metrics", action="store_false",
                   help="leave out the exporter's own process_* metrics")
    p.add_argument("--collector.textfile.directory", dest="textfile_directory", default=None, metavar="DIR",
                   help="node_exporter's textfile collector: serve the *.prom files in DIR (or in the directories "
                        "a glob matches), read at every scrape, with node_textfile_mtime_seconds and "
                        "node_textfile_scrape_error (default: none: node_textfile_scrape_error 0 alone)")
    add_log_arguments(p)
    p.add_argument("--version", action="version", version=f"%(prog)s {L.__version__} (layout {L.LAYOUT_VERSION})")
    return p


def _listeners(args: argparse.Namespace) -> list[socket.socket] | None:
    """The listening sockets: systemd's with --web.systemd-socket (the listen addresses are then ignored, as
    in node_exporter), else one per --web.listen-address; None (said on stderr, one line) when that fails."""
    from shm_metrics.readers.exporter.server import SystemdSocketError, bind, resolve, systemd_listeners

    if args.systemd_socket:
        try:
            sockets = systemd_listeners()
        except SystemdSocketError as exc:
            print(f"shm-exporter: error: --web.systemd-socket: {exc}", file=sys.stderr)
            return None
        if not sockets:
            print("shm-exporter: error: --web.systemd-socket: no socket activation file descriptors found "
                  "(LISTEN_FDS, LISTEN_PID)", file=sys.stderr)
            return None
        log.info("Listening on systemd activated listeners instead of port listeners.")
        return sockets
    sockets = []
    for host, port in args.listen or [listen_address(DEFAULT_LISTEN)]:
        try:
            sockets.append(bind(*resolve(host, port)))
        except OSError as exc:
            for sock in sockets:
                sock.close()
            shown = f"[{host}]" if ":" in host else host
            print(f"shm-exporter: error: cannot listen on {shown}:{port}: {exc.strerror or exc}", file=sys.stderr)
            return None
    return sockets


def _shown(sock: socket.socket) -> str:
    """HOST:PORT of a listener, an IPv6 host in brackets; a Unix socket's path."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return address if isinstance(address, str) else address.decode(errors="replace")
    host = f"[{address[0]}]" if sock.family == socket.AF_INET6 else address[0]
    return f"{host}:{address[1]}"


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_reader_options(parser, args)
    setup_logging(args)

    from shm_metrics.readers.exporter.exposition import build
    from shm_metrics.readers.exporter.server import (
        App,
        ExporterServer,
        connection_cap,
        limit_malloc_arenas,
        raise_nofile_limit,
    )
    from shm_metrics.readers.exporter.source import SegmentSource
    from shm_metrics.readers.exporter.textfile import Textfile
    from shm_metrics.readers.exporter.webconfig import WebConfigError, WebConfigWatcher

    try:
        web = WebConfigWatcher(args.web_config)
    except WebConfigError as exc:
        parser.error(" ".join(f"--web.config.file {args.web_config}: {exc}".split()))  # one line
    listeners = _listeners(args)
    if listeners is None:
        return EXIT_LISTEN
    source = SegmentSource(args.name, args.publisher_user)
    textfile = Textfile(args.textfile_directory or "")  # on without a directory too, as in node_exporter
    _, exposition = build(source, process_metrics=args.process_metrics, textfile=textfile)
    server = ExporterServer(None, None, App(exposition, args.telemetry_path, web, args.name), listeners=listeners,
                            max_connections=args.max_connections, max_requests=args.max_requests,
                            read_header_timeout=args.read_header_timeout)
    # After the bind, so that "cannot listen" stays the only line on stderr when that fails.
    soft_nofile, _ = raise_nofile_limit()
    if limit_malloc_arenas():  # before the first worker thread: each would otherwise get an arena of its own
        log.debug("malloc arenas limited to 1: the worker threads share the main heap")
    server.max_connections = connection_cap(args.max_connections, soft_nofile)
    if server.max_connections < args.max_connections:
        log.warning("--web.max-connections %d lowered to %d: the open files limit is %d (raise LimitNOFILE)",
                    args.max_connections, server.max_connections, soft_nofile)
    scheme = "https" if web.tls_enabled else "http"
    for sock in server.sockets:
        log.info("listening on %s://%s%s for segment %s (TLS %s, basic auth %s, pid %d%s)", scheme, _shown(sock),
                 args.telemetry_path, args.name, "on" if web.tls_enabled else "off",
                 "on" if web.auth.enabled else "off", os.getpid(), ", from systemd" if args.systemd_socket else "")
    log.info("at most %d connections, %s scrapes at once; request headers within %g s", server.max_connections,
             args.max_requests or "unlimited", args.read_header_timeout)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    tune_gc()
    try:
        server.serve_forever()
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
        source.close()
    log.info("stopped")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
