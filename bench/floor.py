"""The floor under a 1 Hz Python publisher: wake every second and read the files the every-interval
sample reads, without parsing or publishing anything (Q10's reference row).

What it reads each second: /proc/stat, meminfo, loadavg, net/dev, diskstats, sys/fs/file-nr and uptime,
through kept-open descriptors as the publisher does, and statvfs() of the mounts the publisher's default
filters keep (the mount list read once: the publisher re-reads it only when the kernel signals a change).
Its CPU is the kernel's cost of producing those values plus a Python process waking up: no publisher that
samples them every second in Python can cost less.
"""

from __future__ import annotations

import os
import select
import signal
import sys

from shm_metrics.publisher.filters import Filters

FILES = ("stat", "meminfo", "loadavg", "net/dev", "diskstats", "sys/fs/file-nr", "uptime")


def _mounts() -> list[str]:
    """The mount points the publisher's default filters keep (mountinfo: point is field 5, type after " - ")."""
    keep = Filters()
    with open("/proc/self/mountinfo") as f:
        rows = [(line.split()[4], line.split(" - ", 1)[1].split()[0]) for line in f if " - " in line]
    return [point for point, fstype in rows if not keep.fs_excluded(point, fstype)]


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    fds = [os.open(f"/proc/{name}", os.O_RDONLY | os.O_CLOEXEC) for name in FILES]
    mounts = _mounts()
    poller = select.poll()
    while True:
        poller.poll(1000)
        for fd in fds:
            os.pread(fd, 1 << 16, 0)
        for point in mounts:
            try:
                os.statvfs(point)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
