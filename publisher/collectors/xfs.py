"""/sys/fs/xfs/<device>/stats/stats: node_exporter's ``xfs`` collector, per XFS filesystem.

Each line is a category and its counters (see https://xfs.org "Runtime
Stats"); node_exporter exports the extent allocation, allocation and block
map B-tree, block mapping, directory, inode cache, read/write and vnode
counters.  A category with an unexpected number of values makes the sample
fail, as procfs' parser does.  A host without XFS has no such files: nothing
is exported and the collector succeeds, as node_exporter's does.
"""

from __future__ import annotations

import os
from functools import partial

from shm_metrics.families import FamilyInfo
from shm_metrics.publisher.collectors import Collector, Context, Sample, counter, register
from shm_metrics.publisher.collectors._go_order import add_parts_in_go_order
from shm_metrics.publisher.collectors.sysfs_util import Root

# (category, index in its line, metric name without node_xfs_, HELP)
_COUNTERS = (
    ("extent_alloc", 0, "extent_allocation_extents_allocated_total", "Number of extents allocated for a filesystem."),
    ("extent_alloc", 1, "extent_allocation_blocks_allocated_total", "Number of blocks allocated for a filesystem."),
    ("extent_alloc", 2, "extent_allocation_extents_freed_total", "Number of extents freed for a filesystem."),
    ("extent_alloc", 3, "extent_allocation_blocks_freed_total", "Number of blocks freed for a filesystem."),
    ("abt", 0, "allocation_btree_lookups_total", "Number of allocation B-tree lookups for a filesystem."),
    ("abt", 1, "allocation_btree_compares_total", "Number of allocation B-tree compares for a filesystem."),
    ("abt", 2, "allocation_btree_records_inserted_total",
     "Number of allocation B-tree records inserted for a filesystem."),
    ("abt", 3, "allocation_btree_records_deleted_total",
     "Number of allocation B-tree records deleted for a filesystem."),
    ("blk_map", 0, "block_mapping_reads_total", "Number of block map for read operations for a filesystem."),
    ("blk_map", 1, "block_mapping_writes_total", "Number of block map for write operations for a filesystem."),
    ("blk_map", 2, "block_mapping_unmaps_total", "Number of block unmaps (deletes) for a filesystem."),
    ("blk_map", 3, "block_mapping_extent_list_insertions_total", "Number of extent list insertions for a filesystem."),
    ("blk_map", 4, "block_mapping_extent_list_deletions_total", "Number of extent list deletions for a filesystem."),
    ("blk_map", 5, "block_mapping_extent_list_lookups_total", "Number of extent list lookups for a filesystem."),
    ("blk_map", 6, "block_mapping_extent_list_compares_total", "Number of extent list compares for a filesystem."),
    ("bmbt", 0, "block_map_btree_lookups_total", "Number of block map B-tree lookups for a filesystem."),
    ("bmbt", 1, "block_map_btree_compares_total", "Number of block map B-tree compares for a filesystem."),
    ("bmbt", 2, "block_map_btree_records_inserted_total",
     "Number of block map B-tree records inserted for a filesystem."),
    ("bmbt", 3, "block_map_btree_records_deleted_total",
     "Number of block map B-tree records deleted for a filesystem."),
    ("dir", 0, "directory_operation_lookup_total",
     "Number of file name directory lookups which miss the operating systems directory name lookup cache."),
    ("dir", 1, "directory_operation_create_total",
     "Number of times a new directory entry was created for a filesystem."),
    ("dir", 2, "directory_operation_remove_total",
     "Number of times an existing directory entry was created for a filesystem."),
    ("dir", 3, "directory_operation_getdents_total",
     "Number of times the directory getdents operation was performed for a filesystem."),
    ("ig", 0, "inode_operation_attempts_total", "Number of times the OS looked for an XFS inode in the inode cache."),
    ("ig", 1, "inode_operation_found_total",
     "Number of times the OS looked for and found an XFS inode in the inode cache."),
    ("ig", 2, "inode_operation_recycled_total",
     "Number of times the OS found an XFS inode in the cache, but could not use it as it was being recycled."),
    ("ig", 3, "inode_operation_missed_total",
     "Number of times the OS looked for an XFS inode in the cache, but did not find it."),
    ("ig", 4, "inode_operation_duplicates_total",
     "Number of times the OS tried to add a missing XFS inode to the inode cache, but found it had already been "
     "added by another process."),
    ("ig", 5, "inode_operation_reclaims_total",
     "Number of times the OS reclaimed an XFS inode from the inode cache to free memory for another purpose."),
    ("ig", 6, "inode_operation_attribute_changes_total",
     "Number of times the OS explicitly changed the attributes of an XFS inode."),
    # The kernel writes "rw <write calls> <read calls>".
    ("rw", 1, "read_calls_total", "Number of read(2) system calls made to files in a filesystem."),
    ("rw", 0, "write_calls_total", "Number of write(2) system calls made to files in a filesystem."),
    ("vnodes", 0, "vnode_active_total", "Number of vnodes not on free lists for a filesystem."),
    ("vnodes", 1, "vnode_allocate_total", "Number of times vn_alloc called for a filesystem."),
    ("vnodes", 2, "vnode_get_total", "Number of times vn_get called for a filesystem."),
    ("vnodes", 3, "vnode_hold_total", "Number of times vn_hold called for a filesystem."),
    ("vnodes", 4, "vnode_release_total", "Number of times vn_rele called for a filesystem."),
    ("vnodes", 5, "vnode_reclaim_total", "Number of times vn_reclaim called for a filesystem."),
    ("vnodes", 6, "vnode_remove_total", "Number of times vn_remove called for a filesystem."),
)
FAMILIES = tuple(counter(f"node_xfs_{name}", help_, "device") for _, _, name, help_ in _COUNTERS)
# How many values each category the kernel writes must have (procfs' checks).
_LENGTHS = {"extent_alloc": (4,), "abt": (4,), "blk_map": (7,), "bmbt": (4,), "dir": (4,), "trans": (3,),
            "ig": (7,), "log": (5,), "push_ail": (10,), "xstrat": (2,), "rw": (2,), "attr": (4,), "icluster": (3,),
            "vnodes": (7, 8), "buf": (9,), "abtb2": (15,), "abtc2": (15,), "bmbt2": (15,), "ibt2": (15,),
            "qm": (8, 9), "debug": (1,), "xpc": (3,)}


def parse_stats(text: str) -> dict[str, list[int]]:
    """Category -> its counters; ValueError when a category has the wrong number of values."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        category, *fields = line.split()
        if not fields:
            continue
        values = [int(v) for v in fields]
        lengths = _LENGTHS.get(category)
        if lengths is not None and len(values) not in lengths:
            raise ValueError(f"incorrect number of values for XFS {category} stats: {len(values)}")
        out[category] = values
    return out


def _device_rows(device: str, text: str) -> list[tuple[FamilyInfo, tuple[str, ...], float]]:
    stats = parse_stats(text)
    rows = []
    for family, (category, index, _, _) in zip(FAMILIES, _COUNTERS):
        values = stats.get(category)
        rows.append((family, (device,), values[index] if values else 0))
    return rows


@register
class Xfs(Collector):
    name = "xfs"
    reports = ("xfs",)
    families = FAMILIES

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._root = Root(f"{ctx.sysfs}/fs/xfs")
        os.listdir(ctx.sysfs)  # unavailable without sysfs; a host without XFS just has no filesystems
        self._files = self.learned_paths()  # each filesystem's stats, kept open and learned (collectors/learned.py)

    def collect(self, out: Sample) -> None:
        parts = []
        try:
            # The module's own statistics are /sys/fs/xfs/stats/stats, no device's: procfs globs
            # */stats/stats, which that directory does not match (not looked up: a cold stat costs ~50 us).
            for directory in self._root.entries():
                path = f"{directory}/stats/stats"
                if directory.endswith("/stats") or not os.path.exists(path):
                    continue
                device = os.path.basename(directory)
                parts.append(self._files.rows(path, partial(_device_rows, device)))
        finally:
            self._files.sweep()
        add_parts_in_go_order(out, parts)

