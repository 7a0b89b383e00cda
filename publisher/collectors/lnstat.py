"""/proc/net/stat/*: node_exporter's ``lnstat`` collector (off by default).

Each file (arp_cache, ndisc_cache, nf_conntrack, rt_cache...) has a header
of counter names and one line of hexadecimal values per CPU:
node_lnstat_<name>_total{subsystem=<file>, cpu=<line>}.  The names come
from the headers, so the families are declared when a file is first read
(at start, or when it appears: the directory is listed again every
``rescan_seconds``).
"""

from __future__ import annotations

from functools import partial

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, register
from shm_metrics.publisher.collectors.learned import LearnedFile


def parse_stat_file(text: str) -> dict[str, list[int]]:
    """Counter name -> one value per CPU line."""
    lines = text.splitlines()
    headers = lines[0].split() if lines else []
    stats: dict[str, list[int]] = {}
    for line in lines[1:]:
        for name, value in zip(headers, line.split()):
            stats.setdefault(name, []).append(int(value, 16))
    return stats


@register
class Lnstat(Collector):
    name = "lnstat"
    reports = ("lnstat",)
    default_enabled = False
    described = (("node_lnstat_<name>_total", "counter", "subsystem, cpu",
                  "every column of every /proc/net/stat file, per CPU line; HELP \"linux network cache stats\""),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._families: dict[str, FamilyInfo] = {}
        # Files appear with their module (nf_conntrack when conntrack is loaded): listed again every
        # rescan_seconds, their counters declared when first seen.
        self._files = self.devices(f"{ctx.procfs}/net/stat", self._open, missing_ok=True)
        self._files.current()

    def _open(self, subsystem: str, path: str, opener) -> LearnedFile:
        """A file kept open, its counters declared from its header as read now, its rows learned as a program of
        its hexadecimal numbers (learned.py).  The parse declares nothing: a learned copy of the file may write
        a marker where a name of hexadecimal letters stands, and that is no counter of the kernel's."""
        pf = opener(path)
        self._declare(parse_stat_file(pf.read_to_end()))
        return LearnedFile(pf, partial(self._rows, subsystem), hex=True)

    def _declare(self, stats: dict[str, list[int]]) -> None:
        new = [name for name in stats if name not in self._families]
        for name in new:
            self._families[name] = self.declare(counter(f"node_lnstat_{name}_total", "linux network cache stats",
                                                        "subsystem", "cpu"))

    def _rows(self, subsystem: str, text: str) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        families = self._families
        return [(families[name], (subsystem, str(cpu)), value) for name, values in parse_stat_file(text).items()
                if name in families for cpu, value in enumerate(values)]

    def collect(self, out: Sample) -> None:
        for _, rows in self._files.each(LearnedFile.rows):  # unloaded: skipped
            out.extend(rows)
