"""/sys/devices/system/cpu/cpu*/cpufreq: node_exporter's ``cpufreq`` collector (current, min and max frequency).

Each CPU's frequency attributes are opened when the collector starts (and
when the CPUs are listed again, every ``rescan_seconds``: one brought online)
and re-read every sample (kHz in the files, Hz in the families).  An attribute
that does not exist or that this user may not read (``cpuinfo_cur_freq`` is
root-only) is left out, as there; a host without cpufreq gives no series
and the collector still succeeds, as node_exporter's does.
"""

from __future__ import annotations

import errno
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
        self._cpus = self.devices(os.path.join(ctx.sysfs, "devices", "system", "cpu"), self._cpu, r"cpu[0-9]+",
                                  missing_ok=True)

    @staticmethod
    def _cpu(entry: str, path: str, opener) -> list[tuple[object, tuple[str], ProcFile]] | None:
        labels = (entry.removeprefix("cpu"),)
        if not os.path.isdir(os.path.join(path, "cpufreq")):
            return None  # one stat, not a failed open per attribute: a VM's CPUs have none, at every rescan
        files = []
        for family, attribute in FREQUENCIES:
            try:
                files.append((family, labels, opener(os.path.join(path, "cpufreq", attribute))))
            except OSError:  # no cpufreq, no such attribute, or root-only
                continue
        return files or None  # none (an offline CPU has no cpufreq link): not a device yet, tried at each rescan

    def collect(self, out: Sample) -> None:
        add = out.add
        for entry, files in self._cpus.current():
            for family, labels, pf in files:
                try:
                    raw = os.pread(pf.fd, SYSFS_READ_SIZE, 0)
                except OSError as exc:
                    # Offline: its cpufreq directory went away, or its policy is inactive (EBUSY) until
                    # the CPU comes back; either way no frequency now, and no failed sample.
                    if exc.errno == errno.EBUSY or self._cpus.gone(entry):
                        break
                    raise
                khz = go_int(raw.decode("ascii", "replace").strip())
                if khz is None:
                    raise ValueError(f"{pf.path}: not an integer")
                add(family, labels, khz * 1000.0)
