"""node_exporter's ``time`` collector: the sample's wall clock, the time zone, and the clock sources.

``node_time_seconds`` is the time the sample was taken (node_exporter's is
the time of the scrape; the difference is the sample's age, at most one
interval).  Clock sources come from kept-open sysfs files.
"""

from __future__ import annotations

import glob
import time

from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, gauge, register

NOW = gauge("node_time_seconds", "System time in seconds since epoch (1970).")
ZONE = gauge("node_time_zone_offset_seconds", "System time zone offset in seconds.", "time_zone")
AVAILABLE = gauge("node_time_clocksource_available_info",
                  "Available clocksources read from '/sys/devices/system/clocksource'.", "device", "clocksource")
CURRENT = gauge("node_time_clocksource_current_info",
                "Current clocksource read from '/sys/devices/system/clocksource'.", "device", "clocksource")


@register
class Time(Collector):
    name = "time"
    reports = ("time",)
    families = (NOW, ZONE, AVAILABLE, CURRENT)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._sources: list[tuple[str, ProcFile, ProcFile]] = []
        paths = sorted(glob.glob(f"{ctx.sysfs}/devices/system/clocksource/clocksource[0-9]*"))
        for i, path in enumerate(paths):
            self._sources.append((str(i), self.open(f"{path}/available_clocksource", whole=True),
                                  self.open(f"{path}/current_clocksource", whole=True)))

    def collect(self, out: Sample) -> None:
        now = time.time()
        local = time.localtime(now)
        out.add(NOW, (), now)
        out.add(ZONE, (local.tm_zone,), local.tm_gmtoff)
        for device, available, current in self._sources:
            for source in available.read().split():
                out.add(AVAILABLE, (device, source), 1)
            out.add(CURRENT, (device, current.read().strip()), 1)
