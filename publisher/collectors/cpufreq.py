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
from functools import partial

from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, gauge, register
from shm_metrics.publisher.collectors.learned import LearnedGroup
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
        self._grouped: list | None = None  # the CPUs the group below was made for
        self._group: LearnedGroup | None = None

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
        cpus = self._cpus.current()
        if cpus is not self._grouped:  # (a new list only when the CPUs changed)
            self._grouped = cpus
            files = [pf for _, cpu in cpus for _, _, pf in cpu]
            # Every CPU's attributes in one C call, learned (collectors/learned.py); none while one fails,
            # so that each failure's errno (an offline CPU's EBUSY) decides.
            self._group = (LearnedGroup(files, partial(self._rows, cpus), learn_unreadable=False, decode=_khz_text)
                           if files else None)
        if self._group is not None:
            out.extend(self._group.rows())

    def _rows(self, cpus: list[tuple[str, list]], texts: list[str | None]) -> list[tuple]:
        rows = []
        at = iter(texts)
        for entry, files in cpus:
            texts_of_cpu = [next(at) for _ in files]
            for (family, labels, pf), text in zip(files, texts_of_cpu):
                if text is None:
                    try:
                        text = _khz_text(os.pread(pf.fd, SYSFS_READ_SIZE, 0))  # again, for its error
                    except OSError as exc:
                        # Offline: its cpufreq directory went away, or its policy is inactive (EBUSY) until
                        # the CPU comes back; either way no frequency now, and no failed sample.
                        if exc.errno == errno.EBUSY or self._cpus.gone(entry):
                            break
                        raise
                khz = go_int(text)
                if khz is None:
                    raise ValueError(f"{pf.path}: not an integer")
                rows.append((family, labels, khz * 1000.0))
        return rows


def _khz_text(raw: bytes) -> str:
    """One read of at most SYSFS_READ_SIZE bytes, blanks trimmed."""
    return raw[:SYSFS_READ_SIZE].decode("ascii", "replace").strip()
