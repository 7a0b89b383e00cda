"""Connection tracking: node_exporter's ``conntrack`` collector (absent without the nf_conntrack module).

Counts from /proc/sys/net/netfilter; the statistics are the per-CPU hex
columns of /proc/net/stat/nf_conntrack, summed (gauges, as node_exporter has them).

The statistics file has a line per possible CPU (17 columns each): at 1 Hz parsing it in Python cost
more than the kernel's reads.  So the numbers come from ``_scan.numbers`` (hexadecimal) and each column is
summed over a strided slice, while the file keeps the structure (words, numbers per line) of a read the
Python parse checked: that parse gave the same sums from that very read's numbers.
"""

from __future__ import annotations

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, numbers, register

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
_EXACT_SUM = float(1 << 53)  # a sum of doubles each below this / lines is exact


@register
class Conntrack(Collector):
    name = "conntrack"
    reports = ("conntrack",)
    families = (ENTRIES, LIMIT, *(fam for _, fam in STATS))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._count = self.open(f"{ctx.procfs}/sys/net/netfilter/nf_conntrack_count", whole=True)
        self._max = self.open(f"{ctx.procfs}/sys/net/netfilter/nf_conntrack_max", whole=True)
        self._stat = self.open(f"{ctx.procfs}/net/stat/nf_conntrack")
        self._numbers = numbers.Numbers.of(self._stat, hex=True) if numbers.AVAILABLE else None
        # Checked by the Python parse: (shape of the read, columns per line, (family, column) of each sum).
        self._summed: tuple[numbers.Shape, int, list[tuple[FamilyInfo, int]]] | None = None

    def collect(self, out: Sample) -> None:
        out.add(ENTRIES, (), int(self._count.read_bytes()))
        out.add(LIMIT, (), int(self._max.read_bytes()))
        sums = self._fast_sums()
        if sums is None:
            sums = self._parse()
        for family, value in sums:
            out.add(family, (), value)

    def _fast_sums(self) -> list[tuple[FamilyInfo, float]] | None:
        """The column sums from the file's numbers, or None when its structure moved (or no parse checked it)."""
        if self._summed is None:
            return None
        shape, width, columns = self._summed
        count, signature, _ = self._numbers.read()
        if (signature, count) != shape:
            return None
        values = self._numbers.values
        if max(values[:shape.count], default=0.0) >= _EXACT_SUM / (shape.count // width):
            return None  # a double would round the sum: the parse sums exactly
        return [(family, sum(values[column:shape.count:width])) for family, column in columns]

    def _parse(self) -> list[tuple[FamilyInfo, int]]:
        """The sums of the file's text; a read whose numbers give the same sums teaches the fast path."""
        text, _, shape = numbers.read_text(self._stat, self._numbers)
        lines = text.splitlines()
        header = lines[0].split()
        totals = dict.fromkeys(header, 0)
        for line in lines[1:]:
            for column, value in zip(header, line.split()):
                totals[column] += int(value, 16)
        sums = [(family, totals[column]) for column, family in STATS if column in totals]
        self._summed = None
        width = len(header)
        if shape is not None and len(lines) > 1 and shape.count == width * (len(lines) - 1):
            columns = [(family, header.index(column)) for column, family in STATS if column in totals]
            values = self._numbers.values
            if all(sum(values[c:shape.count:width]) == total for (_, c), (_, total) in zip(columns, sums)):
                self._summed = (shape, width, columns)
        return sums
