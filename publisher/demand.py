"""The demand channel: readers ask the publisher for a sample (docs/LAYOUT.md, "Demand").

A Unix datagram socket at ``/dev/shm/<name>.want``, owned by the publisher.
Readers never get write access to the segment: they send one byte to the
socket (``L.DEMAND_FULL``: every collector, now; ``L.DEMAND_SCAN``: the
per-process scan for the next intervals).  Whoever may read the segment may
ask (the socket's mode is the segment's read bits as read-write), so any such
user may also send floods: the publisher reads the socket at most once between
two samples and takes at most one full sample per interval, whatever arrives.
A socket is the channel because nothing sent to it can hurt the receiver: a
shared file or semaphore others may write could also be truncated under the
publisher's mapping (SIGBUS).
"""

from __future__ import annotations

import logging
import os
import socket
import stat

from shm_metrics import shm_layout as L

log = logging.getLogger(__name__)

_MAX_DRAIN = 256  # datagrams read per wake: what a flood leaves beyond this waits in the kernel's buffer


class DemandChannel:
    """The publisher's end: bound, non-blocking, removed on close."""

    def __init__(self, name: str, mode: int):
        self.path = L.demand_path(name)
        self._sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._remove_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.path)  # fails (EADDRINUSE) if anything appeared under the name meanwhile
            os.chmod(self.path, (mode & 0o444) | (mode & 0o444) >> 1, follow_symlinks=False)
            st = os.stat(self.path, follow_symlinks=False)
        except BaseException:
            sock.close()
            raise
        self._sock, self._identity = sock, (st.st_dev, st.st_ino)

    def _remove_stale(self) -> None:
        """A socket of ours left by a publisher that died is removed; anything else is left alone (OSError)."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{self.path} exists and is not a socket of ours; left untouched")
        os.unlink(self.path)  # only the flock holder of the segment gets here: no live publisher uses it

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> set[bytes]:
        """The kinds of demand waiting (each datagram's first byte), reading at most _MAX_DRAIN of them."""
        kinds: set[bytes] = set()
        for _ in range(_MAX_DRAIN):
            try:
                data = self._sock.recv(16)
            except (BlockingIOError, InterruptedError):
                break
            if data:
                kinds.add(data[:1])
        return kinds

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            st = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._sock.close()
        self._sock = None


def open_channel(name: str, mode: int) -> DemandChannel | None:
    """The channel, or None (every sample then runs every collector, as without tiers) when it cannot be
    created: a foreign file under its name, a name too long for a socket address."""
    try:
        return DemandChannel(name, mode)
    except OSError as exc:
        log.warning("no demand channel at %s (%s): every sample runs every collector",
                    L.demand_path(name), exc.strerror or exc)
        return None
