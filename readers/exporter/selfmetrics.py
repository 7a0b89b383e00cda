"""The exporter's own metrics as node_exporter's Go client writes them: ``process_*`` and ``promhttp_*``.

node_exporter serves the Go client's process collector (client_golang 1.14,
``process_collector_other.go``: ``/proc/self/stat``, ``/proc/self/fd``, the soft
limits) and promhttp's instrumentation of the metrics handler:

- ``promhttp_metric_handler_requests_total{code}``: scrapes of the metrics path by status code, counted when
  the answer is ready (so a scrape sees the ones before it); 200, 500 and 503 are there from the start;
- ``promhttp_metric_handler_requests_in_flight``: scrapes being answered, the one that reads it included;
- ``promhttp_metric_handler_errors_total{cause}``: ``gathering`` (the metrics could not be rendered, a 500
  here) and ``encoding`` (never, here).

With ``--web.disable-exporter-metrics`` node_exporter leaves out ``process_*``, ``go_*`` and the two request
families, but still serves ``promhttp_metric_handler_errors_total`` (promhttp registers it whatever): so here.
"""

from __future__ import annotations

import os
import resource
import threading

from shm_metrics.families import COUNTER, GAUGE, Family

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")
_UNLIMITED = float(2**64 - 1)  # procfs reads "unlimited" as the largest uint64, as Go's client reports it


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0


_BOOT_TIME = _boot_time()


def _limit(which: int) -> float:
    soft, _ = resource.getrlimit(which)
    return _UNLIMITED if soft == resource.RLIM_INFINITY else float(soft)


_stat_fd = -1  # /proc/self/stat, kept open from the first scrape on
_stat_fd_lock = threading.Lock()


def _own_stat() -> bytes:
    """This process's /proc/self/stat line: one pread of a kept descriptor per scrape, not a Python file object
    (an open, an fstat, two reads and a close).  The line is well under a page, and the kernel writes it whole
    in one read."""
    global _stat_fd
    if _stat_fd < 0:
        fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
        with _stat_fd_lock:  # two first scrapes at once keep one descriptor
            if _stat_fd < 0:
                _stat_fd, fd = fd, -1
        if fd >= 0:
            os.close(fd)
    return os.pread(_stat_fd, 4096, 0)


def process_families() -> list[Family]:
    """The Go client's process collector for this process, by family name."""
    stat = _own_stat()
    fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    utime, stime, starttime = int(fields[11]), int(fields[12]), int(fields[19])
    vsize, rss = int(fields[20]), int(fields[21])
    open_fds = len(os.listdir("/proc/self/fd"))

    def one(name: str, kind: str, help_: str, value: float) -> Family:
        return Family(name, kind, help_, (), [((), float(value))])

    return [
        one("process_cpu_seconds_total", COUNTER, "Total user and system CPU time spent in seconds.",
            (utime + stime) / _TICKS),
        one("process_max_fds", GAUGE, "Maximum number of open file descriptors.", _limit(resource.RLIMIT_NOFILE)),
        one("process_open_fds", GAUGE, "Number of open file descriptors.", open_fds),
        one("process_resident_memory_bytes", GAUGE, "Resident memory size in bytes.", rss * _PAGE_SIZE),
        one("process_start_time_seconds", GAUGE, "Start time of the process since unix epoch in seconds.",
            _BOOT_TIME + starttime / _TICKS),
        one("process_virtual_memory_bytes", GAUGE, "Virtual memory size in bytes.", vsize),
        one("process_virtual_memory_max_bytes", GAUGE, "Maximum amount of virtual memory available in bytes.",
            _limit(resource.RLIMIT_AS)),
    ]


class HandlerMetrics:
    """promhttp's instrumentation of the metrics handler; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {"200": 0, "500": 0, "503": 0}  # promhttp initialises these three
        self.in_flight = 0
        self.errors: dict[str, int] = {"encoding": 0, "gathering": 0}

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, status: int | None) -> None:
        """A scrape answered with ``status`` (None: refused before promhttp's handler, not counted)."""
        with self._lock:
            self.in_flight -= 1
            if status is None:
                return
            code = str(status)
            self.requests[code] = self.requests.get(code, 0) + 1

    def error(self, cause: str) -> None:
        with self._lock:
            self.errors[cause] = self.errors.get(cause, 0) + 1

    def families(self, requests: bool = True) -> list[Family]:
        """The promhttp families; without ``requests`` (--web.disable-exporter-metrics) only the errors."""
        with self._lock:
            out = [Family("promhttp_metric_handler_errors_total", COUNTER,
                          "Total number of internal errors encountered by the promhttp metric handler.", ("cause",),
                          [((cause,), float(n)) for cause, n in sorted(self.errors.items())])]
            if requests:
                out.append(Family("promhttp_metric_handler_requests_in_flight", GAUGE,
                                  "Current number of scrapes being served.", (), [((), float(self.in_flight))]))
                out.append(Family("promhttp_metric_handler_requests_total", COUNTER,
                                  "Total number of scrapes by HTTP status code.", ("code",),
                                  [((code,), float(n)) for code, n in sorted(self.requests.items())]))
        return out
