"""/proc/loadavg: node_exporter's ``loadavg`` collector, and the count of scheduling entities."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shm_metrics.publisher.collectors import CORE, Collector, Context, Sample, gauge, numbers, register

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

LOAD1 = gauge("node_load1", "1m load average.")
LOAD5 = gauge("node_load5", "5m load average.")
LOAD15 = gauge("node_load15", "15m load average.")
# node_exporter's processes collector (off by default) counts threads from every /proc/PID/stat; the
# kernel's own count (after the slash) means the same and costs one read.  Shown while that collector
# does not run; when it runs, the family is its own (and counted its way).
THREADS = gauge("node_processes_threads", "Allocated threads in system")


@register
class Loadavg(Collector):
    name = "loadavg"
    tier = CORE  # the layout's scalars and arrays: every interval
    reports = ("loadavg",)
    families = (LOAD1, LOAD5, LOAD15, THREADS)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/loadavg", whole=True)
        self._threads = "processes" not in ctx.enabled
        if not self._threads:
            self.families = (LOAD1, LOAD5, LOAD15)
        self._numbers = numbers.Numbers.of(self._file) if numbers.AVAILABLE else None
        self._shape: numbers.Shape | None = None  # of the latest read, for a compiled program

    def collect(self, out: Sample) -> None:
        text, _, self._shape = numbers.read_text(self._file, self._numbers)
        l1, l5, l15, entities, _ = text.split()
        threads = int(entities.partition("/")[2])
        out.scalars.update(load1=float(l1), load5=float(l5), load15=float(l15), threads_total=threads)
        out.add(LOAD1, (), float(l1))
        out.add(LOAD5, (), float(l5))
        out.add(LOAD15, (), float(l15))
        if self._threads:
            out.add(THREADS, (), threads)

    def compile(self, built: Builder) -> bool:
        """The three averages and the task count, the numbers 0-2 and 4 of "0.52 0.58 0.59 3/741 8061"
        (publisher/compiled.py)."""
        if self._shape is None or self._shape.count != 6:
            return False
        regs = built.take(built.file(self._numbers, self._shape), (0, 1, 2, 4), (1.0,) * 4)
        for name, reg in zip(("load1", "load5", "load15", "threads_total"), regs):
            built.scalar(name, reg)
        built.series(self.families, ((),) * len(self.families), regs[:len(self.families)])
        return True
