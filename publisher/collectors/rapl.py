"""/sys/class/powercap: node_exporter's ``rapl`` collector (Intel/AMD RAPL energy counters, in joules).

The zones (``intel-rapl:0`` named ``package-0``, ``intel-rapl:0:0`` named
``core``...) are found when the collector starts and again every
``rescan_seconds``: one family per zone name,
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
        self._zone_label = bool(ctx.option("rapl.enable-zone-label", False))
        self._rows: list | None = None
        self._series: list[tuple[FamilyInfo, tuple[str, ...], ProcFile]] = []
        base = os.path.normpath(os.path.join(ctx.sysfs, "class", "powercap"))
        self._entries = self.devices(base, self._entry)
        self._number(self._entries.current())

    @staticmethod
    def _entry(entry: str, path: str, opener) -> tuple[str, str, ProcFile] | None:
        try:
            with open(os.path.join(path, "name"), "rb") as f:
                raw_name = f.read().decode("utf-8", "replace").strip()
        except OSError:
            return None  # the powercap control type directory itself has no name
        # PermissionError here (energy_uj root-only since Linux 5.10): unavailable, as there.
        return raw_name, path, opener(os.path.join(path, "energy_uj"))

    def _number(self, rows: list) -> None:
        """Each zone's index and family (a zone's index depends on the zones listed before it)."""
        used: dict[str, int] = {}
        self._series = []
        for _, (raw_name, path, energy) in rows:
            index, zone_name = index_and_name(raw_name, used)
            used[zone_name] = index + 1
            if self._zone_label:
                family, labels = ZONE_LABELLED, (str(index), path, zone_name)
            else:
                family, labels = zone_family(zone_name), (str(index), path)
            self._series.append((self.declare(family), labels, energy))  # a zone name no zone had: a new family
        self._rows = rows

    def collect(self, out: Sample) -> None:
        rows = self._entries.current()
        if rows is not self._rows:
            self._number(rows)
        for family, labels, energy in self._series:
            microjoules = go_int(energy.read().strip())
            if microjoules is None or microjoules < 0:
                raise ValueError(f"{energy.path}: not a count")
            out.add(family, labels, microjoules / 1e6)
