"""Per-process scans: ``shm-publisher --top N`` (top processes by CPU and memory, counts by state), and
node_exporter's ``processes`` collector (``ProcessCounter``, publisher/collectors/processes.py).

Once per sample, ``ProcessTable.scan()`` lists /proc (when a task may have
come) and reads every process's ``/proc/PID/stat``.  From it come the top N
processes by CPU and by resident memory, and the counts of that collector:
``node_processes_state{state}`` (processes by the state letter of stat field 3)
and ``node_processes_threads_state{thread_state}`` (threads by the state letter
of ``/proc/PID/task/TID/stat``; like node_exporter, a process's leader thread
is counted with the process's state).

``ProcessCounter.count()`` takes only that collector's counts, for a scrape: the same kept files and the
same listing rule, every file read and counted in one C call (``_scan.stat_states``), since at 1 Hz each
Python bytecode per task costs about what the kernel's stat line does.  What follows is the table's.

Costs: this runs every second on hosts with thousands of processes.  The
kernel formats a stat file afresh on every read (~5 us each, the floor: one
read per process and per extra thread); the design keeps everything else off
that path.  Measured with 2080 processes, 2000 of them sleeping children, on 2
shared vCPUs (``time_scan``, top_n=10): 15.5-16 ms per scan, ~7.5 us per
process; open/read/close with every line parsed: 30-34 ms, 14.5-16.5 us per
process; node_exporter 1.5's processes collector alone: 68-84 ms of CPU per
scrape.

* /proc is listed with ``os.listdir`` (~20 % cheaper than ``os.scandir``
  here: no DirEntry objects), once per scan, and only when a task may have
  come: /proc/loadavg ends with the number of tasks and the last PID given
  out in the reader's PID namespace.  A new process or thread moves the
  PID; while neither moved, the last scan's processes and the last
  listings of their ``task/`` directories stand (one that exited meanwhile
  reads ESRCH, as below, and drops out).  Only when ``procfs`` is this
  process's own namespace's /proc (its ``self`` is our PID): another's last
  PID says nothing of it.  On a quiet host that is most of the kernel's
  work beyond the stat reads (2 vCPUs, 68 processes, 2 of them
  multithreaded, at 0.3 s apart, ad hoc: listing /proc ~240 us, their
  ``task/`` ~126 us, of a ~1,030 us scan).
* Stat files are kept open between scans and re-read with ``pread`` at
  offset 0, which saves the path lookup, open and close (~5 us per process:
  26-33 ms -> 15.5-16 ms per scan above).  A kept fd belongs to the task it
  was opened for: once that process has exited it reads ESRCH, never another
  process's data even when the pid is reused, and it is closed.  Fds of
  processes missing from the listing are closed at the end of the scan.  At
  most half the soft RLIMIT_NOFILE is kept (the soft limit is raised to the
  hard one the first time that budget runs out); beyond it, processes fall
  back to open/read/close.  When nobody asks for scans any more (a viewer
  quit), ``release()`` closes them all: a process that exits meanwhile is not
  held open until some later scan.  (With the limit raised, fds above 1023 exist in
  this process: select() cannot wait on fds opened after them.)
* A stat line byte for byte equal to the previous scan's (most sleeping
  processes: nothing in it moved) is not parsed again: same process (the
  start time is in it), no CPU since, same rss and state (21-24 ms ->
  15.5-16 ms above).  Other lines are split only up to rss (field 24 of 52).
* Threads: every process is counted as its leader thread in its own state, so
  a single-threaded process (num_threads 1, also a zombie's) costs nothing
  more.  Only multithreaded processes have ``task/`` listed and their other
  threads' stat read (only the state letter is looked at); those fds are kept
  open too (1900 threads: 17 ms instead of 27 ms with open/read/close).
* Top N: a 2N min-heap by (rss, -pid) fed while reading (a row below its
  floor costs one comparison); N for by_rss, and the idle rows that fill by_cpu
  when fewer than N processes used CPU.  Only the final rows get a name decoded,
  and a user and an exact RSS from ``/proc/PID/status``: at most 2N reads of it
  per scan (~12 us each), uid -> name cached; a row whose stat line is byte for
  byte the one its status was read with at the last scan keeps that status.  (Stat's rss is ranked on, but on
  Linux >= 6.2 it lags the exact value by up to a batch of pages per CPU; see
  ``_status``.)
* CPU: the previous ticks live in the per-pid record with the start time, so
  a reused pid is never credited with another process's CPU; records of pids
  missing from a scan are dropped.

Processes vanish at any moment: one whose file fails to open, read or parse is
skipped, silently (that is no error, and it happens all the time).
"""

from __future__ import annotations

import heapq
import os
import pwd
import re
import resource
import time
from array import array
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from shm_metrics.publisher.collectors.numbers import stat_states

USER_HZ = os.sysconf("SC_CLK_TCK")
PAGE_SIZE_BYTES = os.sysconf("SC_PAGE_SIZE")
_STAT_READ_BYTES = 4096  # a stat line is ~300 bytes; comm is at most 64
_STATUS_READ_BYTES = 4096  # status is ~1.5 KB; Uid: and VmRSS: are in its first half
_O_FLAGS = os.O_RDONLY | os.O_CLOEXEC

# Fields of /proc/PID/stat after "(comm) ", counted from 0 (field 3, state, is 0).
_STATE, _UTIME, _STIME, _NUM_THREADS, _STARTTIME, _RSS = 0, 11, 12, 17, 19, 21
_SPLITS = _RSS + 1  # split no further than rss: the other ~30 fields are never looked at


class ProcessScan(NamedTuple):
    """One scan: top rows by CPU and by RSS, and counts by state letter.

    Rows: pid, name (comm), user (of the effective uid), state, cpu_percent (100 = one CPU, since the previous
    scan; for a process not seen before, its average since it started), rss_bytes, threads.  by_cpu is
    filled up with idle processes (most RSS first) when fewer than top_n used CPU.
    """

    procs_total: int  # processes whose stat this scan read
    by_cpu: list[dict]  # at most top_n rows, highest cpu_percent first (ties: higher rss, then lower pid)
    by_rss: list[dict]  # at most top_n rows, highest rss_bytes first (ties: lower pid)
    states: list[dict]  # {"state", "processes", "threads"} per state letter seen, sorted by letter


class ProcessCounts(NamedTuple):
    """node_exporter's processes collector's counts (``ProcessCounter.count``)."""

    procs_total: int  # processes whose stat was read
    threads_total: int  # the sum of their num_threads (node_processes_threads)
    states: list[dict]  # {"state", "processes", "threads"} per state letter counted, sorted by letter


class ProcessTable:
    """The kept-open stat fds of the processes, and their CPU ticks at the previous scan."""

    def __init__(self, top_n: int = 10, procfs: str = "/proc") -> None:
        if top_n < 0:
            raise ValueError(f"top_n must be >= 0, not {top_n}")
        self.top_n = top_n
        self.procfs = procfs
        # pid as in /proc -> [kept stat fd or None, last stat bytes, starttime (ticks after boot),
        #                     utime+stime (ticks), row: (rss pages, -pid, cpu %, pid, stat bytes, threads, state)]
        self._procs: dict[str, list] = {}
        # tid -> kept stat fd of a thread other than the leader of a multithreaded process
        self._task_fds: dict[str, int] = {}
        # The last listing's mark (``tasks_mark``), and the tids listed in task/ of each multithreaded process
        # (by pid): both stand while the mark has not moved.
        self._listed_mark: bytes | None = None
        self._task_ids: dict[str, list[str]] = {}
        self._users: dict[int, str] = {}
        # The last scan's rows' /proc/PID/status reads, with the stat line each was read with (``_row``).
        self._statuses: dict[int, tuple[bytes, tuple[str, int | None]]] = {}
        self._last_scan_monotonic: float | None = None
        self._budget = FdBudget(2, procfs)  # the stat fds kept in _procs and _task_fds
        try:
            self._uptime_fd: int | None = os.open(f"{procfs}/uptime", _O_FLAGS)
        except OSError:  # a procfs without uptime (a fixture tree): new processes' CPU share is then 0
            self._uptime_fd = None
        self._loadavg_fd = open_loadavg(procfs)

    # ------------------------------------------------------------------ scan
    def scan(self) -> ProcessScan:
        """Read every process once; see the module docstring for what it costs."""
        now = time.monotonic()
        wall_seconds = None if self._last_scan_monotonic is None else now - self._last_scan_monotonic
        self._last_scan_monotonic = now
        # ticks over the wall time between scans -> percent of one CPU
        percent_per_tick = 100.0 / USER_HZ / wall_seconds if wall_seconds else 0.0
        uptime_seconds = None  # read only if some process is seen for the first time

        procfs = self.procfs
        pread, close = os.pread, os.close
        heappush, heappushpop = heapq.heappush, heapq.heappushpop
        old, new = self._procs, {}
        pop = old.pop
        states: list[bytes] = []  # one state letter per process, counted at the end (in C)
        state_append = states.append
        busy = []  # (cpu percent, rss pages, -pid, row) of the processes that used CPU
        multithreaded = []  # pids of the processes whose other threads need reading
        # The 2N largest rows by rss (N for by_rss, and enough idle ones to fill by_cpu), as a min-heap.
        heap: list[tuple] = []
        heap_size = 2 * self.top_n
        rss_floor = -1 if heap_size else float("inf")  # a row below it cannot enter the full heap
        mark = tasks_mark(self._loadavg_fd)
        if mark is not None and mark == self._listed_mark:
            names = list(old)  # no task came since the listing: its processes, less those that exited
            listed = False
        else:
            names = [name for name in os.listdir(procfs) if name.isdigit()]
            listed = True
        self._listed_mark = mark

        for name in names:
            rec = pop(name, None)
            data = b""
            if rec is not None and rec[0] is not None:
                try:
                    data = pread(rec[0], _STAT_READ_BYTES, 0)
                except OSError:  # ESRCH: the process it was opened for has exited (this pid is reused)
                    pass
                if not data:
                    close(rec[0])
                    self._budget.kept -= 1
                    rec[0] = None
            if not data:
                fd, data = self._open_stat(f"{procfs}/{name}/stat")
                if not data:
                    continue
                if rec is not None:
                    rec[0] = fd
                else:
                    rec = [fd, b"", -1, 0, None]

            if data == rec[1]:
                # Byte for byte the same as at the last scan (most sleeping processes): the same process
                # (starttime is in it), no tick of CPU since, the same rss and state.  Nothing to parse.
                row = rec[4]
                if row[2]:  # it used CPU before the last scan, none since
                    row = rec[4] = (row[0], row[1], 0.0, *row[3:])
            else:
                try:
                    fields = data[data.rindex(b")") + 2:].split(b" ", _SPLITS)
                    state = fields[_STATE]
                    ticks = int(fields[_UTIME]) + int(fields[_STIME])
                    start = int(fields[_STARTTIME])
                    row_tail = (data, int(fields[_NUM_THREADS]), state)
                    rss = int(fields[_RSS])
                except (ValueError, IndexError):  # not a stat line: skip it, as a vanished process
                    if rec[0] is not None:
                        close(rec[0])
                        self._budget.kept -= 1
                    continue
                if rec[2] == start and wall_seconds:
                    cpu = (ticks - rec[3]) * percent_per_tick
                elif ticks:  # first seen: its average since it started, like ps's %CPU
                    if uptime_seconds is None:
                        uptime_seconds = self._uptime_seconds()
                    age_seconds = uptime_seconds - start / USER_HZ
                    cpu = 100.0 * ticks / USER_HZ / age_seconds if age_seconds > 0 else 0.0
                else:
                    cpu = 0.0
                pid = int(name)
                row = (rss, -pid, cpu, pid, *row_tail)  # tuples order by rss, then lower pid
                rec[1:] = data, start, ticks, row
                if cpu > 0:
                    busy.append((cpu, rss, -pid, row))
            new[name] = rec

            state_append(row[6])
            if row[5] > 1:
                multithreaded.append(name)
            if row[0] >= rss_floor:  # (rss, -pid) decides; many processes have the same rss
                if len(heap) < heap_size:
                    heappush(heap, row)
                    if len(heap) == heap_size:
                        rss_floor = heap[0][0]
                elif row > heap[0]:
                    heappushpop(heap, row)
                    rss_floor = heap[0][0]

        for rec in old.values():  # processes gone since the last scan
            if rec[0] is not None:
                close(rec[0])
                self._budget.kept -= 1
        self._procs = new

        proc_states = Counter(states)
        # Every process has its leader thread, counted in the process's state (as node_exporter does);
        # only multithreaded processes have other threads to read.
        thread_states = proc_states.copy()
        self._count_threads(multithreaded, thread_states, listed)

        n = self.top_n
        by_rss = sorted(heap, reverse=True)
        by_cpu = [b[3] for b in heapq.nlargest(n, busy)]
        if len(by_cpu) < n:
            # Fewer than N used CPU: the idle ones with the most RSS fill the list, as in top.  The 2N largest
            # by RSS hold enough idle ones: fewer than N of them are busy.
            by_cpu += [r for r in by_rss if not r[2]][:n - len(by_cpu)]
        status: dict[int, tuple[bytes, tuple[str, int | None]]] = {}  # this scan's: a pid is often in both lists
        rows_cpu = [self._row(r, status) for r in by_cpu]
        rows_rss = [self._row(r, status) for r in by_rss[:n]]
        self._statuses = status  # what the next scan may reuse: the rows' statuses only (at most 2N)
        # The rows' rss_bytes are exact (VmRSS); put the lists in the order of what they say.
        rows_cpu.sort(key=lambda r: (-r["cpu_percent"], -r["rss_bytes"], r["pid"]))
        rows_rss.sort(key=lambda r: (-r["rss_bytes"], r["pid"]))
        return ProcessScan(
            procs_total=len(new),
            by_cpu=rows_cpu,
            by_rss=rows_rss,
            states=[{"state": s.decode("ascii", "replace"), "processes": proc_states[s], "threads": thread_states[s]}
                    for s in sorted(thread_states)],
        )

    def _open_stat(self, path: str) -> tuple[int | None, bytes]:
        """(fd kept for the next scans or None, data) of a stat file not read before; b"" if it vanished."""
        fd, data = self._budget.open_kept(path)
        return (fd if fd >= 0 else None), data

    def _count_threads(self, multithreaded: list[str], thread_states: Counter, listed: bool) -> None:
        """Add the threads other than the leader of each multithreaded process, by the state in their stat.
        ``listed``: /proc was listed for this scan (a task may have come), so task/ is listed again too."""
        procfs = self.procfs
        pread, close = os.pread, os.close
        old, new = self._task_fds, {}  # tid -> kept fd (a tid is unique among live tasks)
        pop = old.pop
        listings, task_ids = self._task_ids, {}
        for name in multithreaded:
            tids = task_listing(procfs, name, listed, listings)
            if tids is None:
                continue
            task_ids[name] = tids
            for tid in tids:
                if tid == name:  # the leader: counted with its process
                    continue
                fd = pop(tid, None)
                data = b""
                if fd is not None:
                    try:
                        data = pread(fd, _STAT_READ_BYTES, 0)
                    except OSError:  # that thread has exited (the tid may be reused)
                        pass
                    if not data:
                        close(fd)
                        self._budget.kept -= 1
                        fd = None
                if fd is None:
                    fd, data = self._open_stat(f"{procfs}/{name}/task/{tid}/stat")
                    if not data:
                        continue
                if fd is not None:
                    new[tid] = fd
                r = data.rfind(b")")
                if r > 0:
                    thread_states[data[r + 2:r + 3]] += 1
        for fd in old.values():
            close(fd)
        self._budget.kept -= len(old)
        self._task_fds = new
        self._task_ids = task_ids

    def _uptime_seconds(self) -> float:
        """Seconds since boot, or 0.0 (every process then has age <= 0) without a readable uptime."""
        if self._uptime_fd is None:
            return 0.0
        try:
            return float(os.pread(self._uptime_fd, 64, 0).split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0

    # ------------------------------------------------------------------ rows
    def _row(self, row: tuple, status: dict[int, tuple[bytes, tuple[str, int | None]]]) -> dict:
        """The dict of a heap row, with the user and exact RSS from /proc/PID/status (read at most once per scan).

        A process whose stat line is byte for byte the one its status was read with (the last scan's row) keeps
        that status: since then it has not changed state, been charged a tick, faulted a page or changed its
        rss pages, so its user and VmRSS are those read.  Most of the top by RSS are such sleepers, and a
        status read is the scan's most expensive file (open, the kernel's ~1.5 KB of text, close)."""
        rss_pages, _, cpu, pid, data, threads, state = row
        got = status.get(pid)
        if got is None:
            kept = self._statuses.get(pid)
            got = status[pid] = kept if kept is not None and kept[0] == data else (data, self._status(pid))
        user, rss_bytes = got[1]
        return {"pid": pid, "name": data[data.index(b"(") + 1:data.rindex(b")")].decode("utf-8", "replace"),
                "user": user, "state": state.decode("ascii", "replace"), "cpu_percent": cpu,
                "rss_bytes": rss_pages * PAGE_SIZE_BYTES if rss_bytes is None else rss_bytes, "threads": threads}

    def _status(self, pid: int) -> tuple[str, int | None]:
        """(name of the effective uid, VmRSS bytes) from /proc/PID/status; ("", None) if the process has gone.

        VmRSS is the exact sum of the per-CPU rss counters (Linux >= 6.2 keeps them per CPU); stat's field 24
        reads them without summing, and lags by up to a batch of pages per CPU (190 KiB seen on 2 CPUs): good
        enough to rank, but the rows say what ps and top say.  uid -> name is cached.
        """
        try:
            fd = os.open(f"{self.procfs}/{pid}/status", _O_FLAGS)
        except OSError:
            return "", None
        try:
            data = os.pread(fd, _STATUS_READ_BYTES, 0)
        except OSError:
            return "", None
        finally:
            os.close(fd)
        rss_bytes = None
        at = data.find(b"\nVmRSS:")
        if at >= 0:  # kernel threads have no VmRSS line
            try:
                rss_bytes = int(data[at + 7:data.index(b"\n", at + 7)].split()[0]) * 1024  # "VmRSS:  1234 kB"
            except (ValueError, IndexError):
                pass
        at = data.find(b"\nUid:")
        if at < 0:
            return "", rss_bytes
        try:
            uid = int(data[at + 5:data.index(b"\n", at + 5)].split()[1])  # real, effective, saved, fs
        except (ValueError, IndexError):
            return "", rss_bytes
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name
            except KeyError:
                name = str(uid)
            self._users[uid] = name
        return name, rss_bytes

    # ------------------------------------------------------------------ fds
    @property
    def kept_fds(self) -> int:
        """How many fds the table keeps open (stat files of processes and threads, /proc/uptime)."""
        return self._budget.kept + (self._uptime_fd is not None)

    def release(self) -> None:
        """Close every kept stat fd and forget the previous scan (nobody asks for scans any more: the fds of
        processes that exit meanwhile would stay open until the next one).  The next scan starts afresh."""
        for rec in self._procs.values():
            if rec[0] is not None:
                os.close(rec[0])
                rec[0] = None
        self._procs = {}
        for fd in self._task_fds.values():
            os.close(fd)
        self._task_fds = {}
        self._budget.kept = 0
        self._last_scan_monotonic = None
        self._statuses = {}
        self._listed_mark = None
        self._task_ids = {}

    def close(self) -> None:
        """Close every kept fd; the table must not be scanned afterwards."""
        self.release()
        for fd in (self._uptime_fd, self._loadavg_fd):
            if fd is not None:
                os.close(fd)
        self._uptime_fd = self._loadavg_fd = None


class FdBudget:
    """How many stat files a table keeps open: a share of the soft RLIMIT_NOFILE.  The first time a table's
    share runs out, the soft limit is raised to the hard one (another table may have raised it already)."""

    def __init__(self, share: int, procfs: str) -> None:
        self.share = share
        self.procfs = procfs
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0] // share
        self.kept = 0  # the table gives back what it closes
        self._raised = False

    def open_kept(self, path: str) -> tuple[int, bytes]:
        """(fd kept open if it fits the budget, else -1; the first read) of a stat file; b"" if it vanished."""
        try:
            fd = os.open(path, _O_FLAGS)
        except OSError:
            return -1, b""
        try:
            data = os.pread(fd, _STAT_READ_BYTES, 0)
        except OSError:
            data = b""
        if data and self.take():
            return fd, data
        os.close(fd)
        return -1, data

    def take(self) -> bool:
        """Whether one more fd fits; if so, it is counted as kept."""
        if self.kept >= self.limit and not self._grow():
            return False
        self.kept += 1
        return True

    def _grow(self) -> bool:
        """Once: the share of the soft limit as it is now, raised to the hard one if need be.  True if it grew."""
        if self._raised:
            return False
        self._raised = True
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            try:  # the kernel refuses more than nr_open
                with open(f"{self.procfs}/sys/fs/nr_open") as f:
                    hard = int(f.read())
            except (OSError, ValueError):
                hard = soft
        if hard > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
                soft = hard
            except (OSError, ValueError):
                pass
        self.limit = max(self.limit, soft // self.share)
        return self.kept < self.limit


# The fields of a stat line that ProcessCounter and _scan.stat_states take: the last ")", one state byte, then 21
# integers (ppid .. rss), num_threads the 17th of them.
_STAT_LINE = re.compile(rb".*\) (.) ((?:-?[0-9]+[ \n]){20}-?[0-9]+)(?:[ \n]|$)", re.S)


def _stat_states_python(fds: array, states: bytearray,
                        threads: array | None) -> tuple[list[int], dict[int, int], int, list[int]]:
    """``_scan.stat_states`` without the extension: the same reads, the same rule, the same counts."""
    failed, counts, threads_total, multithreaded = [], Counter(), 0, []
    for i, fd in enumerate(fds):
        parsed = _state_and_threads(_read_kept(fd))
        if parsed is None:
            states[i] = 0
            if threads is not None:
                threads[i] = 0
            failed.append(i)
            continue
        states[i] = parsed[0]
        counts[parsed[0]] += 1
        if threads is not None:
            threads[i] = parsed[1]
            threads_total += parsed[1]
            if parsed[1] > 1:
                multithreaded.append(i)
    return failed, dict(counts), threads_total, multithreaded


_stat_states = stat_states or _stat_states_python


def _read_kept(fd: int) -> bytes:
    """A kept stat file's line; b"" when none is kept (-1) or its task has exited (ESRCH)."""
    if fd < 0:
        return b""
    try:
        return os.pread(fd, _STAT_READ_BYTES, 0)
    except OSError:
        return b""


def _state_and_threads(data: bytes) -> tuple[int, int] | None:
    """(state letter, num_threads) of a stat line, or None when ``data`` is not one (_STAT_LINE)."""
    match = _STAT_LINE.match(data)
    if match is None:
        return None
    return match[1][0], int(match[2].split()[_NUM_THREADS - 1])


class ProcessCounter:
    """node_exporter's ``processes`` collector's counts (publisher/collectors/processes.py), read as ProcessTable
    reads: stat files kept open (a quarter of the soft RLIMIT_NOFILE, so that a ``--top`` table fits beside),
    /proc listed only when a task came (``tasks_mark``), ``task/`` only of multithreaded processes.  Every
    kept file is read in one C call per scan (``_scan.stat_states``): the state letter and num_threads are all
    it takes of a line, and at 1 Hz each Python bytecode per task costs more than the kernel's line.

    It counts as node_exporter counts: a process whose stat can be read (one that vanished meanwhile is not);
    its threads are its stat's num_threads; threads by state come from ``task/``, the leader counted in the
    process's state, and only where the process has a ``task/`` directory (node_exporter's own fixture tree
    has none); a stat file that is not a stat line fails the count (ValueError), as it fails the scrape.
    """

    def __init__(self, procfs: str = "/proc") -> None:
        self.procfs = procfs
        self._budget = FdBudget(4, procfs)
        self._loadavg_fd = open_loadavg(procfs)
        # On this namespace's live /proc every process has task/; a fixture tree's may not (looked at per process).
        self._live = self._loadavg_fd is not None
        self._listed_mark: bytes | None = None
        # The processes of the last listing, less those that exited since, in order: their pids, kept stat
        # fds (-1: none kept, read with open/read/close) and whether each has a task/ directory (looked at once).
        self._pids: list[str] = []
        self._fds = array("i")
        self._has_task: list[bool] = []
        self._leaderless = 0  # how many have no task/ directory
        self._states, self._thread_counts = bytearray(), array("q")  # the last count's, position by position
        # The threads other than the leaders of the multithreaded processes (``_thread_key``, while it stands
        # and no task came): "pid/task/tid" paths and kept fds; and each such process's task/ listing.
        self._thread_key: tuple[str, ...] = ()
        self._threads: list[str] = []
        self._thread_fds = array("i")
        self._task_ids: dict[str, list[str]] = {}

    def count(self) -> ProcessCounts:
        """Every process read once (and every other thread of the multithreaded ones); no top rows."""
        mark = tasks_mark(self._loadavg_fd)
        listed = mark is None or mark != self._listed_mark
        if listed:
            self._list()
        self._listed_mark = mark
        pids, has_task, states = self._pids, self._has_task, self._states  # positions of this count
        failed, counts, threads_total, multi = _stat_states(self._fds, states, self._thread_counts)
        proc_states = Counter(counts)
        gone = []
        if failed:
            gone = self._read_again(failed, proc_states, multi)
            threads_total = sum(self._thread_counts)
        thread_states = proc_states.copy()
        if self._leaderless:  # node_exporter counts no thread of a process without task/
            thread_states.subtract(states[i] for i, has in enumerate(has_task) if not has and states[i])
        self._count_threads(tuple(pids[i] for i in multi if has_task[i]), listed, thread_states)
        if gone:  # their positions were this count's: dropped once it is done
            gone_set = set(gone)
            keep = [i for i in range(len(pids)) if i not in gone_set]
            self._keep([pids[i] for i in keep], array("i", [self._fds[i] for i in keep]), [has_task[i] for i in keep])
        rows = [{"state": bytes([s]).decode("ascii", "replace"), "processes": proc_states[s],
                 "threads": thread_states[s]} for s in sorted(proc_states.keys() | thread_states.keys())]
        return ProcessCounts(proc_states.total(), threads_total,
                             [row for row in rows if row["processes"] or row["threads"]])

    def _list(self) -> None:
        """/proc listed: the kept fds of processes still there stay, the others are closed."""
        kept = dict(zip(self._pids, zip(self._fds, self._has_task)))
        pids = [name for name in os.listdir(self.procfs) if name.isdigit()]
        fds, has_task = array("i"), []
        for pid in pids:
            fd, has = kept.pop(pid, (-1, None))
            fds.append(fd)
            if has is None:
                has = self._live or os.path.isdir(f"{self.procfs}/{pid}/task")
            has_task.append(has)
        self._close(fd for fd, _ in kept.values())
        self._keep(pids, fds, has_task)

    def _keep(self, pids: list[str], fds: array, has_task: list[bool]) -> None:
        self._pids, self._fds, self._has_task = pids, fds, has_task
        self._leaderless = has_task.count(False)
        self._states, self._thread_counts = bytearray(len(pids)), array("q", bytes(8 * len(pids)))

    def _read_again(self, failed: list[int], proc_states: Counter, multithreaded: list[int]) -> list[int]:
        """The processes whose kept file gave no stat line: exited (opened anew: the pid may be another
        process's now; none: gone), none kept (open/read/close), or no stat line at all (ValueError).  Those
        read are added to the counts (their num_threads to ``_thread_counts``); returns the gone ones."""
        gone = []
        for i in failed:
            path = f"{self.procfs}/{self._pids[i]}/stat"
            data = _read_kept(self._fds[i])
            if not data:
                self._close([self._fds[i]])
                self._fds[i], data = self._budget.open_kept(path)
            if not data:
                gone.append(i)
                continue
            parsed = _state_and_threads(data)
            if parsed is None:  # the table stays as it is: every fd opened so far is in it
                raise ValueError(f"{path}: not a stat line")
            self._states[i], self._thread_counts[i] = parsed
            proc_states[parsed[0]] += 1
            if parsed[1] > 1:
                multithreaded.append(i)
        multithreaded.sort()
        return gone

    def _count_threads(self, multithreaded: tuple[str, ...], listed: bool, thread_states: Counter) -> None:
        """Add the states of the other threads of the multithreaded processes."""
        if listed or multithreaded != self._thread_key:
            self._list_threads(multithreaded, listed)
        failed, counts, _, _ = _stat_states(self._thread_fds, bytearray(len(self._threads)), None)
        thread_states.update(counts)
        gone = []
        for i in failed:
            data = _read_kept(self._thread_fds[i])
            if not data:
                self._close([self._thread_fds[i]])
                self._thread_fds[i], data = self._budget.open_kept(f"{self.procfs}/{self._threads[i]}/stat")
            r = data.rfind(b")")
            if 0 < r < len(data) - 2:
                thread_states[data[r + 2]] += 1
            elif not data:
                gone.append(i)
        if gone:
            gone_set = set(gone)
            keep = [i for i in range(len(self._threads)) if i not in gone_set]
            self._threads = [self._threads[i] for i in keep]
            self._thread_fds = array("i", [self._thread_fds[i] for i in keep])

    def _list_threads(self, multithreaded: tuple[str, ...], listed: bool) -> None:
        """The other threads of ``multithreaded``, each's task/ listed again when /proc was."""
        kept = dict(zip(self._threads, self._thread_fds))
        listings, task_ids = self._task_ids, {}
        threads, fds = [], array("i")
        for pid in multithreaded:
            tids = task_listing(self.procfs, pid, listed, listings)
            if tids is None:
                continue
            task_ids[pid] = tids
            for tid in tids:
                if tid != pid:  # the leader is counted with its process
                    path = f"{pid}/task/{tid}"
                    threads.append(path)
                    fds.append(kept.pop(path, -1))
        self._close(kept.values())
        self._threads, self._thread_fds, self._task_ids, self._thread_key = threads, fds, task_ids, multithreaded

    def _close(self, fds: Iterable[int]) -> None:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
                self._budget.kept -= 1

    @property
    def kept_fds(self) -> int:
        """How many stat fds it keeps open."""
        return self._budget.kept

    def close(self) -> None:
        """Close every kept fd; it must not count afterwards."""
        self._close(self._fds)
        self._close(self._thread_fds)
        self._keep([], array("i"), [])
        self._threads, self._thread_fds, self._thread_key, self._task_ids = [], array("i"), (), {}
        if self._loadavg_fd is not None:
            os.close(self._loadavg_fd)
            self._loadavg_fd = None


def task_listing(procfs: str, pid: str, listed: bool, listings: dict[str, list[str]]) -> list[str] | None:
    """The tids in ``pid``'s task/: its last listing (``listings``) while no task came (``listed`` false, as
    /proc's own listing), else listed again; None when the process has gone."""
    tids = None if listed else listings.get(pid)
    if tids is None:
        try:
            tids = os.listdir(f"{procfs}/{pid}/task")
        except OSError:
            return None
    return tids


def own_namespace_proc(procfs: str) -> bool:
    """Whether ``procfs`` is a /proc of this process's own PID namespace (its ``self`` is our PID): then the
    last PID in its loadavg is that namespace's, and a new task there moves it."""
    try:
        return os.readlink(f"{procfs}/self") == str(os.getpid())
    except OSError:
        return False


def open_loadavg(procfs: str) -> int | None:
    """A kept fd of ``procfs``/loadavg for ``tasks_mark``, or None where its marks say nothing (another
    namespace's /proc, a fixture tree) or it cannot be opened."""
    if not own_namespace_proc(procfs):
        return None
    try:
        return os.open(f"{procfs}/loadavg", _O_FLAGS)
    except OSError:
        return None


def tasks_mark(loadavg_fd: int | None) -> bytes | None:
    """The end of /proc/loadavg, "THREADS LAST_PID": while it stands, no task came (a new one takes a new
    PID).  None without it: then only a listing says."""
    if loadavg_fd is None:
        return None
    try:
        return os.pread(loadavg_fd, 128, 0).rpartition(b"/")[2] or None
    except OSError:
        return None


def time_scan(table: ProcessTable, rounds: int) -> float:
    """Median seconds per ``table.scan()`` over ``rounds`` scans (for the benchmark)."""
    times = []
    for _ in range(max(1, rounds)):
        t0 = time.perf_counter()
        table.scan()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
