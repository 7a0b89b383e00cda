"""Connection tracking: node_exporter's ``conntrack`` collector (absent without the nf_conntrack module).

Counts from /proc/sys/net/netfilter; the statistics are the per-CPU hex
columns of /proc/net/stat/nf_conntrack, summed (gauges, as node_exporter has them).
"""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register

ENTRIES = gauge("node_nf_conntrack_entries", "Number of currently allocated flow entries for connection tracking.")
LIMIT = gauge("node_nf_conntrack_entries_limit", "Maximum size of connection tracking table.")
_STATS = (
    ("found", "Number of searched entries which were successful."),
    ("invalid", "Number of packets seen which can not be tracked."),
    ("ignore", "Number of packets seen which are already connected to a conntrack entry."),
    ("insert", "Number of entries inserted into the list."),
    ("insert_failed", "Number of entries for which list insertion was attempted but failed."),
    ("drop", "Number of packets dropped due to conntrack failure."),
    ("early_drop", "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached."),
    ("search_restart", "Number of conntrack table lookups which had to be restarted due to hashtable resizes."),
)
STATS = tuple((column, gauge(f"node_nf_conntrack_stat_{column}", text)) for column, text in _STATS)


@register
class Conntrack(Collector):
    name = "conntrack"
    reports = ("conntrack",)
    families = (ENTRIES, LIMIT, *(fam for _, fam in STATS))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._count = self.open(f"{ctx.procfs}/sys/net/netfilter/nf_conntrack_count")
        self._max = self.open(f"{ctx.procfs}/sys/net/netfilter/nf_conntrack_max")
        self._stat = self.open(f"{ctx.procfs}/net/stat/nf_conntrack")

    def collect(self, out: Sample) -> None:
        out.add(ENTRIES, (), int(self._count.read_bytes()))
        out.add(LIMIT, (), int(self._max.read_bytes()))
        lines = self._stat.read().splitlines()
        header = lines[0].split()
        totals = dict.fromkeys(header, 0)
        for line in lines[1:]:
            for column, value in zip(header, line.split()):
                totals[column] += int(value, 16)
        for column, family in STATS:
            if column in totals:
                out.add(family, (), totals[column])
