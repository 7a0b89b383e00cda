"""/proc/net/softnet_stat: node_exporter's ``softnet`` collector (one hex line per CPU)."""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, register
from shm_metrics.publisher.collectors.learned import LearnedFile, filled

PROCESSED = counter("node_softnet_processed_total", "Number of processed packets", "cpu")
DROPPED = counter("node_softnet_dropped_total", "Number of dropped packets", "cpu")
SQUEEZED = counter("node_softnet_times_squeezed_total", "Number of times processing packets ran out of quota", "cpu")


@register
class Softnet(Collector):
    name = "softnet"
    reports = ("softnet",)
    families = (PROCESSED, DROPPED, SQUEEZED)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/net/softnet_stat")
        self._learned = LearnedFile(self._file, filled(self._fill), hex=True)  # (collectors/learned.py)

    def collect(self, out: Sample) -> None:
        out.extend(self._learned.rows())

    def _fill(self, text: str, out: Sample) -> None:
        for cpu, line in enumerate(text.splitlines()):
            v = line.split()
            labels = (str(cpu),)
            out.add(PROCESSED, labels, int(v[0], 16))
            out.add(DROPPED, labels, int(v[1], 16))
            out.add(SQUEEZED, labels, int(v[2], 16))
