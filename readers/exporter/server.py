"""The HTTP side: a threaded HTTP/1.1 server with keep-alive, TLS and basic auth.

``GET <telemetry path>`` answers the exposition (gzip-compressed when the
client accepts it, as Prometheus does); ``GET /`` a small page linking to
it; anything else 404.  Connections stay open between requests (HTTP/1.1
keep-alive), so Prometheus reuses one connection per target instead of paying
a TCP (and TLS) handshake per scrape.  TLS handshakes run in the connection's
own thread, never in the accept loop, so a slow or hostile client cannot
stall the others.
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from urllib.parse import urlsplit

from shm_metrics import shm_layout as L
from shm_metrics.readers.exporter.exposition import CONTENT_TYPE, Exposition
from shm_metrics.readers.exporter.webconfig import WebConfigWatcher

log = logging.getLogger("shm-exporter")

IDLE_TIMEOUT_SECONDS = 300  # an idle keep-alive connection is closed after this (Prometheus scrapes more often)
HANDSHAKE_TIMEOUT_SECONDS = 10
MAX_DISCARDED_BODY = 1 << 16


class App:
    """What the handler needs: the renderer, the paths, the web config."""

    def __init__(self, exposition: Exposition, telemetry_path: str, web: WebConfigWatcher, segment_name: str):
        self.exposition = exposition
        self.telemetry_path = telemetry_path
        self.web = web
        self.segment_name = segment_name
        path = html.escape(telemetry_path, quote=True)
        self.index = (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>shm-exporter</title></head>\n<body>\n"
            "<h1>shm-exporter</h1>\n"
            f"<p>Host metrics from the shared-memory segment <code>{html.escape(segment_name)}</code>, "
            "with node_exporter's metric names.</p>\n"
            f"<p><a href=\"{path}\">Metrics</a></p>\n"
            f"<p>version {L.__version__} (layout {L.LAYOUT_VERSION})</p>\n</body></html>\n"
        ).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    server_version = f"shm-exporter/{L.__version__}"
    timeout = IDLE_TIMEOUT_SECONDS
    # Headers and body leave in one write (flushed after each request): with keep-alive, a small
    # header segment followed by the body would otherwise meet the client's delayed ACK (Nagle),
    # a 40 ms stall per scrape.  TCP_NODELAY (set per connection) covers bodies beyond the buffer.
    wbufsize = 1 << 18
    server: ExporterServer

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        app = self.server.app
        if not self._discard_body():
            return
        config = app.web.current()
        if config is None:
            self._reply(500, b"web config is invalid: see the exporter's log\n", send_body=send_body)
            return
        headers = dict(config.headers)
        if not app.web.auth.check(self.headers.get("Authorization")):
            headers["WWW-Authenticate"] = 'Basic realm="shm-exporter"'
            self._reply(401, b"Unauthorized\n", headers=headers, send_body=send_body)
            return
        path = urlsplit(self.path).path
        if path == app.telemetry_path:
            try:
                body = app.exposition.render()
            except Exception:  # a bug, not a segment state: those are all handled as shm_metrics_up 0
                log.exception("rendering the metrics failed")
                self._reply(500, b"internal error rendering the metrics: see the exporter's log\n",
                            headers=headers, send_body=send_body)
                return
            if accepts_gzip(self.headers.get("Accept-Encoding", "")):
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
            self._reply(200, body, CONTENT_TYPE, headers, send_body)
        elif path == "/":
            self._reply(200, app.index, "text/html; charset=utf-8", headers, send_body)
        else:
            self._reply(404, b"404 page not found\n", headers=headers, send_body=send_body)

    def _discard_body(self) -> bool:
        """Read a request body nobody needs, so the connection stays usable; False if that is not possible."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._reply(411, b"Length Required\n", send_body=True)
            return False
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_DISCARDED_BODY:
            self.close_connection = True
            self._reply(400, b"Bad Request\n", send_body=True)
            return False
        if length:
            self.rfile.read(length)
        return True

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
               headers: dict[str, str] | None = None, send_body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ExporterServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to one resolved address; TLS per connection in its own thread."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, address: tuple, family: socket.AddressFamily, app: App):
        self.address_family = family
        self.app = app
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] in ("::", ""):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # ":PORT": IPv4 and IPv6
        TCPServer.server_bind(self)  # not HTTPServer's: it resolves our own name (a DNS query at start)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def finish_request(self, request: socket.socket, client_address: tuple) -> None:
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if not self.app.web.tls_enabled:
            self.RequestHandlerClass(request, client_address, self)
            return
        context = self.app.web.ssl_context()
        if context is None:  # the web config became invalid: fail closed
            return
        request.settimeout(HANDSHAKE_TIMEOUT_SECONDS)
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: object, client_address: tuple) -> None:
        log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


def accepts_gzip(accept_encoding: str) -> bool:
    """True when an Accept-Encoding header allows gzip (``gzip``, ``gzip;q=0.5``, ``*``; not ``gzip;q=0``)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.", "0.0", "0.00", "0.000"))
    return False


def resolve(host: str, port: int) -> tuple[tuple, socket.AddressFamily]:
    """The address to bind for ``HOST:PORT``; an empty host means every interface."""
    if not host:
        if socket.has_dualstack_ipv6():
            return ("::", port), socket.AF_INET6
        return ("0.0.0.0", port), socket.AF_INET
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return address, family
