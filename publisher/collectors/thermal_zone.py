"""/sys/class/thermal: node_exporter's ``thermal_zone`` collector (zone temperatures, cooling devices' states).

The zones and cooling devices are found when the collector starts and
again every ``rescan_seconds``; their ``type`` is read then, and ``temp``, ``cur_state`` and ``max_state`` stay open
and are re-read every sample.  A host without thermal zones gives no series
and the collector still succeeds, as node_exporter's does.  A zone whose
temperature reads ENODATA (a sensor not ready) is skipped for that sample;
any other read error fails the sample (success 0), as there, unless the zone
went away (it is dropped).
"""

from __future__ import annotations

import errno
import os

from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, gauge, register
from shm_metrics.publisher.collectors.sysfs_util import SYSFS_READ_SIZE, go_int, sys_read

ZONE_TEMP = gauge("node_thermal_zone_temp", "Zone temperature in Celsius", "zone", "type")
COOLING_CUR_STATE = gauge("node_cooling_device_cur_state", "Current throttle state of the cooling device",
                          "name", "type")
COOLING_MAX_STATE = gauge("node_cooling_device_max_state", "Maximum throttle state of the cooling device",
                          "name", "type")


def read_int(pf: ProcFile) -> int:
    """One read of an integer attribute; ValueError when it is not one (fails the sample, as in Go)."""
    value = go_int(os.pread(pf.fd, SYSFS_READ_SIZE, 0).decode("ascii", "replace").strip())
    if value is None:
        raise ValueError(f"{pf.path}: not an integer")
    return value


@register
class ThermalZone(Collector):
    name = "thermal_zone"
    reports = ("thermal_zone",)
    families = (ZONE_TEMP, COOLING_CUR_STATE, COOLING_MAX_STATE)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        base = os.path.join(ctx.sysfs, "class", "thermal")
        self._zones = self.devices(base, self._zone, r"thermal_zone[0-9]+", missing_ok=True)
        self._cooling = self.devices(base, self._cooling_device, r"cooling_device[0-9]+", missing_ok=True)

    @staticmethod
    def _zone(entry: str, path: str, opener) -> tuple[tuple[str, str], ProcFile] | None:
        zone_type = sys_read(os.path.join(path, "type"))
        if zone_type is None:
            return None
        try:
            temp = opener(os.path.join(path, "temp"))
        except OSError:
            return None
        return (entry.removeprefix("thermal_zone"), zone_type), temp

    @staticmethod
    def _cooling_device(entry: str, path: str, opener) -> tuple[tuple[str, str], ProcFile, ProcFile] | None:
        device_type = sys_read(os.path.join(path, "type"))
        if device_type is None:
            return None
        try:
            cur, top = opener(os.path.join(path, "cur_state")), opener(os.path.join(path, "max_state"))
        except OSError:
            return None
        return (entry.removeprefix("cooling_device"), device_type), cur, top

    def collect(self, out: Sample) -> None:
        add = out.add
        for entry, (labels, temp) in self._zones.current():
            try:
                millidegrees = read_int(temp)
            except OSError as exc:
                if exc.errno == errno.ENODATA or self._zones.gone(entry):
                    continue
                raise
            add(ZONE_TEMP, labels, millidegrees / 1000.0)
        for _, rows in self._cooling.each(_cooling_rows):
            for row in rows:
                add(*row)


def _cooling_rows(device: tuple) -> tuple:
    labels, cur, top = device
    return (COOLING_CUR_STATE, labels, read_int(cur)), (COOLING_MAX_STATE, labels, read_int(top))

