"""/proc/buddyinfo: node_exporter's ``buddyinfo`` collector (off by default).

One series per node, zone and block order (``size``: free blocks of 2^size pages).
"""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register
from shm_metrics.publisher.collectors.learned import LearnedFile, filled

BLOCKS = gauge("node_buddyinfo_blocks", "Count of free blocks according to size.", "node", "zone", "size")


@register
class Buddyinfo(Collector):
    name = "buddyinfo"
    reports = ("buddyinfo",)
    default_enabled = False
    families = (BLOCKS,)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/buddyinfo")
        self._learned = LearnedFile(self._file, filled(self._fill))  # its numbers re-read in C (learned.py)

    def collect(self, out: Sample) -> None:
        out.extend(self._learned.rows())

    @staticmethod
    def _fill(text: str, out: Sample) -> None:
        orders = None
        for line in text.splitlines():
            # "Node 0, zone   Normal   4381   1093 ..."
            parts = line.split()
            if len(parts) < 4:
                raise ValueError("invalid number of fields when parsing buddyinfo")
            node, zone, counts = parts[1].rstrip(","), parts[3].rstrip(","), parts[4:]
            if orders is None:
                orders = len(counts)
            elif orders != len(counts):
                raise ValueError(f"mismatch in number of buddyinfo buckets: {orders} then {len(counts)}")
            for size, count in enumerate(counts):
                out.add(BLOCKS, (node, zone, str(size)), float(count))
