"""/proc/net/arp: node_exporter's ``arp`` collector (entries per device)."""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register

ENTRIES = gauge("node_arp_entries", "ARP entries by device", "device")


@register
class Arp(Collector):
    name = "arp"
    reports = ("arp",)
    families = (ENTRIES,)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/net/arp")
        self._filter = ctx.device_filter("arp")

    def collect(self, out: Sample) -> None:
        counts: dict[str, int] = {}
        for line in self._file.read().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[0] != "IP":  # "IP address HW type ...": the header
                device = fields[-1]
                counts[device] = counts.get(device, 0) + 1
        ignored = self._filter.ignored
        for device, n in counts.items():
            if not ignored(device):
                out.add(ENTRIES, (device,), n)
