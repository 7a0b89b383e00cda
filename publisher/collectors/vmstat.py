"""/proc/vmstat: node_exporter's ``vmstat`` collector with its default field filter (untyped, as it has them)."""

from __future__ import annotations

import re

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, Sample, register, untyped
from shm_metrics.publisher.collectors.learned import LearnedFile, filled

FIELDS = re.compile(r"^(oom_kill|pgpg|pswp|pg.*fault).*")  # --collector.vmstat.fields' default


@register
class Vmstat(Collector):
    name = "vmstat"
    reports = ("vmstat",)
    described = (("node_vmstat_<field>", "untyped", "", "/proc/vmstat fields matching "
                  "^(oom_kill|pgpg|pswp|pg.*fault).*"),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/vmstat")
        # (line number, "key ", family): the kernel prints its ~170 fields in a fixed order, so only
        # the wanted lines are looked at (checked by their key; any surprise re-finds them).
        self._wanted: list[tuple[int, str, FamilyInfo]] = []
        for n, line in enumerate(self._file.read().splitlines()):
            key = line.partition(" ")[0]
            if FIELDS.match(key):
                self._wanted.append((n, key + " ", untyped(f"node_vmstat_{key}",
                                                            f"/proc/vmstat information field {key}.")))
        self.families = tuple(fam for _, _, fam in self._wanted)
        self._learned = LearnedFile(self._file, filled(self._fill))

    def collect(self, out: Sample) -> None:
        out.extend(self._learned.rows())

    def _fill(self, text: str, out: Sample) -> None:
        lines = text.splitlines()
        try:
            found = [(fam, lines[n]) for n, prefix, fam in self._wanted if lines[n].startswith(prefix)]
        except IndexError:
            found = []
        if len(found) != len(self._wanted):  # lines moved (never seen): look each key up
            by_prefix = {prefix: fam for _, prefix, fam in self._wanted}
            found = [(by_prefix[line[:line.index(" ") + 1]], line) for line in lines
                     if " " in line and line[:line.index(" ") + 1] in by_prefix]
        for fam, line in found:
            out.add(fam, (), float(line.partition(" ")[2]))
