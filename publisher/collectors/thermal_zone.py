"""/sys/class/thermal: node_exporter's ``thermal_zone`` collector (zone temperatures, cooling devices' states).

The zones and cooling devices are found when the collector starts; their
``type`` is read then, and ``temp``, ``cur_state`` and ``max_state`` stay open
and are re-read every sample.  A host without thermal zones gives no series
and the collector still succeeds, as node_exporter's does.  A zone whose
temperature reads ENODATA (a sensor not ready) is skipped for that sample;
any other read error fails the sample (success 0), as there.
"""

from __future__ import annotations

import errno
import glob
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
        self._zones: list[tuple[tuple[str, str], ProcFile]] = []
        for path in sorted(glob.glob(os.path.join(glob.escape(base), "thermal_zone[0-9]*"))):
            zone_type = sys_read(os.path.join(path, "type"))
            if zone_type is None:
                continue
            try:
                temp = self.open(os.path.join(path, "temp"))
            except OSError:
                continue
            self._zones.append(((os.path.basename(path).removeprefix("thermal_zone"), zone_type), temp))
        self._cooling: list[tuple[tuple[str, str], ProcFile, ProcFile]] = []
        for path in sorted(glob.glob(os.path.join(glob.escape(base), "cooling_device[0-9]*"))):
            device_type = sys_read(os.path.join(path, "type"))
            if device_type is None:
                continue
            try:
                cur, top = self.open(os.path.join(path, "cur_state")), self.open(os.path.join(path, "max_state"))
            except OSError:
                continue
            self._cooling.append(((os.path.basename(path).removeprefix("cooling_device"), device_type), cur, top))

    def collect(self, out: Sample) -> None:
        add = out.add
        for labels, temp in self._zones:
            try:
                millidegrees = read_int(temp)
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    continue
                raise
            add(ZONE_TEMP, labels, millidegrees / 1000.0)
        for labels, cur, top in self._cooling:
            add(COOLING_CUR_STATE, labels, read_int(cur))
            add(COOLING_MAX_STATE, labels, read_int(top))
