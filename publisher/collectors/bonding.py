"""/sys/class/net/bonding_masters: node_exporter's ``bonding`` collector (configured and active slaves per bond).

Every sample reads the list of bonds, each bond's ``bonding/slaves`` and each
slave's ``bonding_slave/mii_status`` (under ``lower_<slave>``, or
``slave_<slave>`` on older kernels); the files stay open while the bond and
slave exist.  Without ``bonding_masters`` (no bonding driver) the collector
is unavailable, as there.
"""

from __future__ import annotations

import os

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register
from shm_metrics.publisher.collectors.sysfs_util import OpenFiles

SLAVES = gauge("node_bonding_slaves", "Number of configured slaves per bonding interface.", "master")
ACTIVE = gauge("node_bonding_active", "Number of active slaves per bonding interface.", "master")


@register
class Bonding(Collector):
    name = "bonding"
    reports = ("bonding",)
    families = (SLAVES, ACTIVE)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._root = os.path.join(ctx.sysfs, "class", "net")
        self._masters = self.open(os.path.join(self._root, "bonding_masters"))
        self._files = OpenFiles()

    def _mii_status(self, master: str, slave: str) -> str:
        try:
            return self._files.read(os.path.join(self._root, master, f"lower_{slave}", "bonding_slave", "mii_status"))
        except FileNotFoundError:
            return self._files.read(os.path.join(self._root, master, f"slave_{slave}", "bonding_slave", "mii_status"))

    def collect(self, out: Sample) -> None:
        counts = []
        try:
            for master in self._masters.read().split():
                slaves = self._files.read(os.path.join(self._root, master, "bonding", "slaves")).split()
                active = sum(1 for slave in slaves if self._mii_status(master, slave).strip() == "up")
                counts.append((master, len(slaves), active))
        finally:
            self._files.sweep()
        for master, configured, active in counts:
            out.add(SLAVES, (master,), configured)
            out.add(ACTIVE, (master,), active)

    def close(self) -> None:
        super().close()
        self._files.close()
