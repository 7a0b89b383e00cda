"""/proc/slabinfo (version 2.1): node_exporter's ``slabinfo`` collector (off by default).

The file is readable by root only on most kernels: elsewhere the collector
is unavailable (left out at start, success 0).
"""

from __future__ import annotations

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register

ACTIVE = gauge("node_slabinfo_active_objects", "The number of objects that are currently active (i.e., in use).",
               "slab")
OBJECTS = gauge("node_slabinfo_objects",
                "The total number of allocated objects (i.e., objects that are both in use and not in use).", "slab")
OBJECT_SIZE = gauge("node_slabinfo_object_size_bytes", "The size of objects in this slab, in bytes.", "slab")
PER_SLAB = gauge("node_slabinfo_objects_per_slab", "The number of objects stored in each slab.", "slab")
PAGES = gauge("node_slabinfo_pages_per_slab", "The number of pages allocated for each slab.", "slab")
# Columns 1-5 of a slab line: active objects, objects, object size, objects per slab, pages per slab.
_COLUMNS = (ACTIVE, OBJECTS, OBJECT_SIZE, PER_SLAB, PAGES)
_FIELDS_PER_LINE = 16  # name, 5 numbers, ": tunables" and 3, ": slabdata" and 3


@register
class Slabinfo(Collector):
    name = "slabinfo"
    reports = ("slabinfo",)
    default_enabled = False
    families = _COLUMNS

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/slabinfo")
        self._file.read_to_end()  # EACCES for non-root on most kernels: unavailable, not failing every sample

    def collect(self, out: Sample) -> None:
        for line in self._file.read_to_end().splitlines():
            if "slabinfo -" in line or "# name" in line:
                continue
            parts = line.split()
            if len(parts) != _FIELDS_PER_LINE:
                raise ValueError(f"unable to parse slabinfo line {line!r}")
            labels = (parts[0],)
            for family, value in zip(_COLUMNS, parts[1:6]):
                out.add(family, labels, int(value))
