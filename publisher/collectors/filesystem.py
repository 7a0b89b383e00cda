"""statfs of every mounted filesystem: node_exporter's ``filesystem`` collector.

The mount list comes from /proc/1/mountinfo (our own namespace's when pid
1's is not readable), re-parsed only when the kernel signals a mount or
unmount (POLLPRI), so ``readonly`` (the mount's ``ro`` option) is refreshed
exactly when it can change.  A mount whose statfs fails shows only
``node_filesystem_device_error 1``, as in node_exporter.  Also fills the
layout's ``filesystems`` array.
"""

from __future__ import annotations

import os
import re
import select
from array import array
from typing import TYPE_CHECKING

from shm_metrics.publisher.collectors import CORE, Collector, Context, ProcFile, Sample, gauge, numbers, register
from shm_metrics.publisher.filters import Filters

if TYPE_CHECKING:
    from shm_metrics.publisher.compiled import Builder

_LABELS = ("device", "fstype", "mountpoint")
SIZE = gauge("node_filesystem_size_bytes", "Filesystem size in bytes.", *_LABELS)
FREE = gauge("node_filesystem_free_bytes", "Filesystem free space in bytes.", *_LABELS)
AVAIL = gauge("node_filesystem_avail_bytes", "Filesystem space available to non-root users in bytes.", *_LABELS)
FILES = gauge("node_filesystem_files", "Filesystem total file nodes.", *_LABELS)
FILES_FREE = gauge("node_filesystem_files_free", "Filesystem total free file nodes.", *_LABELS)
READONLY = gauge("node_filesystem_readonly", "Filesystem read-only status.", *_LABELS)
DEVICE_ERROR = gauge("node_filesystem_device_error",
                     "Whether an error occurred while getting statistics for the given device.", *_LABELS)


@register
class Filesystem(Collector):
    name = "filesystems"
    tier = CORE  # the layout's scalars and arrays: every interval
    reports = ("filesystem",)
    families = (SIZE, FREE, AVAIL, FILES, FILES_FREE, READONLY, DEVICE_ERROR)

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._mounts = MountTable(ctx.procfs, ctx.filters)
        # Each mount's latest statvfs numbers (f_bsize, f_blocks, f_bfree, f_bavail, f_files, f_ffree; None
        # when it failed), for a compiled program: its check runs over what this read, so each mount keeps
        # one array, filled in place (a program holds it).
        self._statvfs: dict[str, array | None] = {}

    def collect(self, out: Sample) -> None:
        rows = []
        add = out.add
        mounts = self._mounts.current()
        kept = self._statvfs if numbers.AVAILABLE else None
        if kept is not None and len(kept) > len(mounts):
            kept.clear()  # mounts gone
        for mount in mounts:
            labels = mount["labels"]
            try:
                st = os.statvfs(mount["mountpoint"])
            except OSError:
                add(DEVICE_ERROR, labels, 1)
                if kept is not None:
                    kept[mount["mountpoint"]] = None
                continue
            if kept is not None:
                work = kept.get(mount["mountpoint"])
                if work is None:
                    work = kept[mount["mountpoint"]] = array("d", bytes(48))
                work[0], work[1], work[2], work[3], work[4], work[5] = (st.f_bsize, st.f_blocks, st.f_bfree,
                                                                        st.f_bavail, st.f_files, st.f_ffree)
            row = {"mountpoint": mount["mountpoint"], "device": mount["device"], "fstype": mount["fstype"],
                   "size_bytes": st.f_blocks * st.f_bsize, "free_bytes": st.f_bfree * st.f_bsize,
                   "avail_bytes": st.f_bavail * st.f_bsize}
            rows.append(row)
            add(DEVICE_ERROR, labels, 0)
            add(SIZE, labels, row["size_bytes"])
            add(FREE, labels, row["free_bytes"])
            add(AVAIL, labels, row["avail_bytes"])
            add(FILES, labels, st.f_files)
            add(FILES_FREE, labels, st.f_ffree)
            add(READONLY, labels, mount["ro"])
        out.filesystems = rows

    def compile(self, built: Builder) -> bool:
        """A statvfs per mount, while mountinfo signals no change (publisher/compiled.py); not while a
        mount's statvfs fails (its device error would have to come and go)."""
        mounts = self._mounts.last
        if mounts is None or any(self._statvfs.get(m["mountpoint"]) is None for m in mounts):
            return False
        built.poll(self._mounts.fd, self._mounts.forget)
        for i, mount in enumerate(mounts):
            source = built.statvfs(mount["mountpoint"], self._statvfs[mount["mountpoint"]])
            bsize, blocks, bfree, bavail, files, ffree = built.take(source, range(6), (1.0,) * 6)
            size, free, avail = (built.multiply(n, bsize) for n in (blocks, bfree, bavail))
            for field, reg in (("size_bytes", size), ("free_bytes", free), ("avail_bytes", avail)):
                built.row("filesystems", i, field, reg)
            built.series((SIZE, FREE, AVAIL, FILES, FILES_FREE), (mount["labels"],) * 5,
                         (size, free, avail, files, ffree))
        return True

    def close(self) -> None:
        self._mounts.close()


def _unescape_mount(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo.

    Only those octal escapes are decoded: the rest is already text (a codec
    round trip through latin-1 would mangle non-ASCII names such as "Müller").
    """
    if "\\" not in field_:
        return field_
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field_)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


class MountTable:
    """The filtered mount list, re-parsed only when the kernel says it changed.

    mountinfo signals POLLPRI/POLLERR on mount and unmount, so the publisher
    pays for parsing only then (node_exporter re-reads it on every scrape).
    """

    def __init__(self, procfs: str, filters: Filters):
        self.filters = filters
        path = f"{procfs}/1/mountinfo"
        try:
            self._file = ProcFile(path)
            self._file.read()
        except OSError:  # no access to pid 1: use our own namespace's view
            self._file = ProcFile(f"{procfs}/self/mountinfo")
        self._poll = select.poll()
        self._poll.register(self._file.fd, select.POLLPRI | select.POLLERR)
        self._mounts: list[dict] | None = None

    @property
    def fd(self) -> int:
        """mountinfo's descriptor: POLLPRI/POLLERR on it say the mounts changed."""
        return self._file.fd

    @property
    def last(self) -> list[dict] | None:
        """The mounts ``current`` gave last, without looking for a change."""
        return self._mounts

    def forget(self) -> None:
        """Parse again at the next ``current``: someone else consumed mountinfo's event (a compiled run)."""
        self._mounts = None

    def current(self) -> list[dict]:
        if self._mounts is None or self._poll.poll(0):
            self._mounts = self._parse(self._file.read())
        return self._mounts

    def _parse(self, text: str) -> list[dict]:
        seen = set()
        mounts = []
        for line in text.splitlines():
            left, sep, right = line.partition(" - ")
            if not sep:
                continue
            fields, rfields = left.split(), right.split()
            if len(fields) < 6 or len(rfields) < 2:
                continue
            mountpoint, device, fstype = _unescape_mount(fields[4]), _unescape_mount(rfields[1]), rfields[0]
            key = (mountpoint, device, fstype)
            if key in seen or self.filters.fs_excluded(mountpoint, fstype):
                continue
            seen.add(key)
            # /proc/mounts (node_exporter's source) shows "ro" when the mount or its superblock is read-only.
            options = fields[5].split(",") + (rfields[2].split(",") if len(rfields) > 2 else [])
            mounts.append({"mountpoint": mountpoint, "device": device, "fstype": fstype,
                           "labels": (device, fstype, mountpoint), "ro": 1 if "ro" in options else 0})
        return mounts

    def close(self) -> None:
        self._file.close()
