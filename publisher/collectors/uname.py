"""uname(2): node_exporter's ``uname`` collector (the Node Exporter Full dashboard's template variables query it).

Refreshed every ``refresh_seconds``: it changes only with a host rename.
"""

from __future__ import annotations

import os

from shm_metrics.publisher.collectors import Collector, Sample, gauge, register

INFO = gauge("node_uname_info", "Labeled system information as provided by the uname system call.",
             "sysname", "release", "version", "machine", "nodename", "domainname")


@register
class Uname(Collector):
    name = "uname"
    reports = ("uname",)
    families = (INFO,)
    refresh_seconds = 60.0

    def collect(self, out: Sample) -> None:
        u = os.uname()
        try:
            with open(f"{self.ctx.procfs}/sys/kernel/domainname") as f:
                domain = f.read().strip()
        except OSError:
            domain = "(none)"
        out.add(INFO, (u.sysname, u.release, u.version, u.machine, u.nodename, domain), 1)
