"""/proc/uptime: the layout's ``uptime_seconds`` (node_exporter has no such family: boot_time is its way)."""

from __future__ import annotations

from shm_metrics.publisher.collectors import CORE, Collector, Context, Sample, register


@register
class Uptime(Collector):
    name = "uptime"
    tier = CORE  # the layout's scalars and arrays: every interval

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/uptime")

    def collect(self, out: Sample) -> None:
        out.scalars["uptime_seconds"] = float(self._file.read().split()[0])
