"""/sys/class/nvme: node_exporter's ``nvme`` collector (each controller's model, serial, firmware and state).

The controllers are found when the collector starts (and again every
``rescan_seconds``: hot-plugged ones) and their four attributes stay open:
every sample re-reads them (the state goes from ``live`` to ``resetting`` or
``dead``; a firmware update changes the revision).  Without the nvme class the collector is unavailable, as there.
"""

from __future__ import annotations

import os

from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, gauge, register
from shm_metrics.publisher.collectors.sysfs_util import SYSFS_READ_SIZE, go_text

INFO = gauge("node_nvme_info", "Non-numeric data from /sys/class/nvme/<device>, value is always 1.",
             "device", "firmware_revision", "model", "serial", "state")
_ATTRIBUTES = ("firmware_rev", "model", "serial", "state")


@register
class Nvme(Collector):
    name = "nvme"
    reports = ("nvme",)
    families = (INFO,)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        # No nvme class: unavailable, as there.
        self._devices = self.devices(os.path.join(ctx.sysfs, "class", "nvme"), self._device)

    @staticmethod
    def _device(entry: str, path: str, opener) -> list[ProcFile]:
        return [opener(os.path.join(path, a)) for a in _ATTRIBUTES]

    def collect(self, out: Sample) -> None:
        for device, values in self._devices.each(
                lambda files: [go_text(os.pread(pf.fd, SYSFS_READ_SIZE, 0)).strip() for pf in files]):
            out.add(INFO, (device, *values), 1)
