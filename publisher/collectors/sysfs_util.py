"""Helpers the hardware collectors share: Go's number parsing and procfs's one-read sysfs attributes.

node_exporter's values come from Go's ``strconv``, which refuses what Python's
``float``/``int`` accept (surrounding blanks, ``_`` digit separators): a value
Go cannot parse is left out there, so it is here.  (Series order is the
exporter's business: it sorts each family's series by label values as the Go
client does.)
"""

from __future__ import annotations

import os

from shm_metrics.publisher.collectors import ProcFile

# Go's SysReadFile reads attributes with one read(2) of this many bytes.
SYSFS_READ_SIZE = 128


def go_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64), or None where Go returns an error."""
    if not text or text != text.strip() or "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def go_int(text: str) -> int | None:
    """strconv.ParseInt/ParseUint(text, 10, 64), or None where Go returns an error."""
    if not text or text != text.strip() or "_" in text:
        return None
    try:
        return int(text, 10)
    except ValueError:
        return None


def sys_read(path: str) -> str | None:
    """A sysfs attribute as procfs's util.SysReadFile gives it (one read, blanks trimmed), or None on error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, SYSFS_READ_SIZE).decode("utf-8", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


class OpenFiles:
    """Files opened on first use and kept open while they are still read (a set that changes rarely:
    bonds' slaves, power supplies' attributes); ``sweep`` closes the ones the last sample did not read."""

    def __init__(self) -> None:
        self._files: dict[str, ProcFile] = {}
        self._used: set[str] = set()

    def read(self, path: str) -> str:
        """The whole file (OSError when it cannot be opened or read)."""
        pf = self._files.get(path)
        if pf is None:
            pf = self._files[path] = ProcFile(path)
        self._used.add(path)
        try:
            return pf.read()
        except OSError:
            self._files.pop(path).close()
            raise

    def sweep(self) -> None:
        for path in [p for p in self._files if p not in self._used]:
            self._files.pop(path).close()
        self._used.clear()

    def close(self) -> None:
        for pf in self._files.values():
            pf.close()
        self._files.clear()
