"""/proc/sys/fs/file-nr: node_exporter's ``filefd`` collector."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shm_metrics.publisher.collectors import CORE, Collector, Context, Sample, gauge, numbers, register

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

ALLOCATED = gauge("node_filefd_allocated", "File descriptor statistics: allocated.")
MAXIMUM = gauge("node_filefd_maximum", "File descriptor statistics: maximum.")


@register
class Filefd(Collector):
    name = "filefd"
    tier = CORE  # the layout's scalars and arrays: every interval
    reports = ("filefd",)
    families = (ALLOCATED, MAXIMUM)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/sys/fs/file-nr", whole=True)
        self._numbers = numbers.Numbers.of(self._file) if numbers.AVAILABLE else None
        self._shape: numbers.Shape | None = None  # of the latest read, for a compiled program

    def collect(self, out: Sample) -> None:
        text, _, self._shape = numbers.read_text(self._file, self._numbers)
        allocated, _, maximum = text.split()[:3]
        out.scalars.update(filefd_allocated=int(allocated), filefd_maximum=int(maximum))
        out.add(ALLOCATED, (), int(allocated))
        out.add(MAXIMUM, (), int(maximum))

    def compile(self, built: Builder) -> bool:
        """The first and third numbers (publisher/compiled.py)."""
        if self._shape is None or self._shape.count != 3:
            return False
        allocated, maximum = built.take(built.file(self._numbers, self._shape), (0, 2), (1.0, 1.0))
        built.scalar("filefd_allocated", allocated)
        built.series((ALLOCATED,), ((),), (allocated,))
        # The maximum is often LONG_MAX (systemd sets it), which the layout's u64 holds and a double does
        # not: its bytes stay as the Python path wrote them, while it stays.
        built.unchanged(maximum, self._numbers.values[2])
        return True
