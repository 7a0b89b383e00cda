"""/proc/net/stat/*: node_exporter's ``lnstat`` collector (off by default).

Each file (arp_cache, ndisc_cache, nf_conntrack, rt_cache...) has a header
of counter names and one line of hexadecimal values per CPU:
node_lnstat_<name>_total{subsystem=<file>, cpu=<line>}.  The names come
from the headers, so the families are declared when the collector starts.
"""

from __future__ import annotations

import glob
import os

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, counter, register


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
        self._files: list[tuple[str, ProcFile]] = [
            (os.path.basename(path), self.open(path)) for path in sorted(glob.glob(f"{ctx.procfs}/net/stat/*"))]
        self._families: dict[str, FamilyInfo] = {}
        for _, pf in self._files:
            for name in parse_stat_file(pf.read_to_end()):
                if name not in self._families:
                    self._families[name] = counter(f"node_lnstat_{name}_total", "linux network cache stats",
                                                   "subsystem", "cpu")
        self.families = tuple(self._families.values())

    def collect(self, out: Sample) -> None:
        for subsystem, pf in self._files:
            for name, values in parse_stat_file(pf.read_to_end()).items():
                family = self._families.get(name)
                if family is None:  # a counter the kernel did not have at start is not in the catalog
                    continue
                for cpu, value in enumerate(values):
                    out.add(family, (subsystem, str(cpu)), value)
