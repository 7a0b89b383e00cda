"""/sys/class/scsi_tape/st*/stats: node_exporter's ``tapestats`` collector (SCSI tape drives' I/O counters).

The drives (``st<N>``: the rewinding device of each drive, not its
``nst``/mode aliases) and their ``stats`` files are found when the collector
starts and again every ``rescan_seconds``; the files stay open and are re-read every sample.  A counter file the
kernel lacks counts 0, as there.  ``tapestats.ignored-devices`` (a regex,
default ``^$``) leaves drives out.  Without the scsi_tape class the collector
is unavailable, as there.
"""

from __future__ import annotations

import os
import re

from shm_metrics.publisher.collectors import Collector, Context, ProcFile, Sample, counter, gauge, register
from shm_metrics.publisher.collectors.sysfs_util import go_uint0

_DRIVE = re.compile(r"^st[0-9]+$")
# stats file -> (family, factor): nanoseconds are shown as seconds.
STATS = {
    "in_flight": (gauge("node_tape_io_now", "The number of I/Os currently outstanding to this device.", "device"), 1),
    "io_ns": (counter("node_tape_io_time_seconds_total", "The amount of time spent waiting for all I/O to complete "
                      "(including read and write). This includes tape movement commands such as seeking between "
                      "file or set marks and implicit tape movement such as when rewind on close tape devices are "
                      "used.", "device"), 1e-9),
    "other_cnt": (counter("node_tape_io_others_total", "The number of I/Os issued to the tape drive other than "
                          "read or write commands. The time taken to complete these commands uses the following "
                          "calculation io_time_seconds_total-read_time_seconds_total-write_time_seconds_total",
                          "device"), 1),
    "read_byte_cnt": (counter("node_tape_read_bytes_total", "The number of bytes read from the tape drive.",
                              "device"), 1),
    "read_cnt": (counter("node_tape_reads_completed_total", "The number of read requests issued to the tape drive.",
                         "device"), 1),
    "read_ns": (counter("node_tape_read_time_seconds_total",
                        "The amount of time spent waiting for read requests to complete.", "device"), 1e-9),
    "resid_cnt": (counter("node_tape_residual_total", "The number of times during a read or write we found the "
                          "residual amount to be non-zero. This should mean that a program is issuing a read larger "
                          "thean the block size on tape. For write not all data made it to tape.", "device"), 1),
    "write_byte_cnt": (counter("node_tape_written_bytes_total", "The number of bytes written to the tape drive.",
                               "device"), 1),
    "write_cnt": (counter("node_tape_writes_completed_total", "The number of write requests issued to the tape "
                          "drive.", "device"), 1),
    "write_ns": (counter("node_tape_write_time_seconds_total",
                         "The amount of time spent waiting for write requests to complete.", "device"), 1e-9),
}


@register
class Tapestats(Collector):
    name = "tapestats"
    reports = ("tapestats",)
    families = tuple(family for family, _ in STATS.values())

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._ignored = re.compile(str(ctx.option("tapestats.ignored-devices", "^$")))
        # No scsi_tape class: unavailable, as there.
        self._drives = self.devices(os.path.join(ctx.sysfs, "class", "scsi_tape"), self._drive, _DRIVE.pattern)

    def _drive(self, drive: str, path: str, opener) -> dict[str, ProcFile] | None:
        if self._ignored.search(drive):
            return None
        stats = os.path.join(path, "stats")
        return {name: opener(os.path.join(stats, name)) for name in sorted(os.listdir(stats)) if name in STATS}

    def collect(self, out: Sample) -> None:
        for drive, rows in self._drives.each(self._read):
            labels = (drive,)
            for family, value in rows:
                out.add(family, labels, value)

    @staticmethod
    def _read(files: dict[str, ProcFile]) -> list[tuple[object, float]]:
        rows = []
        for name, (family, factor) in STATS.items():
            pf = files.get(name)
            value = 0
            if pf is not None:
                text = pf.read().strip()
                value = go_uint0(text)
                if value is None:
                    raise ValueError(f"{pf.path}: not a count: {text!r}")
            rows.append((family, value * factor if factor != 1 else value))
        return rows
