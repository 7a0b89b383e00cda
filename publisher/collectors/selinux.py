"""node_exporter's ``selinux`` collector: only ``node_selinux_enabled`` 0 on hosts without SELinux.

With SELinux mounted it also has config/current mode families, which need
libselinux: left for the hardware/security issue (the collector then reports
only ``enabled``).
"""

from __future__ import annotations

import os

from shm_metrics.publisher.collectors import Collector, Sample, gauge, register

ENABLED = gauge("node_selinux_enabled", "SELinux is enabled, 1 is true, 0 is false")


@register
class Selinux(Collector):
    name = "selinux"
    reports = ("selinux",)
    families = (ENABLED,)
    refresh_seconds = 60.0

    def collect(self, out: Sample) -> None:
        out.add(ENABLED, (), 1 if os.path.isdir(f"{self.ctx.sysfs}/fs/selinux/booleans") else 0)
