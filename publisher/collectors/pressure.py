"""/proc/pressure/{cpu,io,memory}: node_exporter's ``pressure`` collector (PSI, microseconds to seconds).

Absent on kernels without PSI (< 4.20, or CONFIG_PSI off): the collector is
left out and its success is 0, as node_exporter reports.
"""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, register

CPU = counter("node_pressure_cpu_waiting_seconds_total",
              "Total time in seconds that processes have waited for CPU time")
IO = counter("node_pressure_io_waiting_seconds_total",
             "Total time in seconds that processes have waited due to IO congestion")
IO_FULL = counter("node_pressure_io_stalled_seconds_total",
                  "Total time in seconds no process could make progress due to IO congestion")
MEMORY = counter("node_pressure_memory_waiting_seconds_total",
                 "Total time in seconds that processes have waited for memory")
MEMORY_FULL = counter("node_pressure_memory_stalled_seconds_total",
                      "Total time in seconds no process could make progress due to memory congestion")
# resource -> (family of the "some" line, family of the "full" line or None)
_RESOURCES = {"cpu": (CPU, None), "io": (IO, IO_FULL), "memory": (MEMORY, MEMORY_FULL)}


def _totals(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            key, _, value = item.partition("=")
            if key == "total":
                out[kind] = int(value) / 1000.0 / 1000.0  # node_exporter divides twice: the same rounding
    return out


@register
class Pressure(Collector):
    name = "pressure"
    reports = ("pressure",)
    families = (CPU, IO, IO_FULL, MEMORY, MEMORY_FULL)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._files = [(self.open(f"{ctx.procfs}/pressure/{res}", whole=True), fams)
                       for res, fams in _RESOURCES.items()]

    def collect(self, out: Sample) -> None:
        for pf, (some, full) in self._files:
            totals = _totals(pf.read())
            out.add(some, (), totals["some"])
            if full is not None:
                out.add(full, (), totals["full"])
