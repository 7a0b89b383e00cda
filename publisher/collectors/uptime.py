"""/proc/uptime: the layout's ``uptime_seconds`` (node_exporter has no such family: boot_time is its way)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shm_metrics.publisher.collectors import CORE, Collector, Context, Sample, numbers, register

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder


@register
class Uptime(Collector):
    name = "uptime"
    tier = CORE  # the layout's scalars and arrays: every interval

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/uptime")
        self._numbers = numbers.Numbers(self._file.fd) if numbers.AVAILABLE else None
        self._shape: numbers.Shape | None = None  # of the latest read, for a compiled program

    def collect(self, out: Sample) -> None:
        text, _, self._shape = numbers.read_text(self._file, self._numbers)
        out.scalars["uptime_seconds"] = float(text.split()[0])

    def compile(self, built: Builder) -> bool:
        """The first number (publisher/compiled.py)."""
        if self._shape is None or self._shape.count < 1:
            return False
        built.scalar("uptime_seconds", built.take(built.file(self._numbers, self._shape), (0,), (1.0,))[0])
        return True
