"""/sys/fs/btrfs/<uuid>: node_exporter's ``btrfs`` collector, from sysfs.

Per filesystem: its label, the global reserve, per block group type (data,
metadata, system) the bytes reserved and, per RAID profile directory, the
bytes used and allocated and the allocation ratio the profile implies (raid5
and raid6 from the number of devices); per device its size (512-byte sectors).
A host without Btrfs has no filesystem directories: nothing is exported and
the collector succeeds, as node_exporter's does.

node_exporter also asks a mounted filesystem for its devices' error counters
through ioctls (``device_errors_total``, ``device_unused_bytes``, and a
``btrfs_dev_uuid`` label on ``device_size_bytes``); this collector reports the
sysfs view only (the families and labels node_exporter has when those ioctls
fail, as on its end-to-end fixture).
"""

from __future__ import annotations

import os
from functools import partial

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register
from shm_metrics.publisher.collectors._go_order import add_parts_in_go_order
from shm_metrics.publisher.collectors.sysfs_util import Root

SECTOR_BYTES = 512
BLOCK_GROUP_TYPES = ("data", "metadata", "system")

INFO = gauge("node_btrfs_info", "Filesystem information", "uuid", "label")
GLOBAL_RSV_SIZE = gauge("node_btrfs_global_rsv_size_bytes", "Size of global reserve.", "uuid")
RESERVED = gauge("node_btrfs_reserved_bytes", "Amount of space reserved for a data type", "uuid", "block_group_type")
USED = gauge("node_btrfs_used_bytes", "Amount of used space by a layout/data type", "uuid", "block_group_type",
             "mode")
SIZE = gauge("node_btrfs_size_bytes", "Amount of space allocated for a layout/data type", "uuid",
             "block_group_type", "mode")
ALLOCATION_RATIO = gauge("node_btrfs_allocation_ratio", "Data allocation ratio for a layout/data type", "uuid",
                         "block_group_type", "mode")
DEVICE_SIZE = gauge("node_btrfs_device_size_bytes", "Size of a device that is part of the filesystem.", "uuid",
                    "device")


def allocation_ratio(mode: str, devices: int) -> float:
    """Bytes of disk per byte of data for a RAID profile (what the profile's name implies)."""
    if mode in ("single", "raid0"):
        return 1.0
    if mode in ("dup", "raid1", "raid10"):
        return 2.0
    if mode == "raid5":
        return devices / (devices - 1) if devices != 1 else float("inf")
    if mode == "raid6":
        return devices / (devices - 2) if devices != 2 else float("inf")
    return 0.0


def _modes(group_path: str) -> list[str]:
    """The RAID profile directories of a block group type (none when it has no directory)."""
    try:
        return [e.name for e in os.scandir(group_path) if e.is_dir()]
    except FileNotFoundError:
        return []


def _paths(path: str, devices: tuple[str, ...], modes: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """The files a filesystem's series come from, in the order ``_filesystem_rows`` takes them."""
    out = [f"{path}/metadata_uuid", f"{path}/label", f"{path}/allocation/global_rsv_size"]
    for group, group_modes in zip(BLOCK_GROUP_TYPES, modes):
        out.append(f"{path}/allocation/{group}/bytes_reserved")
        for mode in group_modes:
            out += (f"{path}/allocation/{group}/{mode}/used_bytes", f"{path}/allocation/{group}/{mode}/total_bytes")
    out += (f"{path}/devices/{device}/size" for device in devices)
    return tuple(out)


def _filesystem_rows(path: str, devices: tuple[str, ...], modes: tuple[tuple[str, ...], ...],
                     texts: list[str | None]) -> list[tuple]:
    """A filesystem's series from its files' texts (None: absent or unreadable, as empty)."""
    at = iter(texts)

    def text() -> str:
        return (next(at) or "").strip()

    def number() -> int:
        try:
            return int(text())
        except ValueError:
            return 0  # absent or unreadable: zero, as procfs' btrfs reader

    uuid = text() or os.path.basename(path)
    rows = [(INFO, (uuid, text()), 1), (GLOBAL_RSV_SIZE, (uuid,), number())]
    for group, group_modes in zip(BLOCK_GROUP_TYPES, modes):
        rows.append((RESERVED, (uuid, group), number()))
        for mode in group_modes:
            labels = (uuid, group, mode)
            rows.append((USED, labels, number()))
            rows.append((SIZE, labels, number()))
            rows.append((ALLOCATION_RATIO, labels, allocation_ratio(mode, len(devices))))
    rows += [(DEVICE_SIZE, (uuid, device), SECTOR_BYTES * number()) for device in devices]
    return rows


@register
class Btrfs(Collector):
    name = "btrfs"
    reports = ("btrfs",)
    families = (INFO, GLOBAL_RSV_SIZE, RESERVED, USED, SIZE, ALLOCATION_RATIO, DEVICE_SIZE)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._root = Root(f"{ctx.sysfs}/fs/btrfs")
        os.listdir(ctx.sysfs)  # unavailable without sysfs; a host without Btrfs just has no filesystems
        self._files = self.learned_paths()

    def collect(self, out: Sample) -> None:
        parts = []
        try:
            for path in self._root.entries("*-*"):
                try:
                    devices = tuple(sorted(os.listdir(f"{path}/devices")))
                except FileNotFoundError:
                    if not os.path.lexists(path):
                        continue  # unmounted between the listing and the reads
                    raise
                modes = tuple(tuple(_modes(f"{path}/allocation/{group}")) for group in BLOCK_GROUP_TYPES)
                # Every file of the filesystem in one C call, learned (collectors/learned.py); the listings
                # decide which files.
                parts.append(self._files.group_rows(_paths(path, devices, modes),
                                                    partial(_filesystem_rows, path, devices, modes), absent=OSError))
        finally:
            self._files.sweep()
        add_parts_in_go_order(out, parts)

