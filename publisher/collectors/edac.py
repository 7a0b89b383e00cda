"""/sys/devices/system/edac/mc: node_exporter's ``edac`` collector (memory controllers' ECC error counters).

The controllers and their chip-select rows are found when the collector
starts and again every ``rescan_seconds`` (an EDAC driver loaded later);
their counter files stay open and are re-read every sample.  The errors a
controller could not attribute to a row (``*_noinfo_count``) are the row
"unknown".  A host without EDAC gives no series and the collector still
succeeds, as node_exporter's does; a counter that cannot be read fails the
sample, as there, unless its controller went away (it is dropped).
"""

from __future__ import annotations

import glob
import os

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, counter, register
from shm_metrics.publisher.collectors.sysfs_util import go_int

CORRECTABLE = counter("node_edac_correctable_errors_total", "Total correctable memory errors.", "controller")
UNCORRECTABLE = counter("node_edac_uncorrectable_errors_total", "Total uncorrectable memory errors.", "controller")
CSROW_CORRECTABLE = counter("node_edac_csrow_correctable_errors_total",
                            "Total correctable memory errors for this csrow.", "controller", "csrow")
CSROW_UNCORRECTABLE = counter("node_edac_csrow_uncorrectable_errors_total",
                              "Total uncorrectable memory errors for this csrow.", "controller", "csrow")


@register
class Edac(Collector):
    name = "edac"
    reports = ("edac",)
    families = (CORRECTABLE, UNCORRECTABLE, CSROW_CORRECTABLE, CSROW_UNCORRECTABLE)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._controllers = self.devices(os.path.join(ctx.sysfs, "devices", "system", "edac", "mc"),
                                         self._controller, r"mc[0-9]+", missing_ok=True)

    @staticmethod
    def _controller(entry: str, path: str, opener) -> list[tuple[object, tuple[str, ...], ProcFile]]:
        number = entry[2:]
        counters = []
        for family, labels, file in ((CORRECTABLE, (number,), "ce_count"),
                                     (CSROW_CORRECTABLE, (number, "unknown"), "ce_noinfo_count"),
                                     (UNCORRECTABLE, (number,), "ue_count"),
                                     (CSROW_UNCORRECTABLE, (number, "unknown"), "ue_noinfo_count")):
            counters.append((family, labels, opener(os.path.join(path, file))))
        for row in sorted(glob.glob(os.path.join(glob.escape(path), "csrow[0-9]*"))):
            labels = (number, os.path.basename(row)[5:])
            counters.append((CSROW_CORRECTABLE, labels, opener(os.path.join(row, "ce_count"))))
            counters.append((CSROW_UNCORRECTABLE, labels, opener(os.path.join(row, "ue_count"))))
        return counters

    def collect(self, out: Sample) -> None:
        for _, rows in self._controllers.each(_read_counters):  # a controller that went away: skipped
            out.series += rows


def _read_counters(counters: list[tuple[FamilyInfo, tuple[str, ...], ProcFile]]) -> list[tuple]:
    """One controller's series, all or none (OSError when one of its files cannot be read)."""
    rows = []
    for family, labels, pf in counters:
        value = go_int(pf.read().strip())
        if value is None or value < 0:
            raise ValueError(f"{pf.path}: not a count")
        rows.append((family, labels, value))
    return rows
