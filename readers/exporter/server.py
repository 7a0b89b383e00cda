"""The HTTP side: HTTP/1.1 with keep-alive, TLS and basic auth, built to survive connection floods.

``GET <telemetry path>`` answers the exposition (gzip-compressed when the
client accepts it, as Prometheus does); ``GET /`` a small page linking to
it; anything else 404.  Connections stay open between requests (HTTP/1.1
keep-alive), so Prometheus reuses one connection per target instead of paying
a TCP (and TLS) handshake per scrape.

One thread, the loop, owns every connection that is not being answered: it
accepts, runs TLS handshakes non-blocking, and reads until a whole request
(head and any small body) is buffered.  Only then does a worker from a bounded
pool take the connection, answer from the buffer, write the response and hand
the connection back.  So a thousand idle, slow or stalled connections cost file
descriptors and a little memory, never a thread each nor CPU, and a client that
sends nothing cannot hold up a worker.  Against floods, as node_exporter where
it has an equivalent:

- the soft RLIMIT_NOFILE is raised to the hard limit at start (``raise_nofile_limit``);
- ``--web.max-connections`` caps open connections: at the cap a new connection
  evicts an idle keep-alive connection (oldest first), else one that has not
  sent a whole request yet (oldest first);
- a connection must finish its TLS handshake and request head within
  ``--web.read-header-timeout`` (slowloris), an idle keep-alive one is closed
  after IDLE_TIMEOUT_SECONDS;
- accept errors (EMFILE, ENFILE, ENOBUFS, ENOMEM) pause accepting 5 ms, doubling
  to 1 s, as Go's net/http, instead of spinning;
- ``--web.max-requests`` caps concurrent scrapes; one more gets 503, as promhttp's.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import gzip
import html
import logging
import os
import re
import resource
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote_plus, urlsplit

from shm_metrics import shm_layout as L
from shm_metrics.readers.exporter import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUESTS, DEFAULT_READ_HEADER_TIMEOUT
from shm_metrics.readers.exporter.exposition import CONTENT_TYPE, Exposition
from shm_metrics.readers.exporter.owners import FilterError, check_filter, refusal_body
from shm_metrics.readers.exporter.webconfig import WebConfigWatcher

log = logging.getLogger("shm-exporter")

IDLE_TIMEOUT_SECONDS = 300  # an idle keep-alive connection is closed after this (Prometheus scrapes more often)
WRITE_TIMEOUT_SECONDS = 30  # a client that stops reading its response is dropped, freeing the worker
MAX_DISCARDED_BODY = 1 << 16
MAX_HEAD_BYTES = 1 << 16  # request line and headers together; more is answered 431 and the connection closed
FD_RESERVE = 64  # descriptors kept for the exporter itself (listener, selector, segment, /proc reads, TLS files)
SPARE_WORKERS = 8  # workers beyond --web.max-requests: 401s, 404s, 503s and the index page never wait for scrapes
WORKERS_WITHOUT_SCRAPE_LIMIT = 64  # the pool's size when --web.max-requests is 0
MAX_WORKERS = 256  # threads, whatever --web.max-requests says: beyond, requests wait their turn instead of a 503
ACCEPT_BATCH = 64  # connections accepted per wake-up, so timers and finished requests get their turn in a flood
# Errors that concern one connection the kernel had queued (the client gave up first): accept the next.
ACCEPT_CLIENT_ERRORS = frozenset({errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM})
_CONTENT_LENGTH = re.compile(rb"\ncontent-length[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_HEAD_TOO_LARGE_REPLY = (b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n"
                         b"Content-Length: 0\r\n\r\n")


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


class Connection:
    """One client connection and the bytes read from it that no request has consumed yet."""

    __slots__ = ("sock", "address", "buffer", "scanned", "tls", "handshaking", "events", "busy", "closed")

    def __init__(self, sock: socket.socket, address: tuple, tls: bool):
        self.sock = sock
        self.address = address
        self.buffer = bytearray()
        self.scanned = 0  # bytes of the buffer known to hold no end of a request head (a drip costs O(1) each)
        self.tls = tls
        self.handshaking = tls
        self.events = 0  # what the loop's selector watches for (0: not registered)
        # A worker owns it.  It stays registered (a keep-alive client sends nothing while it waits for the
        # response, so that costs nothing and saves two epoll_ctl calls per request); if it does stir, the
        # loop stops watching it until the worker hands it back.
        self.busy = False
        self.closed = False  # an eviction may close it while its event is still in the loop's batch


def request_length(data: bytes | bytearray, scanned: int = 0) -> int:
    """The length of the whole request at the start of ``data`` (head and body), 0 while more must come.

    A head with a body the handler will refuse (too large, chunked, a bad Content-Length) counts as
    whole at its empty line: the handler answers it and closes the connection.  -1: a head beyond
    MAX_HEAD_BYTES with no end in sight.  ``scanned``: a prefix already searched in vain, not searched again.
    """
    head = head_length(data, scanned)
    if not head:
        return -1 if len(data) > MAX_HEAD_BYTES else 0
    if head > MAX_HEAD_BYTES:
        return -1
    match = _CONTENT_LENGTH.search(data, 0, head)
    body = match[1].strip() if match else b"0"
    if not body.isdigit() or int(body) > MAX_DISCARDED_BODY:
        return head
    total = head + int(body)
    return total if len(data) >= total else 0


def head_length(data: bytes | bytearray, scanned: int = 0) -> int:
    """The length of the request head (through its empty line) at the start of ``data``; 0 if not there yet."""
    start = max(0, scanned - 2)
    ends = [i + 3 for i in (data.find(b"\n\r\n", start),) if i >= 0]
    ends += [i + 2 for i in (data.find(b"\n\n", start),) if i >= 0]
    return min(ends) if ends else 0


class _BufferReader:
    """The handler's rfile: the request is already in the connection's buffer (the loop waited for it)."""

    def __init__(self, buffer: bytearray):
        self.buffer = buffer

    def readline(self, limit: int = -1) -> bytes:
        end = self.buffer.find(b"\n")
        size = len(self.buffer) if end < 0 else end + 1
        if limit >= 0:
            size = min(size, limit)
        line = bytes(self.buffer[:size])
        del self.buffer[:size]
        return line

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            size = len(self.buffer)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class _ResponseBuffer:
    """The handler's wfile: the whole response, sent in one write after the handler returns.

    Headers and body leave together: with keep-alive, a small header segment followed by the body
    would otherwise meet the client's delayed ACK (Nagle), a 40 ms stall per scrape.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class Handler(BaseHTTPRequestHandler):
    """One request, answered from the connection's buffer into a response buffer (no socket I/O here)."""

    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    server_version = f"shm-exporter/{L.__version__}"
    server: ExporterServer

    def __init__(self, conn: Connection, server: ExporterServer):  # not socketserver's: no I/O in the constructor
        self.connection = self.request = conn.sock
        self.client_address = conn.address
        self.server = server
        self.rfile = _BufferReader(conn.buffer)
        self.wfile = _ResponseBuffer()
        self.close_connection = True  # until parse_request sees a request that keeps it open
        self.holds_scrape_slot = False

    def response(self) -> bytes:
        return b"".join(self.wfile.chunks)

    def handle_expect_100(self) -> bool:
        return True  # the body is already here: the loop waited for it, so "100 Continue" would come too late

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
        url = urlsplit(self.path)
        path = url.path
        if path == app.telemetry_path:
            collect = collect_filters(url.query)
            if collect:  # checked before the scrape limit and not counted, as node_exporter's outer handler
                try:
                    check_filter(collect, None)
                except FilterError as exc:
                    self._refuse_filter(exc, headers, send_body)
                    return
            metrics = app.exposition.handler
            metrics.started()
            status: int | None = 500
            try:
                status = self._scrape(app, collect, headers, send_body)
            finally:
                metrics.finished(status)
        elif path == "/":
            self._reply(200, app.index, "text/html; charset=utf-8", headers, send_body)
        else:
            self._reply(404, b"404 page not found\n", headers=headers, send_body=send_body)

    def _scrape(self, app: App, collect: list[str], headers: dict[str, str], send_body: bool) -> int | None:
        """Answer the metrics path (promhttp's handler): the status code it answered, None for a refused
        filter (node_exporter refuses it before promhttp's handler, which does not count it)."""
        # Held until the response is written, as promhttp's limit: a scrape in flight is one being sent too.
        self.holds_scrape_slot = self.server.scrape_slots.acquire(blocking=False)
        if not self.holds_scrape_slot:
            limit = self.server.max_requests
            headers["X-Content-Type-Options"] = "nosniff"
            self._reply(503, f"Limit of concurrent requests reached ({limit}), try again later.\n".encode(),
                        headers=headers, send_body=send_body)
            return 503
        try:
            body = app.exposition.render(collect)
        except FilterError as exc:  # a collector the segment does not run (known only once it is read)
            self._refuse_filter(exc, headers, send_body)
            return None
        except Exception:  # a bug, not a segment state: those are all handled as shm_metrics_up 0
            log.exception("rendering the metrics failed")
            app.exposition.handler.error("gathering")
            self._reply(500, b"internal error rendering the metrics: see the exporter's log\n",
                        headers=headers, send_body=send_body)
            return 500
        if accepts_gzip(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        self._reply(200, body, CONTENT_TYPE, headers, send_body)
        return 200

    def _refuse_filter(self, exc: FilterError, headers: dict[str, str], send_body: bool) -> None:
        log.warning("Couldn't create filtered metrics handler: %s", exc)
        self._reply(400, refusal_body(exc), headers=headers, send_body=send_body)

    def _discard_body(self) -> bool:
        """Drop a request body nobody needs, so the connection stays usable; False if that is not possible."""
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


class AcceptBackoff:
    """What Go's net/http does when accept fails: pause 5 ms, doubling up to 1 s, until one succeeds.

    Without it, a listener whose accept fails (no descriptor left: EMFILE) stays readable and the
    loop spins at 100% CPU.  Logged once per episode, with the count of failures when it ends.
    """

    FIRST_DELAY = 0.005
    MAX_DELAY = 1.0

    def __init__(self) -> None:
        self.delay = 0.0
        self.failures = 0

    def failed(self, exc: OSError, open_connections: int) -> float:
        """Record a failed accept; the pause before the next attempt, in seconds."""
        self.delay = min(self.delay * 2, self.MAX_DELAY) if self.delay else self.FIRST_DELAY
        self.failures += 1
        if self.failures == 1:
            log.warning("accepting a connection failed: %s (%d connections open); pausing accept from %g s up to "
                        "%g s until it succeeds", exc.strerror or exc, open_connections, self.FIRST_DELAY,
                        self.MAX_DELAY)
        return self.delay

    def succeeded(self) -> None:
        if self.failures:
            log.info("accepting connections again after %d failed attempts", self.failures)
        self.delay = 0.0
        self.failures = 0


class _ScrapeSlots:
    """--web.max-requests: a counter of scrapes in flight; 0 means no limit."""

    def __init__(self, limit: int):
        self._semaphore = threading.BoundedSemaphore(limit) if limit > 0 else None

    def acquire(self, blocking: bool = False) -> bool:
        return True if self._semaphore is None else self._semaphore.acquire(blocking=blocking)

    def release(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()


class _WorkerPool:
    """Daemon threads, started when work waits and none is free, up to ``size``; they live as long as the server.

    ``work(job)`` returns what hands the job back (a connection to the loop).  The worker counts itself free
    before calling it: the job's next request (a keep-alive client answers at once) must find this thread
    free, not start another.  Counted free only after the hand-back, a worker raced every client's next
    request, and the pool crept towards ``size`` threads under steady load (issue 15), each with its own
    malloc arena holding scrape-sized buffers: resident memory that rose with the thread count.
    """

    def __init__(self, size: int, work: Callable[[Connection], Callable[[], None]]):
        self.size = size
        self._work = work
        self._jobs: collections.deque[Connection] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        self._threads = 0
        self._idle = 0
        self._stopping = False

    @property
    def threads(self) -> int:
        """Threads started so far (they never exit before stop())."""
        return self._threads

    def submit(self, job: Connection) -> None:
        with self._ready:
            self._jobs.append(job)
            if len(self._jobs) > self._idle and self._threads < self.size:
                self._threads += 1
                self._idle += 1  # free from birth: it takes this job (or the next) without a second start
                threading.Thread(target=self._run, name=f"shm-exporter-worker-{self._threads}", daemon=True).start()
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._stopping:
                    self._ready.wait()
                if self._stopping:
                    return
                self._idle -= 1
                job = self._jobs.popleft()
            hand_back = self._work(job)
            with self._ready:
                self._idle += 1
            hand_back()

    def stop(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify_all()


class _Listener:
    """A listening socket, as the loop's selector knows it."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket):
        self.sock = sock


def bind(address: tuple, family: socket.AddressFamily) -> socket.socket:
    """A listening TCP socket on ``address`` (``resolve``'s), as Go's net.Listen makes it."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address[0] in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # ":PORT": IPv4 and IPv6
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)  # as Go: a burst waits in the kernel while the loop catches up
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


SD_LISTEN_FDS_START = 3


class SystemdSocketError(Exception):
    pass


def systemd_listeners(environ: dict[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd's socket activation passed (sd_listen_fds(3), as go-systemd's
    ``activation.Listeners`` reads them): ``LISTEN_FDS`` descriptors from 3 on, when ``LISTEN_PID`` is this
    process.  The variables are removed (not inherited further); the descriptors are close-on-exec.
    SystemdSocketError when one of them is not a listening stream socket."""
    env = os.environ if environ is None else environ
    pid, count = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", "")
    env.pop("LISTEN_FDNAMES", None)
    if not (pid.isdigit() and int(pid) == os.getpid() and count.isdigit()):
        return []
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise SystemdSocketError(f"file descriptor {fd} from systemd: {exc.strerror or exc}") from None
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.detach()
            raise SystemdSocketError(f"file descriptor {fd} from systemd is not a listening stream socket")
        out.append(sock)
    return out


class ExporterServer:
    """The listener, the loop that owns idle connections, and the worker pool that answers requests.

    ``serve_forever()`` runs the loop in the calling thread until ``shutdown()`` (from another
    thread) or an exception (SystemExit from a signal handler); ``server_close()`` then closes
    every connection and the listener.
    """

    def __init__(self, address: tuple | None, family: socket.AddressFamily | None, app: App, *,
                 listeners: list[socket.socket] | None = None,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, max_requests: int = DEFAULT_MAX_REQUESTS,
                 read_header_timeout: float = DEFAULT_READ_HEADER_TIMEOUT):
        """Listens on ``address`` (bound here), or on ``listeners``: sockets already listening (one per
        --web.listen-address, or handed over by systemd), which the server owns from now on."""
        self.app = app
        self.max_connections = max_connections
        self.max_requests = max_requests
        self.read_header_timeout = read_header_timeout
        self.scrape_slots = _ScrapeSlots(max_requests)
        self.sockets = list(listeners) if listeners is not None else [bind(address, family)]
        for sock in self.sockets:
            sock.setblocking(False)
        self.socket = self.sockets[0]
        self._listeners = [_Listener(sock) for sock in self.sockets]
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, None)
        self._listening = False
        self._resume_accept_at = 0.0
        self.backoff = AcceptBackoff()
        # Connections the loop watches, oldest first, each with its deadline: those that have not sent a
        # whole request yet (in the TLS handshake, or the head still coming) and idle keep-alive ones.
        self._pending: collections.OrderedDict[Connection, float] = collections.OrderedDict()
        self._idle: collections.OrderedDict[Connection, float] = collections.OrderedDict()
        self.open_connections = 0
        self._evicted = 0  # in the current episode at the cap, for its log line
        self._returned: collections.deque[tuple[Connection, bool]] = collections.deque()
        self._stop = False
        # Scrapes have their own limit; the spare workers answer everything else meanwhile.  A slow reader
        # holds a worker only while its response does not fit in the socket buffers: a big scrape, at most.
        workers = max_requests + SPARE_WORKERS if max_requests > 0 else WORKERS_WITHOUT_SCRAPE_LIMIT
        self._workers = _WorkerPool(min(workers, MAX_WORKERS), self._answer)

    @property
    def port(self) -> int:
        """The first listener's port."""
        return self.socket.getsockname()[1]

    # ------------------------------------------------------------------ the loop

    def serve_forever(self) -> None:
        try:
            while not self._stop:
                now = time.monotonic()
                self._update_listener(now)
                for key, _ in self._selector.select(self._next_timeout(now)):
                    if key.data is None:
                        self._drain_wake()
                    elif isinstance(key.data, _Listener):
                        self._accept_ready(key.data.sock)
                    elif key.data.closed:
                        continue
                    elif key.data.busy:
                        self._unwatch(key.data)
                    elif key.data.handshaking:
                        self._continue_handshake(key.data)
                    else:
                        self._readable(key.data)
                self._take_back_returned()
                self._expire(time.monotonic())
        finally:
            self._stop = False

    def shutdown(self) -> None:
        """Stop serve_forever() (from another thread)."""
        self._stop = True
        self._wake()

    def server_close(self) -> None:
        self._workers.stop()
        for conn in [*self._pending, *self._idle]:
            self._close(conn)
        self._selector.close()
        for sock in (*self.sockets, self._wake_reader, self._wake_writer):
            sock.close()

    def _next_timeout(self, now: float) -> float | None:
        deadlines = [next(iter(d.values())) for d in (self._pending, self._idle) if d]
        if not self._listening and self._resume_accept_at > now:
            deadlines.append(self._resume_accept_at)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _update_listener(self, now: float) -> None:
        """Watch the listener unless accept is backing off, or at the cap with nothing to evict."""
        evictable = self.open_connections < self.max_connections or self._idle or self._pending
        want = now >= self._resume_accept_at and bool(evictable)
        if want and not self._listening:
            for listener in self._listeners:
                self._selector.register(listener.sock, selectors.EVENT_READ, listener)
        elif not want and self._listening:
            for listener in self._listeners:
                self._selector.unregister(listener.sock)
        self._listening = want

    def _wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except OSError:  # full (the loop is awake already) or closed (shutting down)
            pass

    def _drain_wake(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except OSError:
            pass

    # ------------------------------------------------------------------ accept, evict, expire

    def _accept_ready(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            if self.open_connections >= self.max_connections and not self._evict_one():
                return  # every connection is being answered: the listener pauses until one is done
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in ACCEPT_CLIENT_ERRORS:
                    continue
                # EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything unexpected: never retry at once (no spinning).
                self._resume_accept_at = time.monotonic() + self.backoff.failed(exc, self.open_connections)
                self._update_listener(time.monotonic())
                return
            self.backoff.succeeded()
            self._adopt(sock, address if isinstance(address, tuple) and address else ("unix socket",))

    def _adopt(self, sock: socket.socket, address: tuple) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.app.web.tls_enabled:
            context = self.app.web.ssl_context()
            if context is None:  # the web config became invalid: fail closed
                sock.close()
                return
            try:
                sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS with %s failed: %s", address[0], exc)
                sock.close()
                return
        conn = Connection(sock, address, tls=self.app.web.tls_enabled)
        self.open_connections += 1
        self._pending[conn] = time.monotonic() + self.read_header_timeout
        if conn.handshaking:
            self._continue_handshake(conn)
        else:
            self._watch(conn, selectors.EVENT_READ)

    def _evict_one(self) -> bool:
        """At the cap: close the oldest idle keep-alive connection, else the oldest without a whole request."""
        victims = self._idle or self._pending
        if not victims:
            return False
        if not self._evicted:
            log.warning("%d connections open, the cap (--web.max-connections %d): closing idle keep-alive "
                        "connections, then those without a whole request, oldest first",
                        self.open_connections, self.max_connections)
        self._evicted += 1
        self._close(next(iter(victims)))
        return True

    def _expire(self, now: float) -> None:
        for watched in (self._pending, self._idle):
            while watched:
                conn, deadline = next(iter(watched.items()))
                if deadline > now:
                    break
                log.debug("closing the connection from %s: %s", conn.address[0],
                          "idle" if watched is self._idle else "no whole request within the header timeout")
                self._close(conn)

    def _close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._unwatch(conn)
        self._pending.pop(conn, None)
        self._idle.pop(conn, None)
        try:
            conn.sock.close()
        except OSError:
            pass
        self.open_connections -= 1
        if self._evicted and self.open_connections < self.max_connections * 0.9:
            log.info("below the connection cap again, after closing %d connections to make room", self._evicted)
            self._evicted = 0

    def _watch(self, conn: Connection, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self._selector.modify(conn.sock, events, conn)
        else:
            self._selector.register(conn.sock, events, conn)
        conn.events = events

    def _unwatch(self, conn: Connection) -> None:
        if conn.events:
            self._selector.unregister(conn.sock)
            conn.events = 0

    # ------------------------------------------------------------------ reading

    def _continue_handshake(self, conn: Connection) -> None:
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._watch(conn, selectors.EVENT_WRITE)
            return
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake with %s failed: %s", conn.address[0], exc)
            self._close(conn)
            return
        conn.handshaking = False
        self._watch(conn, selectors.EVENT_READ)
        self._readable(conn)  # the request may have come with the handshake's last flight

    def _readable(self, conn: Connection) -> None:
        try:
            while True:
                chunk = conn.sock.recv(65536)
                if not chunk:
                    self._close(conn)  # the client closed
                    return
                conn.buffer += chunk
                # One read per wake-up (the selector reports the rest), except that decrypted bytes
                # OpenSSL holds would not wake it again.
                if not (conn.tls and conn.sock.pending()):
                    break
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        except ssl.SSLWantWriteError:  # TLS wants to write before it can read (a key update): wait for room
            self._watch(conn, selectors.EVENT_WRITE)
        except OSError:
            self._close(conn)
            return
        else:
            if conn.events == selectors.EVENT_WRITE:  # the key update is done: back to waiting for requests
                self._watch(conn, selectors.EVENT_READ)
        if not conn.buffer:
            return
        if conn in self._idle:  # the next request began: it has the header timeout to arrive whole
            del self._idle[conn]
            self._pending[conn] = time.monotonic() + self.read_header_timeout
        length = request_length(conn.buffer, conn.scanned)
        if length == 0 and not head_length(conn.buffer, conn.scanned):
            conn.scanned = len(conn.buffer)
        if length > 0:
            self._dispatch(conn)
        elif length < 0:
            try:
                conn.sock.send(_HEAD_TOO_LARGE_REPLY)  # best effort: a socket with room takes it whole
            except OSError:
                pass
            self._close(conn)

    def _dispatch(self, conn: Connection) -> None:
        conn.busy = True
        self._pending.pop(conn, None)
        self._workers.submit(conn)

    def _take_back_returned(self) -> None:
        while self._returned:
            conn, keep = self._returned.popleft()
            if not keep:
                self._close(conn)
                continue
            conn.busy = False
            self._idle[conn] = time.monotonic() + IDLE_TIMEOUT_SECONDS
            self._watch(conn, selectors.EVENT_READ)
            if conn.buffer or (conn.tls and conn.sock.pending()):
                self._readable(conn)  # a pipelined request, partly here

    # ------------------------------------------------------------------ the workers

    def _answer(self, conn: Connection) -> Callable[[], None]:
        """In a worker: answer each whole request in the buffer; returns what hands the connection back to the
        loop (the pool calls it once the worker counts as free again)."""
        keep = False
        try:
            keep = self._answer_requests(conn)
        except Exception as exc:  # a timeout, a reset, a bug: this connection goes, the server stays
            log.debug("connection from %s ended with an error: %s", conn.address[0], exc,
                      exc_info=not isinstance(exc, OSError))

        def hand_back() -> None:
            self._returned.append((conn, keep))
            self._wake()

        return hand_back

    def _answer_requests(self, conn: Connection) -> bool:
        conn.scanned = 0  # the buffer is consumed from its start: what is left has not been searched
        while request_length(conn.buffer) > 0:
            handler = Handler(conn, self)
            try:
                handler.handle_one_request()
                send_all(conn.sock, handler.response(), time.monotonic() + WRITE_TIMEOUT_SECONDS)
            finally:
                if handler.holds_scrape_slot:
                    self.scrape_slots.release()
            if handler.close_connection:
                return False
        return True


def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send all of ``data`` on a non-blocking socket by ``deadline`` (TimeoutError otherwise), waiting for room."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
            continue
        except (BlockingIOError, ssl.SSLWantWriteError):
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the client did not read its response in time")
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        poller.poll(remaining * 1000)


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit, as node_exporter (Go) does at start; (soft, hard) after.

    The usual soft limit, 1024, is what a connection flood exhausts first; the hard limit is what the
    administrator (or systemd's LimitNOFILE) allows.  Both values are logged.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("open files limit (RLIMIT_NOFILE): soft %s, already the hard limit %s", _limit(soft), _limit(hard))
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("open files limit (RLIMIT_NOFILE): soft %s, hard %s; raising the soft limit failed: %s",
                    _limit(soft), _limit(hard), exc)
        return soft, hard
    log.info("open files limit (RLIMIT_NOFILE): soft %s raised to the hard limit %s", _limit(soft), _limit(hard))
    return hard, hard


M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas(count: int = 1) -> bool:
    """Let the worker threads share ``count`` malloc arenas (glibc's mallopt M_ARENA_MAX); True if applied.

    glibc gives each new thread an arena of its own (up to 8 per CPU), and each keeps the fragments of the
    scrape-sized buffers its thread allocated (a 50 KiB body, its gzip copy, zlib's 64 KiB windows): with two
    keep-alive scrapers, 32.3 MiB with an arena per worker against 29.0 MiB with one, flat from the first
    scrapes (issue 15).  Python allocates under the GIL anyway, so the shared arena costs no waiting worth
    measuring.  An operator's MALLOC_ARENA_MAX wins; elsewhere than glibc this does nothing.
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return mallopt(M_ARENA_MAX, count) == 1


def connection_cap(requested: int, soft_nofile: int) -> int:
    """--web.max-connections as the file descriptors allow: FD_RESERVE stays for the exporter itself."""
    if soft_nofile == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft_nofile - FD_RESERVE))


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def collect_filters(query: str) -> list[str]:
    """The ``collect[]`` values of a query string, as Go's ``url.Query()`` finds them: pairs split on ``&``,
    a pair with ``;`` or a bad ``%`` escape skipped, ``+`` a space."""
    out = []
    for pair in query.split("&"):
        if not pair or ";" in pair or _BAD_ESCAPE.search(pair):
            continue
        key, _, value = pair.partition("=")
        if unquote_plus(key) == "collect[]":
            out.append(unquote_plus(value))
    return out


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
