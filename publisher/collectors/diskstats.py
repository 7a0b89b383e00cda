"""/proc/diskstats: node_exporter's ``diskstats`` collector, every field the kernel gives.

Sectors are 512 bytes and times milliseconds whatever the device (the
kernel's units), converted to bytes and seconds as node_exporter does; a
kernel with fewer fields (no discard or flush columns) has fewer families.
``node_disk_info`` carries udev's properties (``<udev data>/b<major>:<minor>``,
``--path.udev.data``), re-read every ``INFO_REFRESH_SECONDS``, and so do
node_disk_filesystem_info, node_disk_device_mapper_info and the ATA families
when udev has the properties.  Devices: the publisher's ``Filters`` (``--disk-exclude`` and
node_exporter's ``--collector.diskstats.device-include/-exclude``, mapped onto them).  Also
fills the layout's ``disks`` array and its byte totals.
"""

from __future__ import annotations

import time
from itertools import repeat
from operator import mul
from typing import TYPE_CHECKING

from shm_metrics.publisher.collectors import (
    CORE,
    Collector,
    Context,
    Sample,
    counter,
    gauge,
    numbers,
    read_once,
    register,
)

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

INFO_REFRESH_SECONDS = 60.0
_MS = 1 / 1000.0
_SECTOR = 512

INFO = gauge("node_disk_info", "Info of /sys/block/<block_device>.", "device", "major", "minor", "path", "wwn",
             "model", "serial", "revision")
# In /proc/diskstats order (after major, minor, name), with the factor node_exporter applies.
_FIELDS = (
    (counter("node_disk_reads_completed_total", "The total number of reads completed successfully.", "device"), 1),
    (counter("node_disk_reads_merged_total", "The total number of reads merged.", "device"), 1),
    (counter("node_disk_read_bytes_total", "The total number of bytes read successfully.", "device"), _SECTOR),
    (counter("node_disk_read_time_seconds_total", "The total number of seconds spent by all reads.", "device"), _MS),
    (counter("node_disk_writes_completed_total", "The total number of writes completed successfully.", "device"), 1),
    (counter("node_disk_writes_merged_total", "The number of writes merged.", "device"), 1),
    (counter("node_disk_written_bytes_total", "The total number of bytes written successfully.", "device"), _SECTOR),
    (counter("node_disk_write_time_seconds_total", "This is the total number of seconds spent by all writes.",
             "device"), _MS),
    (gauge("node_disk_io_now", "The number of I/Os currently in progress.", "device"), 1),
    (counter("node_disk_io_time_seconds_total", "Total seconds spent doing I/Os.", "device"), _MS),
    (counter("node_disk_io_time_weighted_seconds_total", "The weighted # of seconds spent doing I/Os.", "device"),
     _MS),
    (counter("node_disk_discards_completed_total", "The total number of discards completed successfully.",
             "device"), 1),
    (counter("node_disk_discards_merged_total", "The total number of discards merged.", "device"), 1),
    (counter("node_disk_discarded_sectors_total", "The total number of sectors discarded successfully.",
             "device"), 1),
    (counter("node_disk_discard_time_seconds_total", "This is the total number of seconds spent by all discards.",
             "device"), _MS),
    (counter("node_disk_flush_requests_total", "The total number of flush requests completed successfully",
             "device"), 1),
    (counter("node_disk_flush_requests_time_seconds_total",
             "This is the total number of seconds spent by all flush requests.", "device"), _MS),
)
_FAMILIES = tuple(family for family, _ in _FIELDS)
_FACTORS = tuple(factor for _, factor in _FIELDS)
_UDEV_PROPERTIES = ("ID_PATH", "ID_WWN", "ID_MODEL", "ID_SERIAL_SHORT", "ID_REVISION")
FILESYSTEM_INFO = gauge("node_disk_filesystem_info", "Info about disk filesystem.", "device", "type", "usage", "uuid",
                        "version")
_FILESYSTEM_PROPERTIES = ("ID_FS_TYPE", "ID_FS_USAGE", "ID_FS_UUID", "ID_FS_VERSION")
DEVICE_MAPPER_INFO = gauge("node_disk_device_mapper_info", "Info about disk device mapper.", "device", "name", "uuid",
                           "vg_name", "lv_name", "lv_layer")
_DEVICE_MAPPER_PROPERTIES = ("DM_NAME", "DM_UUID", "DM_VG_NAME", "DM_LV_NAME", "DM_LV_LAYER")
# Shown for an ATA disk (ID_ATA set) from the udev property of the same meaning, when it is a number.
_ATA = (
    (gauge("node_disk_ata_write_cache", "ATA disk has a write cache.", "device"), "ID_ATA_WRITE_CACHE"),
    (gauge("node_disk_ata_write_cache_enabled", "ATA disk has its write cache enabled.", "device"),
     "ID_ATA_WRITE_CACHE_ENABLED"),
    (gauge("node_disk_ata_rotation_rate_rpm", "ATA disk rotation rate in RPMs (0 for SSDs).", "device"),
     "ID_ATA_ROTATION_RATE_RPM"),
)


def _udev_series(device: str, major: str, minor: str, props: dict[str, str]) -> list[tuple]:
    """The udev-derived series of one disk: node_disk_info, and the others when udev has their properties."""
    rows = [(INFO, (device, major, minor, *(props.get(p, "") for p in _UDEV_PROPERTIES)), 1)]
    if props.get("ID_FS_TYPE"):
        rows.append((FILESYSTEM_INFO, (device, *(props.get(p, "") for p in _FILESYSTEM_PROPERTIES)), 1))
    if props.get("DM_NAME"):
        rows.append((DEVICE_MAPPER_INFO, (device, *(props.get(p, "") for p in _DEVICE_MAPPER_PROPERTIES)), 1))
    if props.get("ID_ATA"):
        for family, key in _ATA:
            try:
                rows.append((family, (device,), float(props[key])))
            except (KeyError, ValueError):  # not there, or not a number: node_exporter skips it too
                pass
    return rows


@register
class Diskstats(Collector):
    name = "disks"
    tier = CORE  # the layout's scalars and arrays: every interval
    reports = ("diskstats",)
    families = (INFO, *(fam for fam, _ in _FIELDS), FILESYSTEM_INFO, DEVICE_MAPPER_INFO, *(fam for fam, _ in _ATA))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/diskstats")
        self._info: dict[tuple[str, str, str], tuple[float, list[tuple]]] = {}
        self.udev_data = ctx.udev_data
        self._numbers = numbers.Numbers.of(self._file) if numbers.AVAILABLE else None
        # The fast path's program (collectors/numbers.py): the counters' values of every disk kept, then
        # the disks array's five per disk; with the disks' names and their info series, as the Python path
        # left them.
        self._program: tuple[numbers.Program, list[str], list[tuple]] | None = None
        self._program_made = 0.0  # monotonic time

    def _info_series(self, device: str, major: str, minor: str, now: float) -> list[tuple]:
        key = (device, major, minor)
        cached = self._info.get(key)
        if cached is None or now - cached[0] > INFO_REFRESH_SECONDS:
            cached = self._info[key] = (now, self._read_info(device, major, minor))
        return cached[1]

    def _read_info(self, device: str, major: str, minor: str) -> list[tuple]:
        """The disk's info series from its udev data (none there: the series without its properties)."""
        props = {}
        text = read_once(f"{self.udev_data}/b{major}:{minor}") or ""
        for line in text.splitlines():
            if line.startswith("E:"):
                k, sep, v = line[2:].partition("=")
                if sep:
                    props[k] = v
        return _udev_series(device, major, minor, props)

    def _renew(self, now: float) -> float | None:
        """At the compiled program's deadline: every kept disk's udev data read again.  The next deadline when
        it gives the series it gave (the program's bytes stand), else None: the program is dropped and the
        Python path publishes the new series (from what this read)."""
        unchanged = True
        for key, (_, series) in list(self._info.items()):
            fresh = self._read_info(*key)
            self._info[key] = (now, fresh)
            unchanged = unchanged and fresh == series
        if not unchanged:
            return None
        self._program_made = now
        return now + INFO_REFRESH_SECONDS

    def collect(self, out: Sample) -> None:
        rows = []
        excluded = self.ctx.filters.disk_excluded
        udev_series = []
        keys = []
        now = time.monotonic()
        series = out.series
        start = len(series)
        text, raw, shape = numbers.read_text(self._file, self._numbers)
        for line in text.splitlines():
            v = line.split()
            if len(v) < 14:
                continue
            device = v[2]
            if excluded(device):
                continue
            counts = list(map(int, v[3:3 + len(_FIELDS)]))
            rows.append({"device": device, "reads": counts[0], "writes": counts[4],
                         "read_bytes": counts[2] * _SECTOR, "written_bytes": counts[6] * _SECTOR,
                         "io_time_seconds": counts[9] * 0.001})
            keys.append((device, v[0], v[1]))
            info = self._info_series(device, v[0], v[1], now)
            series.append(info[0])
            udev_series += info[1:]
            # zip/map in C: this runs every interval, with cold caches (issue 16).
            series.extend(zip(_FAMILIES, repeat((device,)), map(mul, counts, _FACTORS)))
        series += udev_series
        if len(self._info) > len(keys):  # disks gone (loop devices, pods' volumes): forget their udev data
            self._info = {key: self._info[key] for key in keys if key in self._info}
        _put_disks(out, rows)
        if shape is not None:  # every time: the udev info rows it repeats may have been read again
            self._program = self._make_program(raw, shape, series[start:], rows)
            self._program_made = now

    def fast(self, out: Sample) -> bool:
        """The same values from the numbers alone, while /proc/diskstats keeps its disks (collectors/numbers.py)."""
        if self._program is None or time.monotonic() - self._program_made > INFO_REFRESH_SECONDS:
            return False  # the Python path reads the disks' udev data again, and makes a new program
        program, devices, constant = self._program
        values = program.values(self._numbers)
        if values is None:
            return False
        split = 8 * len(program.fixed)
        out.add_block(program.fixed, values[:split])
        out.series += constant
        fields = memoryview(values)[split:].cast("d").tolist()
        _put_disks(out, [{"device": device, "reads": int(fields[i]), "writes": int(fields[i + 1]),
                          "read_bytes": int(fields[i + 2]), "written_bytes": int(fields[i + 3]),
                          "io_time_seconds": fields[i + 4]} for i, device in zip(range(0, len(fields), 5), devices)])
        return True

    def compile(self, built: Builder) -> bool:
        """The fast path's values, the disks array and its totals, until the udev data is due again
        (publisher/compiled.py)."""
        if self._program is None:
            return False
        program, devices, _ = self._program
        regs = built.program(built.file(self._numbers, program.shape), program)
        n = len(program.fixed)
        built.series(program.fixed.families, program.fixed.labels, regs[:n])
        fields = regs[n:]
        width = len(_ARRAY_FIELDS)
        for i in range(len(devices)):
            for k, (_, _, key) in enumerate(_ARRAY_FIELDS):
                built.row("disks", i, key, fields[width * i + k])
        built.scalar("disk_read_bytes_total", built.total(fields[2::width]))
        built.scalar("disk_written_bytes_total", built.total(fields[3::width]))
        built.until(self._program_made + INFO_REFRESH_SECONDS, self._renew)
        return True

    def _make_program(self, raw: bytes, shape: numbers.Shape, series: list[tuple], rows: list[dict],
                      ) -> tuple[numbers.Program, list[str], list[tuple]] | None:
        """Where each counter and each array field of the disks kept are among the file's numbers; None when
        the Python path's values do not come out of them (the Python path then runs every sample)."""
        lines = {}
        for line in numbers.tokens(raw):
            if len(line) >= 14 and line[2][1] is None:
                lines.setdefault(line[2][0].decode("utf-8", "replace"), line)
        counted = [row for row in series if row[0] in _FACTOR_OF]
        constant = [row for row in series if row[0] not in _FACTOR_OF]
        positions, factors, expected = [], [], []
        try:
            for family, (device,), value in counted:
                field = _FIELD_INDEX[family]
                positions.append(lines[device][3 + field][1])
                factors.append(_FACTOR_OF[family])
                expected.append(value)
            for row in rows:
                line = lines[row["device"]]
                for field, factor, key in _ARRAY_FIELDS:
                    positions.append(line[3 + field][1])
                    factors.append(factor)
                    expected.append(row[key])
        except (KeyError, IndexError, TypeError):
            return None
        fixed = numbers.FixedSeries([row[0] for row in counted], [row[1] for row in counted])
        program = numbers.Program(shape, positions, factors, fixed)
        if None in positions or not program.gives(self._numbers.values, expected):
            return None
        return program, [row["device"] for row in rows], constant


def _put_disks(out: Sample, rows: list[dict]) -> None:
    out.disks = rows
    out.scalars["disk_read_bytes_total"] = sum(r["read_bytes"] for r in rows)
    out.scalars["disk_written_bytes_total"] = sum(r["written_bytes"] for r in rows)


_FIELD_INDEX = {family: i for i, family in enumerate(_FAMILIES)}
_FACTOR_OF = dict(_FIELDS)
# The disks array's fields: (index among a line's counters, factor, key of the array row).
_ARRAY_FIELDS = ((0, 1, "reads"), (4, 1, "writes"), (2, _SECTOR, "read_bytes"), (6, _SECTOR, "written_bytes"),
                 (9, 0.001, "io_time_seconds"))
