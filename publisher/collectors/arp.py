"""/proc/net/arp: node_exporter's ``arp`` collector (entries per device)."""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge

ENTRIES = gauge("node_arp_entries", "ARP entries by device", "device")


class Arp(Collector):
    name = "arp"
    reports = ("arp",)
    families = (ENTRIES,)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/net/arp")

    def collect(self, out: Sample) -> None:
        counts: dict[str, int] = {}
        for line in self._file.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 6:
                counts[fields[5]] = counts.get(fields[5], 0) + 1
        for device, n in counts.items():
            out.add(ENTRIES, (device,), n)
