"""/sys/devices/system/edac/mc: node_exporter's ``edac`` collector (memory controllers' ECC error counters).

The controllers and their chip-select rows are found when the collector
starts; their counter files stay open and are re-read every sample.  The
errors a controller could not attribute to a row (``*_noinfo_count``) are
the row "unknown".  A host without EDAC gives no series and the collector
still succeeds, as node_exporter's does; a counter that cannot be read
fails the sample, as there.
"""

from __future__ import annotations

import glob
import os

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
        self._counters: list[tuple[object, tuple[str, ...], ProcFile]] = []
        base = glob.escape(os.path.join(ctx.sysfs, "devices", "system", "edac", "mc"))
        for controller in sorted(glob.glob(os.path.join(base, "mc[0-9]*"))):
            number = os.path.basename(controller)[2:]
            for family, labels, file in ((CORRECTABLE, (number,), "ce_count"),
                                         (CSROW_CORRECTABLE, (number, "unknown"), "ce_noinfo_count"),
                                         (UNCORRECTABLE, (number,), "ue_count"),
                                         (CSROW_UNCORRECTABLE, (number, "unknown"), "ue_noinfo_count")):
                self._counters.append((family, labels, self.open(os.path.join(controller, file))))
            for row in sorted(glob.glob(os.path.join(glob.escape(controller), "csrow[0-9]*"))):
                labels = (number, os.path.basename(row)[5:])
                self._counters.append((CSROW_CORRECTABLE, labels, self.open(os.path.join(row, "ce_count"))))
                self._counters.append((CSROW_UNCORRECTABLE, labels, self.open(os.path.join(row, "ue_count"))))

    def collect(self, out: Sample) -> None:
        add = out.add
        for family, labels, pf in self._counters:
            value = go_int(pf.read().strip())
            if value is None or value < 0:
                raise ValueError(f"{pf.path}: not a count")
            add(family, labels, value)
