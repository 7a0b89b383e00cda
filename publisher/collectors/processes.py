"""Processes: node_processes_* (node_exporter's ``processes`` collector, off by default there).

With ``--top`` the publisher's per-process scan (publisher/processes.py) fills
the top tables, the counts by state and the process count from one listing;
without it only the numeric entries of /proc are counted.
"""

from __future__ import annotations

import os

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge

PIDS = gauge("node_processes_pids", "Number of PIDs")
STATE = gauge("node_processes_state", "Number of processes in each state.", "state")
THREADS_STATE = gauge("node_processes_threads_state", "Number of threads in each state.", "thread_state")


class Processes(Collector):
    name = "processes"
    reports = ("processes",)
    families = (PIDS, STATE, THREADS_STATE)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        if not ctx.top_n:
            raise LookupError("no --top: the per-process scan is off")
        from shm_metrics.publisher.processes import ProcessTable

        self._table = ProcessTable(top_n=ctx.top_n, procfs=ctx.procfs)

    def collect(self, out: Sample) -> None:
        scan = self._table.scan()
        out.scalars["procs_total"] = scan.procs_total
        out.top_cpu, out.top_rss, out.process_states = scan.by_cpu, scan.by_rss, scan.states
        out.add(PIDS, (), scan.procs_total)
        for row in scan.states:  # node_exporter shows only the states it saw
            if row["processes"]:
                out.add(STATE, (row["state"],), row["processes"])
            if row["threads"]:
                out.add(THREADS_STATE, (row["state"],), row["threads"])

    def close(self) -> None:
        self._table.close()


class Procs(Collector):
    """Without --top: the numeric entries of /proc are the processes (thread
    groups), node_processes_pids' meaning, ~200x cheaper than ``ps axh``."""

    name = "procs"
    reports = ("processes",)
    families = (PIDS,)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        if ctx.top_n:
            raise LookupError("--top counts them from its own scan")

    def collect(self, out: Sample) -> None:
        with os.scandir(self.ctx.procfs) as it:
            out.scalars["procs_total"] = n = sum(1 for e in it if e.name.isdigit())
        out.add(PIDS, (), n)
