"""/sys/devices/system/cpu/cpu*/cpufreq: node_exporter's ``cpufreq`` collector (current, min and max frequency).

Each CPU's frequency attributes are opened when the collector starts and
re-read every sample (kHz in the files, Hz in the families).  An attribute
that does not exist or that this user may not read (``cpuinfo_cur_freq`` is
root-only) is left out, as there; a host without cpufreq gives no series
and the collector still succeeds, as node_exporter's does.
"""

from __future__ import annotations

import glob
import os

from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, gauge, register
from shm_metrics.publisher.collectors.sysfs_util import SYSFS_READ_SIZE, go_int

# (family, attribute in kHz)
FREQUENCIES = (
    (gauge("node_cpu_frequency_hertz", "Current cpu thread frequency in hertz.", "cpu"), "cpuinfo_cur_freq"),
    (gauge("node_cpu_frequency_min_hertz", "Minimum cpu thread frequency in hertz.", "cpu"), "cpuinfo_min_freq"),
    (gauge("node_cpu_frequency_max_hertz", "Maximum cpu thread frequency in hertz.", "cpu"), "cpuinfo_max_freq"),
    (gauge("node_cpu_scaling_frequency_hertz", "Current scaled CPU thread frequency in hertz.", "cpu"),
     "scaling_cur_freq"),
    (gauge("node_cpu_scaling_frequency_min_hertz", "Minimum scaled CPU thread frequency in hertz.", "cpu"),
     "scaling_min_freq"),
    (gauge("node_cpu_scaling_frequency_max_hertz", "Maximum scaled CPU thread frequency in hertz.", "cpu"),
     "scaling_max_freq"),
)


@register
class Cpufreq(Collector):
    name = "cpufreq"
    reports = ("cpufreq",)
    families = tuple(family for family, _ in FREQUENCIES)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._files: list[tuple[object, tuple[str], ProcFile]] = []
        pattern = os.path.join(glob.escape(os.path.join(ctx.sysfs, "devices", "system", "cpu")), "cpu[0-9]*")
        for path in sorted(glob.glob(pattern)):
            labels = (os.path.basename(path).removeprefix("cpu"),)
            for family, attribute in FREQUENCIES:
                try:
                    self._files.append((family, labels, self.open(os.path.join(path, "cpufreq", attribute))))
                except OSError:  # no cpufreq, no such attribute, or root-only
                    continue

    def collect(self, out: Sample) -> None:
        add = out.add
        for family, labels, pf in self._files:
            khz = go_int(os.pread(pf.fd, SYSFS_READ_SIZE, 0).decode("ascii", "replace").strip())
            if khz is None:
                raise ValueError(f"{pf.path}: not an integer")
            add(family, labels, khz * 1000.0)
