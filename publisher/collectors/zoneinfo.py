"""/proc/zoneinfo: node_exporter's ``zoneinfo`` collector (off by default).

One series per node and zone for each field the zone's block has.  The
kernel prints a node's ``per-node stats`` inside the block of its first
zone, so those fields carry that zone's label, as in node_exporter.  The
``protection`` array gives one family per position; how many there are is
read from the file at start.
"""

from __future__ import annotations

import re

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, register
from shm_metrics.publisher.collectors.learned import LearnedFile

_LABELS = ("node", "zone")


def _gauge(name: str, help_: str) -> FamilyInfo:
    return gauge(f"node_zoneinfo_{name}", help_, *_LABELS)


def _counter(name: str, help_: str) -> FamilyInfo:
    return counter(f"node_zoneinfo_{name}", help_, *_LABELS)


# The zoneinfo keys node_exporter exports, and their families.
FIELDS: dict[str, FamilyInfo] = {
    "nr_free_pages": _gauge("nr_free_pages", "Total number of free pages in the zone"),
    "min": _gauge("min_pages", "Zone watermark pages_min"),
    "low": _gauge("low_pages", "Zone watermark pages_low"),
    "high": _gauge("high_pages", "Zone watermark pages_high"),
    "scanned": _gauge("scanned_pages", "Pages scanned since last reclaim"),
    "spanned": _gauge("spanned_pages", "Total pages spanned by the zone, including holes"),
    "present": _gauge("present_pages", "Physical pages existing within the zone"),
    "managed": _gauge("managed_pages", "Present pages managed by the buddy system"),
    "nr_active_anon": _gauge("nr_active_anon_pages", "Number of anonymous pages recently more used"),
    "nr_inactive_anon": _gauge("nr_inactive_anon_pages", "Number of anonymous pages recently less used"),
    "nr_isolated_anon": _gauge("nr_isolated_anon_pages", "Temporary isolated pages from anon lru"),
    "nr_anon_pages": _gauge("nr_anon_pages", "Number of anonymous pages currently used by the system"),
    "nr_anon_transparent_hugepages": _gauge("nr_anon_transparent_hugepages",
                                            "Number of anonymous transparent huge pages currently used by the system"),
    "nr_active_file": _gauge("nr_active_file_pages", "Number of active pages with file-backing"),
    "nr_inactive_file": _gauge("nr_inactive_file_pages", "Number of inactive pages with file-backing"),
    "nr_isolated_file": _gauge("nr_isolated_file_pages", "Temporary isolated pages from file lru"),
    "nr_file_pages": _gauge("nr_file_pages", "Number of file pages"),
    "nr_slab_reclaimable": _gauge("nr_slab_reclaimable_pages", "Number of reclaimable slab pages"),
    "nr_slab_unreclaimable": _gauge("nr_slab_unreclaimable_pages", "Number of unreclaimable slab pages"),
    "nr_mlock_stack": _gauge("nr_mlock_stack_pages", "mlock()ed pages found and moved off LRU"),
    "nr_kernel_stack": _gauge("nr_kernel_stacks", "Number of kernel stacks"),
    "nr_mapped": _gauge("nr_mapped_pages", "Number of mapped pages"),
    "nr_dirty": _gauge("nr_dirty_pages", "Number of dirty pages"),
    "nr_writeback": _gauge("nr_writeback_pages", "Number of writeback pages"),
    "nr_unevictable": _gauge("nr_unevictable_pages", "Number of unevictable pages"),
    "nr_shmem": _gauge("nr_shmem_pages", "Number of shmem pages (included tmpfs/GEM pages)"),
    "nr_dirtied": _counter("nr_dirtied_total", "Page dirtyings since bootup"),
    "nr_written": _counter("nr_written_total", "Page writings since bootup"),
    "numa_hit": _counter("numa_hit_total", "Allocated in intended node"),
    "numa_miss": _counter("numa_miss_total", "Allocated in non intended node"),
    "numa_foreign": _counter("numa_foreign_total", "Was intended here, hit elsewhere"),
    "numa_interleave": _counter("numa_interleave_total", "Interleaver preferred this zone"),
    "numa_local": _counter("numa_local_total", "Allocation from local node"),
    "numa_other": _counter("numa_other_total", "Allocation from other node"),
}

_NODE_ZONE = re.compile(r"(\d+), zone\s+(\w+)")


def _protection_family(index: int) -> FamilyInfo:
    return _gauge(f"protection_{index}", f"Protection array {index}. field")


def parse_go_int(text: str) -> int:
    """An integer as Go's ParseInt with base 0 reads it: 0x, 0o, 0b prefixes, and a leading 0 means octal."""
    sign, digits = (text[0], text[1:]) if text[:1] in ("+", "-") else ("", text)
    if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
        digits = "0o" + digits[1:]
    return int(sign + digits, 0)


def go_int(text: str) -> int:
    """parse_go_int, or 0 when the text is not a number (what procfs' value parser leaves then)."""
    try:
        return parse_go_int(text)
    except ValueError:
        return 0


def parse_zoneinfo(text: str) -> list[tuple[str, str, dict[str, int], list[int]]]:
    """(node, zone, field -> value, protection array) per block of the file."""
    zones = []
    for block in text.split("\nNode"):
        node = zone = ""
        values: dict[str, int] = {}
        protection: list[int] = []
        for line in block.split("\n"):
            match = _NODE_ZONE.search(line)
            if match:
                node, zone = match.groups()
                continue
            parts = line.split()
            if len(parts) < 2 or parts[0] == "per-node":
                continue
            key = parts[0]
            if key in FIELDS:
                values[key] = go_int(parts[1])
            elif key == "protection:":
                # "protection: (0, 2877, 7826, 7826, 7826)": kept only when every entry is a number
                inside = line.split(":")[1].replace("(", "", 1).replace(")", "", 1).strip()
                try:
                    protection = [int(v) for v in inside.split(", ")]
                except ValueError:
                    pass
        zones.append((node, zone, values, protection))
    return zones


@register
class Zoneinfo(Collector):
    name = "zoneinfo"
    reports = ("zoneinfo",)
    default_enabled = False
    families = tuple(FIELDS.values())
    described = (("node_zoneinfo_protection_<N>", "gauge", "node, zone",
                  "each position of a zone's protection array (as many as the kernel prints)"),)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/zoneinfo")
        longest = max((len(p) for *_, p in parse_zoneinfo(self._file.read_to_end())), default=0)
        self._protection = tuple(_protection_family(i) for i in range(longest))
        self.families = (*FIELDS.values(), *self._protection)
        self._learned = LearnedFile(self._file, self._rows)

    def _rows(self, text: str) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
        rows = []
        for node, zone, values, protection in parse_zoneinfo(text):
            labels = (node, zone)
            rows += [(FIELDS[key], labels, value) for key, value in values.items()]
            rows += [(family, labels, value) for family, value in zip(self._protection, protection)]
        return rows

    def collect(self, out: Sample) -> None:
        out.extend(self._learned.rows())
