"""/proc/mdstat: node_exporter's ``mdadm`` collector (software RAID arrays: state, disks, blocks, sync progress).

The file stays open and is parsed every sample with procfs's rules: an array
line ``mdX : <state> <personality> <member>...`` followed by its status line
(size in blocks, ``[total/active]``, ``[UU_]``), an optional bitmap line and
an optional recovery/resync/check line (the blocks synced so far).  Without
/proc/mdstat (no md driver) the collector is unavailable, as there.
"""

from __future__ import annotations

import re

from shm_metrics.publisher.collectors import Collector, Context, Sample, gauge, register
from shm_metrics.publisher.collectors.learned import LearnedFile, filled

STATE = gauge("node_md_state", "Indicates the state of md-device.", "device", "state")
DISKS = gauge("node_md_disks", "Number of active/failed/spare disks of device.", "device", "state")
DISKS_REQUIRED = gauge("node_md_disks_required", "Total number of disks of device.", "device")
BLOCKS = gauge("node_md_blocks", "Total number of blocks on device.", "device")
BLOCKS_SYNCED = gauge("node_md_blocks_synced", "Number of blocks synced on device.", "device")

_STATUS = re.compile(r"(\d+) blocks .*\[(\d+)/(\d+)\] \[([U_]+)\]")
_SYNCED_BLOCKS = re.compile(r"\((\d+)/\d+\)")
# node_md_state's "state" label -> the activity mdstat shows.
_STATES = (("active", "active"), ("inactive", "inactive"), ("recovering", "recovering"), ("resync", "resyncing"),
           ("check", "checking"))


class MdArray:
    """One array as mdstat describes it."""

    __slots__ = ("name", "state", "active", "total", "failed", "spare", "blocks", "synced")

    def __init__(self, name: str, state: str, active: int, total: int, failed: int, spare: int, blocks: int,
                 synced: int):
        self.name, self.state, self.active, self.total = name, state, active, total
        self.failed, self.spare, self.blocks, self.synced = failed, spare, blocks, synced


def parse_mdstat(text: str) -> list[MdArray]:
    """The arrays of /proc/mdstat; ValueError on a line procfs would refuse."""
    lines = text.split("\n")
    arrays = []
    for i, line in enumerate(lines):
        if not line.strip() or line[0] == " " or line.startswith(("Personalities", "unused")):
            continue
        fields = line.split()
        if len(fields) < 3:
            raise ValueError(f"not enough fields in mdline: {line}")
        name, state = fields[0], fields[2]
        if len(lines) <= i + 3:
            raise ValueError(f"too few lines for md device {name}")
        status = lines[i + 1]
        status_fields = status.split()
        if not status_fields:
            raise ValueError(f"unexpected status line {status!r}")
        blocks = int(status_fields[0])
        if "raid0" in line or "linear" in line:
            active = total = line.count("[")  # no redundancy: every member is needed and active
        elif "inactive" in line:
            active = total = 0
        else:
            match = _STATUS.search(status)
            if match is None:
                raise ValueError(f"unexpected status line {status!r}")
            total, active = int(match.group(2)), int(match.group(3))
        sync_line = lines[i + 3] if "bitmap" in lines[i + 2] else lines[i + 2]
        synced = blocks
        activity = next((s for word, s in (("recovery", "recovering"), ("check", "checking"),
                                          ("resync", "resyncing")) if word in sync_line), None)
        if activity is not None:
            state = activity
            if "PENDING" in sync_line or "DELAYED" in sync_line:
                synced = 0
            else:
                match = _SYNCED_BLOCKS.search(sync_line)
                if match is None:
                    raise ValueError(f"unexpected recovery line {sync_line!r}")
                synced = int(match.group(1))
        arrays.append(MdArray(name, state, active, total, line.count("(F)"), line.count("(S)"), blocks, synced))
    return arrays


@register
class Mdadm(Collector):
    name = "mdadm"
    reports = ("mdadm",)
    families = (STATE, DISKS, DISKS_REQUIRED, BLOCKS, BLOCKS_SYNCED)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._file = self.open(f"{ctx.procfs}/mdstat")
        self._learned = LearnedFile(self._file, filled(self._fill))

    def collect(self, out: Sample) -> None:
        out.extend(self._learned.rows())

    def _fill(self, text: str, out: Sample) -> None:
        add = out.add
        for md in parse_mdstat(text):
            device = (md.name,)
            add(DISKS_REQUIRED, device, md.total)
            add(DISKS, (md.name, "active"), md.active)
            add(DISKS, (md.name, "failed"), md.failed)
            add(DISKS, (md.name, "spare"), md.spare)
            for label, activity in _STATES:
                add(STATE, (md.name, label), 1 if md.state == activity else 0)
            add(BLOCKS, device, md.blocks)
            add(BLOCKS_SYNCED, device, md.synced)
