"""/proc/uptime: the layout's ``uptime_seconds`` (node_exporter has no such family: boot_time is its way).

On the running kernel's /proc the file is not read: its first number is CLOCK_BOOTTIME (in this time
namespace) printed to the centisecond, which the clock gives without the kernel making a file (a read every
interval, issue 16).  Another ``--path.procfs`` root is read as a file.
"""

from __future__ import annotations

import time
from array import array
from typing import TYPE_CHECKING

from shm_metrics.publisher.collectors import CORE, Collector, Context, Sample, numbers, register

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

LIVE_PROCFS = "/proc"


def boottime_seconds() -> float:
    """CLOCK_BOOTTIME as /proc/uptime prints it: "%lu.%02lu" of seconds and centiseconds, then parsed."""
    ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return float(f"{ns // 1_000_000_000}.{ns % 1_000_000_000 // 10_000_000:02d}")


@register
class Uptime(Collector):
    name = "uptime"
    tier = CORE  # the layout's scalars and arrays: every interval

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._clock = ctx.procfs == LIVE_PROCFS and hasattr(time, "CLOCK_BOOTTIME")
        self._file = None if self._clock else self.open(f"{ctx.procfs}/uptime", whole=True)
        self._numbers = numbers.Numbers.of(self._file) if self._file and numbers.AVAILABLE else None
        self._shape: numbers.Shape | None = None  # of the file's latest read, for a compiled program
        self._now = array("d", [0.0])  # the clock's latest reading, for a compiled program's check

    def collect(self, out: Sample) -> None:
        if self._clock:
            self._now[0] = value = boottime_seconds()
        else:
            text, _, self._shape = numbers.read_text(self._file, self._numbers)
            value = float(text.split()[0])
        out.scalars["uptime_seconds"] = value

    def compile(self, built: Builder) -> bool:
        """The clock, or the file's first number (publisher/compiled.py)."""
        if self._clock:
            source = built.boottime(self._now)
        elif self._shape is not None and self._shape.count >= 1:
            source = built.file(self._numbers, self._shape)
        else:
            return False
        built.scalar("uptime_seconds", built.take(source, (0,), (1.0,))[0])
        return True
