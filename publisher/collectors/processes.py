"""Processes: node_exporter's ``processes`` collector (off by default there and here), and the layout's own.

* ``NodeProcesses`` is node_exporter's collector, switched on with ``--collector.processes``: every
  ``/proc/PID/stat`` (processes by state, threads allocated) and every ``/proc/PID/task/TID/stat``
  (threads by state), and the limits in ``/proc/sys/kernel``.  It runs only in full samples (a
  scrape), through a ``ProcessCounter`` (kept stat files, /proc listed only when a task came, every
  file read in one C call), counting as node_exporter counts.
* Without it, the layout's own collectors still count: every interval the numeric entries of /proc are
  counted (``Procs``, shown as node_processes_pids, an extra node_exporter's default set does not have),
  and with ``--top`` the publisher's per-process scan (publisher/processes.py) fills the top tables and
  the counts by state while a local viewer asks for them (``shm-read top``).  The scan declares no
  family: a scrape never pays for it (it cost a full sample about 2 ms of its 3, issue 16), and
  node_processes_state and _threads_state come from ``NodeProcesses``, as in node_exporter.
"""

from __future__ import annotations

import os
from array import array
from typing import TYPE_CHECKING

from shm_metrics.publisher.collectors import (
    CORE,
    PROCESS_SCAN,
    Collector,
    Context,
    ProcFile,
    Sample,
    gauge,
    numbers,
    read_file,
    register,
)
from shm_metrics.publisher.processes import ProcessCounter, ProcessTable, own_namespace_proc

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

PIDS = gauge("node_processes_pids", "Number of PIDs")
STATE = gauge("node_processes_state", "Number of processes in each state.", "state")
THREADS_STATE = gauge("node_processes_threads_state", "Number of threads in each state.", "thread_state")
THREADS = gauge("node_processes_threads", "Allocated threads in system")
MAX_THREADS = gauge("node_processes_max_threads", "Limit of threads in the system")
MAX_PROCESSES = gauge("node_processes_max_processes", "Number of max PIDs limit")


@register
class Processes(Collector):
    """With --top: the per-process scan for the layout's top tables and state counts (no family)."""

    name = "processes"
    tier = PROCESS_SCAN

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        if not ctx.top_n:
            raise LookupError("no --top: the per-process scan is off")
        self._table = ProcessTable(top_n=ctx.top_n, procfs=ctx.procfs)

    def collect(self, out: Sample) -> None:
        scan = self._table.scan()
        out.top_cpu, out.top_rss, out.process_states = scan.by_cpu, scan.by_rss, scan.states

    def release(self) -> None:
        self._table.release()

    def close(self) -> None:
        self._table.close()


@register
class Procs(Collector):
    """The numeric entries of /proc are the processes (thread groups), node_processes_pids' meaning,
    ~200x cheaper than ``ps axh``: every interval, while the per-process scan of ``--top`` runs only
    when something reads its tables."""

    name = "procs"
    tier = CORE  # the layout's scalars and arrays: every interval
    families = (PIDS,)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._families = "processes" not in ctx.enabled
        if not self._families:
            self.families = ()
        self._loadavg = self._tasks_file()
        self._numbers = numbers.Numbers.of(self._loadavg) if self._loadavg and numbers.AVAILABLE else None
        self._shape: numbers.Shape | None = None  # of the latest read of /proc/loadavg, for a compiled program
        self._tasks: tuple | bytes | None = None  # the task mark of the latest listing
        self._count = array("d", [0.0])  # of that listing (a compiled program's directory source counts into it)

    def _tasks_file(self) -> ProcFile | None:
        """/proc/loadavg when ``procfs`` shows this process's own PID namespace (then its last PID is
        that namespace's), else None: every sample lists the directory."""
        if not own_namespace_proc(self.ctx.procfs):
            return None
        try:
            return self.open(f"{self.ctx.procfs}/loadavg", whole=True)
        except OSError:
            return None

    def collect(self, out: Sample) -> None:
        # Listing /proc costs the kernel a lookup per process, and is most of a quiet host's sample at
        # 1 Hz.  /proc/loadavg ends with the number of tasks and the last PID given out: a new task
        # changes the PID, an exit without one the number; when neither moved, no process came or
        # went, and the count stands.
        mark = self._mark()
        if mark is None or mark != self._tasks:
            # map() and sum() count in C: at 1 Hz the caches are cold and every bytecode per entry costs.
            self._count[0] = sum(map(str.isdigit, os.listdir(self.ctx.procfs)))
            self._tasks = mark
        out.scalars["procs_total"] = n = int(self._count[0])
        if self._families:
            out.add(PIDS, (), n)

    def _mark(self) -> tuple | bytes | None:
        """The tasks' count and last PID: (all tasks, last PID) through the C reader, else the bytes after
        the slash; None without /proc/loadavg."""
        if self._numbers is not None:
            count, signature, _ = self._numbers.read()
            self._shape = numbers.Shape(signature, count)
            return tuple(self._numbers.values[4:6]) if count == 6 else None
        return self._loadavg.read_bytes().rpartition(b"/")[2] if self._loadavg is not None else None

    def compile(self, built: Builder) -> bool:
        """/proc counted again in C when the marks moved (publisher/compiled.py)."""
        directory = built.directory(self.ctx.procfs, self._count)
        if self._loadavg is None:  # another PID namespace's /proc: counted every sample
            count = built.pids(None, directory)
        elif self._shape is None or self._shape.count != 6 or not isinstance(self._tasks, tuple):
            return False
        else:
            marks = built.take(built.file(self._numbers, self._shape), (4, 5), (1.0, 1.0))
            count = built.pids(marks, directory, lambda: self._tasks,
                               lambda marks: setattr(self, "_tasks", tuple(marks)))
        built.scalar("procs_total", count)
        if self._families:
            built.series((PIDS,), ((),), (count,))
        return True


def _limit(path: str) -> int:
    return int(read_file(path).strip())


@register
class NodeProcesses(Collector):
    """node_exporter's ``processes`` collector, as it counts, through a ``ProcessCounter``.

    A process is counted when its stat can be read (one that vanished meanwhile is not); its
    threads are its stat's num_threads; threads by state come from its ``task/`` directory, the
    leader counted in the process's state (a process without ``task/`` adds none).  A stat file
    that is not a stat line fails the sample, as it fails node_exporter's scrape.

    node_exporter opens every process's stat, lists every ``task/`` and opens every thread's stat
    at each scrape.  The counter keeps the stat files open between samples, lists /proc only when a
    task came, and ``task/`` only of multithreaded processes: a single-threaded process's task/
    holds its leader alone; and it reads every kept file, and counts, in one C call
    (publisher/processes.py).  On this 2-vCPU host with ~70 processes, a 1 Hz full sample with this
    collector on cost 4,130 us of CPU with node_exporter's way and 2,666 with the kept files read in
    Python (bench Q4's rows, issue 16); bench/README's stop 27 gives the C call's figures.
    """

    name = "node_processes"
    reports = ("processes",)
    default_enabled = False
    families = (THREADS, MAX_THREADS, STATE, THREADS_STATE, PIDS, MAX_PROCESSES)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._threads_max = f"{ctx.procfs}/sys/kernel/threads-max"
        self._pid_max = f"{ctx.procfs}/sys/kernel/pid_max"
        os.listdir(ctx.procfs)
        self._counter = ProcessCounter(ctx.procfs)

    def collect(self, out: Sample) -> None:
        scan = self._counter.count()
        add = out.add
        add(THREADS, (), scan.threads_total)
        add(MAX_THREADS, (), _limit(self._threads_max))
        for row in scan.states:
            if row["processes"]:
                add(STATE, (row["state"],), row["processes"])
        for row in scan.states:
            if row["threads"]:
                add(THREADS_STATE, (row["state"],), row["threads"])
        add(PIDS, (), scan.procs_total)
        add(MAX_PROCESSES, (), _limit(self._pid_max))
        out.scalars.setdefault("procs_total", scan.procs_total)

    def close(self) -> None:
        self._counter.close()
        super().close()
