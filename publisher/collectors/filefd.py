"""/proc/sys/fs/file-nr: node_exporter's ``filefd`` collector."""

from __future__ import annotations

from shm_metrics.publisher.collectors import CORE, Collector, Context, Sample, gauge, register

ALLOCATED = gauge("node_filefd_allocated", "File descriptor statistics: allocated.")
MAXIMUM = gauge("node_filefd_maximum", "File descriptor statistics: maximum.")


@register
class Filefd(Collector):
    name = "filefd"
    tier = CORE  # the layout's scalars and arrays: every interval
    reports = ("filefd",)
    families = (ALLOCATED, MAXIMUM)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/sys/fs/file-nr")

    def collect(self, out: Sample) -> None:
        allocated, _, maximum = self._file.read().split()[:3]
        out.scalars.update(filefd_allocated=int(allocated), filefd_maximum=int(maximum))
        out.add(ALLOCATED, (), int(allocated))
        out.add(MAXIMUM, (), int(maximum))
