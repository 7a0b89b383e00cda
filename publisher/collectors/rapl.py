"""/sys/class/powercap: node_exporter's ``rapl`` collector (Intel/AMD RAPL energy counters, in joules).

The zones (``intel-rapl:0`` named ``package-0``, ``intel-rapl:0:0`` named
``core``...) are found when the collector starts: one family per zone name,
node_rapl_<name>_joules_total{index, path}, or with ``rapl.enable-zone-label``
one family node_rapl_joules_total{index, path, rapl_zone}.  ``energy_uj``
stays open and is re-read every sample.  Without powercap, or when
``energy_uj`` is root-only and this user is not, the collector is
unavailable, as there.
"""

from __future__ import annotations

import os
import re

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, counter, register
from shm_metrics.publisher.collectors.sysfs_util import go_int

ZONE_LABELLED = counter("node_rapl_joules_total", "Current RAPL value in joules", "index", "path", "rapl_zone")
_NOT_IN_NAME = re.compile(r"_*[^0-9A-Za-z_]+_*")


def zone_family(zone_name: str) -> FamilyInfo:
    return counter(f"node_rapl_{_NOT_IN_NAME.sub('_', zone_name)}_joules_total",
                   f"Current RAPL {zone_name} value in joules", "index", "path")


def index_and_name(name: str, used: dict[str, int]) -> tuple[int, str]:
    """``package-1`` -> (1, "package"); otherwise the name and how many zones had it before."""
    parts = name.split("-")
    if len(parts) == 2 and re.fullmatch(r"[+-]?[0-9]+", parts[1]):
        return int(parts[1]), parts[0]
    return used.get(name, 0), name


@register
class Rapl(Collector):
    name = "rapl"
    reports = ("rapl",)
    described = (("node_rapl_<zone>_joules_total", "counter", "index, path",
                  "one family per RAPL zone name (package, core, uncore, dram, psys); with rapl.enable-zone-label "
                  "one family node_rapl_joules_total{index, path, rapl_zone}"),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        base = os.path.normpath(os.path.join(ctx.sysfs, "class", "powercap"))
        zone_label = bool(ctx.option("rapl.enable-zone-label", False))
        used: dict[str, int] = {}
        self._zones: list[tuple[FamilyInfo, tuple[str, ...], ProcFile]] = []
        families: dict[str, FamilyInfo] = {}
        for entry in sorted(os.listdir(base)):
            path = os.path.join(base, entry)
            try:
                with open(os.path.join(path, "name"), "rb") as f:
                    raw_name = f.read().decode("utf-8", "replace").strip()
            except OSError:
                continue  # the powercap control type directory itself has no name
            index, zone_name = index_and_name(raw_name, used)
            used[zone_name] = index + 1
            # PermissionError here (energy_uj root-only since Linux 5.10): unavailable, as there.
            energy = self.open(os.path.join(path, "energy_uj"))
            if zone_label:
                family, labels = ZONE_LABELLED, (str(index), path, zone_name)
            else:
                family, labels = zone_family(zone_name), (str(index), path)
            family = families.setdefault(family.name, family)
            self._zones.append((family, labels, energy))
        self.families = tuple(families.values())

    def collect(self, out: Sample) -> None:
        for family, labels, energy in self._zones:
            microjoules = go_int(energy.read().strip())
            if microjoules is None or microjoules < 0:
                raise ValueError(f"{energy.path}: not a count")
            out.add(family, labels, microjoules / 1e6)
