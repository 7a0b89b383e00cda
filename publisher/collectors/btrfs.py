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

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, read_once, register
from shm_metrics.publisher.collectors._go_order import add_in_go_order
from shm_metrics.publisher.collectors.sysfs_util import entries

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


def _text(path: str) -> str:
    return (read_once(path) or "").strip()


def _number(path: str) -> int:
    try:
        return int(_text(path))
    except ValueError:
        return 0  # absent or unreadable: zero, as procfs' btrfs reader


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


@register
class Btrfs(Collector):
    name = "btrfs"
    reports = ("btrfs",)
    families = (INFO, GLOBAL_RSV_SIZE, RESERVED, USED, SIZE, ALLOCATION_RATIO, DEVICE_SIZE)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._root = f"{ctx.sysfs}/fs/btrfs"
        os.listdir(ctx.sysfs)  # unavailable without sysfs; a host without Btrfs just has no filesystems

    def collect(self, out: Sample) -> None:
        series = []
        for path in entries(self._root, "*-*"):
            try:
                devices = sorted(os.listdir(f"{path}/devices"))
            except FileNotFoundError:
                if not os.path.lexists(path):
                    continue  # unmounted between the listing and the reads
                raise
            uuid = _text(f"{path}/metadata_uuid") or os.path.basename(path)
            series.append((INFO, (uuid, _text(f"{path}/label")), 1))
            series.append((GLOBAL_RSV_SIZE, (uuid,), _number(f"{path}/allocation/global_rsv_size")))
            for group in BLOCK_GROUP_TYPES:
                group_path = f"{path}/allocation/{group}"
                series.append((RESERVED, (uuid, group), _number(f"{group_path}/bytes_reserved")))
                try:
                    modes = [e.name for e in os.scandir(group_path) if e.is_dir()]
                except FileNotFoundError:
                    modes = []
                for mode in modes:
                    labels = (uuid, group, mode)
                    series.append((USED, labels, _number(f"{group_path}/{mode}/used_bytes")))
                    series.append((SIZE, labels, _number(f"{group_path}/{mode}/total_bytes")))
                    series.append((ALLOCATION_RATIO, labels, allocation_ratio(mode, len(devices))))
            for device in devices:
                series.append((DEVICE_SIZE, (uuid, device), SECTOR_BYTES * _number(f"{path}/devices/{device}/size")))
        add_in_go_order(out, series)
