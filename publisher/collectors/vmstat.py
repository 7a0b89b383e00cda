"""/proc/vmstat: node_exporter's ``vmstat`` collector with its default field filter (untyped, as it has them)."""

from __future__ import annotations

import re

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, Sample, untyped

FIELDS = re.compile(r"^(oom_kill|pgpg|pswp|pg.*fault).*")  # --collector.vmstat.fields' default


class Vmstat(Collector):
    name = "vmstat"
    reports = ("vmstat",)
    described = (("node_vmstat_<field>", "untyped", "", "/proc/vmstat fields matching "
                  "^(oom_kill|pgpg|pswp|pg.*fault).*"),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/vmstat")
        self._by_key: dict[str, FamilyInfo] = {}
        for line in self._file.read().splitlines():
            key = line.partition(" ")[0]
            if FIELDS.match(key):
                self._by_key[key] = untyped(f"node_vmstat_{key}", f"/proc/vmstat information field {key}.")
        self.families = tuple(self._by_key.values())

    def collect(self, out: Sample) -> None:
        by_key = self._by_key
        for line in self._file.read().splitlines():
            key, _, value = line.partition(" ")
            family = by_key.get(key)
            if family is not None:
                out.add(family, (), float(value))
