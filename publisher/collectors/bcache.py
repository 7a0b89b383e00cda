"""/sys/fs/bcache/<uuid>: node_exporter's ``bcache`` collector.

Per cache set: btree and journal figures; per backing device (``bdev*``) its
dirty data, writeback controller state and lifetime hit/miss counters
(``stats_total``); per cache device (``cache*``) its errors and bytes written,
and with the ``bcache.priorityStats`` option (off by default, as the file is
expensive for the kernel to produce) the unused and metadata shares from
``priority_stats``.  bcache prints sizes as the kernel's bch_hprint does
(``20.4G``, ``427.5k``): they are turned back into numbers the way procfs'
parser does, including its reading of the fraction digits as 1/1024ths.  A
host without bcache has no cache sets: nothing is exported and the collector
succeeds, as node_exporter's does.
"""

from __future__ import annotations

import os
from functools import partial

from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, gauge, read_file, register
from shm_metrics.publisher.collectors._go_order import add_parts_in_go_order
from shm_metrics.publisher.collectors.sysfs_util import Root, entries

_MULTIPLIERS = {letter: float(1 << (10 * (i + 1))) for i, letter in enumerate("kMGTPEZY")}


def pseudo_float(text: str) -> float:
    """A bch_hprint mantissa: ``20.4`` is 20 + 4/10.24 (the kernel prints the remainder in 1/1024ths
    scaled by 10, so procfs divides the digits after the point by 10.24)."""
    whole, dot, fraction = text.partition(".")
    value = float(whole)
    if dot:
        value += float(fraction.split(".")[0]) / 10.24
    return value


def dehumanize(text: str) -> int:
    """A bch_hprint number (``1.1M``, ``512``) as an integer, truncated as a Go uint64 conversion."""
    if not text:
        raise ValueError("zero-length reply")
    if text[-1] > "9":
        return int(pseudo_float(text[:-1]) * _MULTIPLIERS.get(text[-1], 0.0))
    return int(float(text))


def dehumanize_signed(text: str) -> int:
    return -dehumanize(text[1:]) if text.startswith("-") else dehumanize(text)


def value_of_text(text: str | None) -> int:
    """A sysfs attribute's text as a number; 0 when the kernel has no such attribute (None: as procfs' parser)."""
    if text is None:
        return 0
    return dehumanize(text[:-1])  # without the newline


def writeback_rate_debug_text(text: str) -> dict[str, int]:
    """rate, target, proportional, integral and change of a backing device's writeback_rate_debug."""
    out = dict.fromkeys(("rate", "target", "proportional", "integral", "change"), 0)
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if not fields or key not in out:
            continue
        raw = fields[-1].removesuffix("/sec")
        out[key] = dehumanize_signed(raw) if key in ("proportional", "integral", "change") else dehumanize(raw)
    return out


def priority_stats_text(text: str) -> tuple[int, int]:
    """(unused percent, metadata percent) of a cache device's priority_stats."""
    unused = metadata = 0
    for line in text.splitlines():
        if line.startswith(("Unused:", "Metadata:")):
            value = int(line.split()[-1].removesuffix("%"))
            if line.startswith("Unused:"):
                unused = value
            else:
                metadata = value
    return unused, metadata


# Cache set: (family, file under the set's directory, scale)
_SET = (
    (gauge("node_bcache_average_key_size_sectors", "Average data per key in the btree (sectors).", "uuid"),
     "average_key_size", 1),
    (gauge("node_bcache_btree_cache_size_bytes", "Amount of memory currently used by the btree cache.", "uuid"),
     "btree_cache_size", 1),
    (gauge("node_bcache_cache_available_percent", "Percentage of cache device without dirty data, usable for "
           "writeback (may contain clean cached data).", "uuid"), "cache_available_percent", 1),
    (gauge("node_bcache_congested", "Congestion.", "uuid"), "congested", 1),
    (gauge("node_bcache_root_usage_percent", "Percentage of the root btree node in use (tree depth increases if "
           "too high).", "uuid"), "root_usage_percent", 1),
    (gauge("node_bcache_tree_depth", "Depth of the btree.", "uuid"), "tree_depth", 1),
    (gauge("node_bcache_active_journal_entries", "Number of journal entries that are newer than the index.",
           "uuid"), "internal/active_journal_entries", 1),
    (gauge("node_bcache_btree_nodes", "Total nodes in the btree.", "uuid"), "internal/btree_nodes", 1),
    # node_exporter scales the kernel's microseconds by 1e-9 (its bug, kept for equal values).
    (gauge("node_bcache_btree_read_average_duration_seconds", "Average btree read duration.", "uuid"),
     "internal/btree_read_average_duration_us", 1e-9),
    (counter("node_bcache_cache_read_races_total", "Counts instances where while data was being read from the "
             "cache, the bucket was reused and invalidated - i.e. where the pointer was stale after the read "
             "completed.", "uuid"), "internal/cache_read_races", 1),
)
DIRTY_DATA = gauge("node_bcache_dirty_data_bytes", "Amount of dirty data for this backing device in the cache.",
                   "uuid", "backing_device")
# Backing device: writeback_rate_debug field -> family
_WRITEBACK = (
    ("target", gauge("node_bcache_dirty_target_bytes",
                     "Current dirty data target threshold for this backing device in bytes.", "uuid",
                     "backing_device")),
    ("rate", gauge("node_bcache_writeback_rate", "Current writeback rate for this backing device in bytes.", "uuid",
                   "backing_device")),
    ("proportional", gauge("node_bcache_writeback_rate_proportional_term",
                           "Current result of proportional controller, part of writeback rate", "uuid",
                           "backing_device")),
    ("integral", gauge("node_bcache_writeback_rate_integral_term",
                       "Current result of integral controller, part of writeback rate", "uuid", "backing_device")),
    ("change", gauge("node_bcache_writeback_change", "Last writeback rate change step for this backing device.",
                     "uuid", "backing_device")),
)
# Backing device: stats_total file -> family
_TOTALS = (
    ("bypassed", counter("node_bcache_bypassed_bytes_total",
                         "Amount of IO (both reads and writes) that has bypassed the cache.", "uuid",
                         "backing_device")),
    ("cache_hits", counter("node_bcache_cache_hits_total", "Hits counted per individual IO as bcache sees them.",
                           "uuid", "backing_device")),
    ("cache_misses", counter("node_bcache_cache_misses_total",
                             "Misses counted per individual IO as bcache sees them.", "uuid", "backing_device")),
    ("cache_bypass_hits", counter("node_bcache_cache_bypass_hits_total", "Hits for IO intended to skip the cache.",
                                  "uuid", "backing_device")),
    ("cache_bypass_misses", counter("node_bcache_cache_bypass_misses_total",
                                    "Misses for IO intended to skip the cache.", "uuid", "backing_device")),
    ("cache_miss_collisions", counter("node_bcache_cache_miss_collisions_total", "Instances where data insertion "
                                      "from cache miss raced with write (data already present).", "uuid",
                                      "backing_device")),
    ("cache_readaheads", counter("node_bcache_cache_readaheads_total", "Count of times readahead occurred.", "uuid",
                                 "backing_device")),
)
# Cache device: file -> family
_CACHE = (
    ("io_errors", gauge("node_bcache_io_errors", "Number of errors that have occurred, decayed by "
                        "io_error_halflife.", "uuid", "cache_device")),
    ("metadata_written", counter("node_bcache_metadata_written_bytes_total", "Sum of all non data writes (btree "
                                 "writes and all other metadata).", "uuid", "cache_device")),
    ("written", counter("node_bcache_written_bytes_total", "Sum of all data that has been written to the cache.",
                        "uuid", "cache_device")),
)
PRIORITY_UNUSED = gauge("node_bcache_priority_stats_unused_percent",
                        "The percentage of the cache that doesn't contain any data.", "uuid", "cache_device")
PRIORITY_METADATA = gauge("node_bcache_priority_stats_metadata_percent", "Bcache's metadata overhead.", "uuid",
                          "cache_device")


_ALWAYS = (*(f for f, _, _ in _SET), DIRTY_DATA, *(f for _, f in _WRITEBACK), *(f for _, f in _TOTALS),
           *(f for _, f in _CACHE))


@register
class Bcache(Collector):
    name = "bcache"
    reports = ("bcache",)
    # Every family it can declare (the priority_stats ones only with bcache.priorityStats).
    families = (*_ALWAYS, PRIORITY_UNUSED, PRIORITY_METADATA)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._root = Root(f"{ctx.sysfs}/fs/bcache")
        os.listdir(ctx.sysfs)  # unavailable without sysfs; a host without bcache just has no cache sets
        self._priority = bool(ctx.option("bcache.priorityStats", False))
        self._files = self.learned_paths()
        self.families = (*_ALWAYS, *((PRIORITY_UNUSED, PRIORITY_METADATA) if self._priority else ()))

    def collect(self, out: Sample) -> None:
        parts = []
        try:
            for path in self._root.entries("*-*"):
                bdevs = tuple(entries(path, "bdev[0-9]*"))
                caches = tuple(entries(path, "cache[0-9]*"))
                # Every file of the set in one C call, learned (collectors/learned.py); the listings decide which.
                parts.append(self._files.group_rows(self._paths(path, bdevs, caches),
                                                    partial(self._set_rows, path, bdevs, caches)))
        finally:
            self._files.sweep()
        add_parts_in_go_order(out, parts)

    def _paths(self, path: str, bdevs: tuple[str, ...], caches: tuple[str, ...]) -> tuple[str, ...]:
        """The files of a cache set, in the order ``_set_rows`` takes them."""
        out = [f"{path}/{name}" for _, name, _ in _SET]
        for bdev in bdevs:
            out += (f"{bdev}/dirty_data", f"{bdev}/writeback_rate_debug")
            out += (f"{bdev}/stats_total/{name}" for name, _ in _TOTALS)
        for cache in caches:
            out += (f"{cache}/{name}" for name, _ in _CACHE)
            if self._priority:
                out.append(f"{cache}/priority_stats")
        return tuple(out)

    def _set_rows(self, path: str, bdevs: tuple[str, ...], caches: tuple[str, ...],
                  texts: list[str | None]) -> list[tuple]:
        """A cache set's series from its files' texts (None: no such attribute, or unreadable now)."""
        at = iter(texts)
        paths = iter(self._paths(path, bdevs, caches))

        def text() -> tuple[str, str | None]:
            """The next file and its text; one the group could not read is read again: absent is None, any
            other error fails the sample (as reading each file did)."""
            where, got = next(paths), next(at)
            if got is None:
                try:
                    got = read_file(where).decode("utf-8", "replace")
                except FileNotFoundError:
                    pass
            return where, got

        def value() -> int:
            return value_of_text(text()[1])

        def required() -> str:
            where, got = text()
            if got is None:
                raise OSError(f"failed to read: {where}")
            return got

        uuid = os.path.basename(path)
        rows = [(family, (uuid,), value() * scale if scale != 1 else value()) for family, _, scale in _SET]
        for bdev in bdevs:
            labels = (uuid, os.path.basename(bdev))
            rows.append((DIRTY_DATA, labels, value()))
            rates = writeback_rate_debug_text(required())
            rows += ((family, labels, rates[key]) for key, family in _WRITEBACK)
            rows += ((family, labels, value()) for _, family in _TOTALS)
        for cache in caches:
            labels = (uuid, os.path.basename(cache))
            rows += ((family, labels, value()) for _, family in _CACHE)
            if self._priority:
                unused, metadata = priority_stats_text(required())
                rows.append((PRIORITY_UNUSED, labels, unused))
                rows.append((PRIORITY_METADATA, labels, metadata))
        return rows

