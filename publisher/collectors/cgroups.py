"""/proc/cgroups: node_exporter's ``cgroups`` collector (off by default).

Per controller: the number of cgroups using it and whether it is enabled
(node_exporter gives both families the same HELP text; kept as is).
"""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register

CGROUPS = gauge("node_cgroups_cgroups", "Current cgroup number of the subsystem.", "subsys_name")
ENABLED = gauge("node_cgroups_enabled", "Current cgroup number of the subsystem.", "subsys_name")


@register
class Cgroups(Collector):
    name = "cgroups"
    reports = ("cgroups",)
    default_enabled = False
    families = (CGROUPS, ENABLED)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/cgroups")

    def collect(self, out: Sample) -> None:
        for line in self._file.read().splitlines():
            if line.startswith("#"):
                continue
            # subsys_name  hierarchy  num_cgroups  enabled
            fields = line.split()
            if len(fields) < 4:
                raise ValueError(f"at least 4 fields required in cgroups line {line!r}")
            int(fields[1])
            counts, enabled = int(fields[2]), int(fields[3])
            out.add(CGROUPS, (fields[0],), counts)
            out.add(ENABLED, (fields[0],), enabled)
